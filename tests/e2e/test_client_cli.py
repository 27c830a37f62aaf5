"""The gateway's client commands (``propose``, ``approvals``, ``halt``, ``resume``,
``decisions``) against a real mTLS gateway on loopback.

The gateway runs on the test's event loop; each command runs through the
console entry point (``gg``, in process) in a worker thread, because the
commands make blocking gRPC calls.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_harness import Govgate, Run

from adapters.libvirt import LibvirtAdapter, LibvirtConfig
from explain.batcher import MicroBatcher
from explain.registry import Registry
from explain.scorer import Scorer
from gateway._cli import lazy_module
from gateway.decision import Decision
from gateway.identity import init_certs
from gateway.pipeline import Gateway
from gateway.policy import Policy
from gateway.samples import NODE
from gateway.server import TlsFiles, start_server
from ledger import DataDir, LedgerConfig

DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "gateway" / "policies" / "default.toml"
APPROVE_ALL = b"version = 1\n[defaults]\nexecute_below = 0.0\napprove_below = 1.0\napprovals = 1\n"
RESIZE = ("propose", "resize", "libvirt/web-1", "--confidence", "0.95", "--engine", "autoscaler",
          "--justification", "p95 CPU above 85% for 20 minutes")  # fmt: skip


@dataclass
class Cli:
    """A running gateway and a way to call it with ``govgate`` as one of its identities."""

    gw: Gateway
    data: Path
    server: str
    gg: Govgate

    async def __call__(self, *args: str | Path, identity: str | None = "engine-1") -> Run:
        argv: list[str | Path] = [*args, "--data", self.data]
        if identity is not None:
            argv += ["--identity", identity]
        env: dict[str, str | None] = {"GOVGATE_SERVER": self.server, "GOVGATE_IDENTITY": None}
        return await asyncio.to_thread(self.gg, *argv, env=env)

    async def pending(self, *args: str) -> dict[str, Any]:
        """Propose under the approve-everything policy; the decision must wait."""
        await self.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
        r = await self(*RESIZE, "--param", "vcpus=3", *args)
        assert r.code == 0, r
        d: dict[str, Any] = r.json()
        assert d["state"] == "PENDING_APPROVAL", r
        return d


@pytest.fixture
def no_tls_keys_printed(tmp_path: Path, gg: Govgate) -> Iterator[None]:
    yield
    for key in tmp_path.rglob("*.key"):
        if key.parent.name != "certs":
            continue
        body = [line for line in key.read_text().splitlines() if "-----" not in line]
        for run in gg.runs:
            for text in (run.out, run.err):
                assert "PRIVATE KEY" not in text, run
                assert not any(line in text for line in body), run


@pytest.fixture
async def govgate(tmp_path: Path, gg: Govgate, no_tls_keys_printed: None) -> AsyncIterator[Cli]:
    data = tmp_path / "data"
    certs = init_certs(data / "certs", ["engine-1", "alice"])
    DataDir(data).generate_key("example.com/govgate")
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    async with (
        DataDir(data).open_ledger(LedgerConfig(checkpoint_every=0, checkpoint_interval=0)) as log,
        LibvirtAdapter(LibvirtConfig(uri=f"test://{node}")) as lv,
        MicroBatcher(Scorer(Registry(tmp_path / "models").load())) as batcher,
    ):
        gw = Gateway(log, {"libvirt": lv}, batcher, Policy.load(DEFAULT_POLICY))
        tls = TlsFiles(certs["ca"].cert, certs["server"].cert, certs["server"].key)
        server, port = await start_server(gw, tls)
        try:
            yield Cli(gw, data, f"localhost:{port}", gg)
        finally:
            await server.stop(None)


async def test_propose_executes_and_prints_the_decision(govgate: Cli):
    r = await govgate(*RESIZE, "--param", "vcpus=4", "--request-id", "r-1")
    assert r.code == 0, r
    d = r.json()
    assert d["state"] == "EXECUTED", r
    assert d["requester"] == "spiffe://govgate.local/engine-1"
    assert d["target"] == "libvirt/web-1"
    assert d["parameters"] == {"vcpus": "4"}
    assert d["ledger_index"] > 0
    assert len(bytes.fromhex(d["leaf_hash"])) == 32
    assert len(bytes.fromhex(d["request_digest"])) == 32
    assert len(d["model_id"]) == 64
    assert 0 <= d["risk"] < 0.3
    assert len(d["contributions"]) == 5
    assert "log-odds" in d["contributions"][0]
    assert d["outcome"]["status"] == "applied"
    assert (
        f"EXECUTED resize libvirt/web-1 (risk {d['risk']:.3f}, decision {d['decision_id']}" in r.msg
    )

    again = await govgate(*RESIZE, "--param", "vcpus=4", "--request-id", "r-1")
    assert again.json()["decision_id"] == d["decision_id"]  # idempotent

    got = await govgate("decisions", "get", d["decision_id"], identity="alice")
    assert got.code == 0, got
    assert got.json() == d


async def test_approve_after_listing_and_self_approval_refused(govgate: Cli):
    d = await govgate.pending()
    listed = await govgate("approvals", "list", identity="alice")
    assert listed.code == 0, listed
    assert [p["decision_id"] for p in listed.json_lines()] == [d["decision_id"]]
    table = await govgate("approvals", "list", "--table", identity="alice")
    assert d["decision_id"] in table.out
    assert "resize libvirt/web-1 vcpus=3" in table.out
    assert "0/1" in table.out

    mine = await govgate("approvals", "approve", d["decision_id"], "--reason", "mine")
    assert mine.code == 1, mine
    assert "PERMISSION_DENIED" in mine.msg
    assert "reason SELF_APPROVAL" in mine.msg
    assert "Traceback" not in mine.err

    ok = await govgate("approvals", "approve", d["decision_id"], "--reason", "fine",
                       identity="alice")  # fmt: skip
    assert ok.code == 0, ok
    assert f"approving {d['decision_id']}: resize libvirt/web-1 vcpus=3" in ok.msg
    assert f"request digest {d['request_digest']}" in ok.msg
    done = ok.json()
    assert done["state"] == "EXECUTED"
    assert done["reviews"][0]["reviewer"] == "spiffe://govgate.local/alice"
    assert (await govgate("approvals", "list", identity="alice")).out == ""


async def test_propose_wait_follows_the_decision_to_its_end(
    govgate: Cli, monkeypatch: pytest.MonkeyPatch
):
    await govgate.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    watching = asyncio.Event()  # WatchDecision looks the decision up: the command has it
    get = govgate.gw.get

    def spy(decision_id: str) -> Decision:
        watching.set()
        return get(decision_id)

    monkeypatch.setattr(govgate.gw, "get", spy)
    waiting = asyncio.create_task(govgate(*RESIZE, "--param", "vcpus=5", "--wait"))
    await asyncio.wait_for(watching.wait(), 30)
    [d] = govgate.gw.pending()
    await govgate.gw.review(d.decision_id, "spiffe://govgate.local/alice", True, "ok", d.digest)
    r = await asyncio.wait_for(waiting, 30)
    assert r.code == 0, r
    states = [line["state"] for line in r.json_lines()]
    assert states[0] == "PENDING_APPROVAL"
    assert states[-1] == "EXECUTED"
    assert f"waiting for decision {d.decision_id}" in r.msg


async def test_deny_needs_a_reason(govgate: Cli):
    d = await govgate.pending()
    no_reason = await govgate("approvals", "deny", d["decision_id"], identity="alice")
    assert no_reason.code == 2
    assert "--reason" in no_reason.msg
    blank = await govgate("approvals", "deny", d["decision_id"], "--reason", " ",
                          identity="alice")  # fmt: skip
    assert blank.code == 2
    assert "a denial needs a reason" in blank.msg

    other = "ab" * 32  # a digest for some other request
    pinned = await govgate("approvals", "deny", d["decision_id"], "--reason", "no",
                           "--digest", other, identity="alice")  # fmt: skip
    assert pinned.code == 1
    assert "PERMISSION_DENIED" in pinned.msg
    assert "reason DIGEST_MISMATCH" in pinned.msg
    bad_hex = await govgate("approvals", "deny", d["decision_id"], "--reason", "no",
                            "--digest", "xyz", identity="alice")  # fmt: skip
    assert bad_hex.code == 2

    denied = await govgate("approvals", "deny", d["decision_id"], "--reason", "not now",
                           "--digest", d["request_digest"], identity="alice")  # fmt: skip
    assert denied.code == 0, denied
    assert denied.json()["state"] == "DENIED"
    assert "denied by spiffe://govgate.local/alice: not now" in denied.json()["reasons"]
    late = await govgate("approvals", "approve", d["decision_id"], "--reason", "x",
                         identity="alice")  # fmt: skip
    assert late.code == 1
    assert "FAILED_PRECONDITION" in late.msg
    assert "reason NOT_PENDING" in late.msg


async def test_halt_by_selector_then_resume(govgate: Cli):
    h = await govgate("halt", "--selector", "env=staging", "--reason", "drill", identity="alice")
    assert h.code == 0, h
    assert h.json()["scope"] == {"selector": "env=staging"}
    assert h.json()["ledger_index"] > 0
    prefix, version = h.json()["halt_id"].split(":")
    assert prefix == "halt", h
    assert int(version) >= 1, h
    halted = await govgate(*RESIZE, "--param", "vcpus=3")
    assert halted.json()["state"] == "HALTED", halted
    assert halted.json()["risk"] is None  # never scored
    assert "stop switch for env=staging" in halted.msg

    r = await govgate("resume", "--selector", "env=staging", "--reason", "over", identity="alice")
    assert r.code == 0, r
    assert r.json()["ledger_index"] > h.json()["ledger_index"]
    assert (await govgate(*RESIZE, "--param", "vcpus=3")).json()["state"] == "EXECUTED"

    again = await govgate("resume", "--all", "--reason", "nothing to resume", identity="alice")
    assert again.code == 1
    assert "FAILED_PRECONDITION" in again.msg
    assert "no halt for everything is in force" in again.msg
    two = await govgate("halt", "--all", "--runtime", "libvirt", "--reason", "x", identity="alice")
    assert two.code == 2
    assert "choose one of --all" in two.msg


async def test_invalid_input_names_the_field(govgate: Cli):
    r = await govgate(*RESIZE, "--param", "vcpus=lots")
    assert r.code == 1
    assert r.out == ""
    assert "INVALID_ARGUMENT" in r.msg
    assert "error: INVALID_ARGUMENT: action.parameters.vcpus: 'lots' is not an integer" in r.msg
    assert "Traceback" not in r.err
    no_runtime = await govgate("propose", "resize", "web-1", "--param", "vcpus=2")
    assert no_runtime.code == 2
    assert "RUNTIME/RESOURCE" in no_runtime.msg
    missing = await govgate("decisions", "get", "d-nope", identity="alice")
    assert missing.code == 1
    assert "NOT_FOUND" in missing.msg
    for forever in ("inf", "1e10", "nan"):  # a deadline gRPC cannot keep: a usage error
        r = await govgate("approvals", "list", "--timeout", forever, identity="alice")
        assert r.code == 2, (forever, r)


async def test_watch_once_shows_the_pending_decision(govgate: Cli):
    d = await govgate.pending()
    r = await govgate("decisions", "watch", "--once", identity="alice")
    assert r.code == 0, r
    assert f"pending at {govgate.server}" in r.out
    assert d["decision_id"] in r.out
    assert "resize libvirt/web-1 vcpus=3" in r.out
    assert "spiffe" not in r.out  # identities shown short: govgate.local/engine-1
    assert "govgate.local/engine-1" in r.out


async def test_roles_refusal_is_one_line(govgate: Cli):
    from gateway.roles import Roles

    govgate.gw.roles = Roles.parse(
        b'version = 1\n[identities."spiffe://govgate.local/engine-1"]\nroles = ["engine"]\n'
    )
    r = await govgate("approvals", "list")
    assert r.code == 1
    assert "PERMISSION_DENIED" in r.msg
    assert "reason ACCESS_DENIED" in r.msg


def test_missing_certificates_say_how_to_make_them(
    tmp_path: Path, gg: Govgate, no_tls_keys_printed: None
):
    empty = tmp_path / "empty"
    r = gg(*RESIZE[:3], "--data", empty, "--identity", "engine-1")
    assert r.code == 1
    assert f"govgate certs init --data {empty} --identity engine-1" in r.msg
    assert "Traceback" not in r.err

    init_certs(tmp_path / "data" / "certs", ["engine-1", "alice"])
    bob = gg("approvals", "list", "--data", tmp_path / "data", "--identity", "bob")
    assert bob.code == 1
    assert "no certificate for identity 'bob'" in bob.msg
    assert "alice, engine-1" in bob.msg
    ca = gg("approvals", "list", "--data", tmp_path / "data", "--identity", "alice",
            "--ca", tmp_path / "other-ca.pem")  # fmt: skip
    assert ca.code == 1
    assert f"{tmp_path / 'other-ca.pem'} (--ca) does not exist" in ca.msg
    certs = tmp_path / "data" / "certs"
    swapped = gg("approvals", "list", "--data", tmp_path / "data", "--identity", "alice",
                 "--key", certs / "alice.pem")  # fmt: skip
    assert swapped.code == 1
    assert f"{certs / 'alice.pem'} is not an unencrypted PEM private key" in swapped.msg
    nobody = gg("approvals", "list", "--data", tmp_path / "data", env={"GOVGATE_IDENTITY": None})
    assert nobody.code == 2
    assert "--identity NAME" in nobody.msg


def test_unreachable_server_is_named(tmp_path: Path, gg: Govgate, no_tls_keys_printed: None):
    init_certs(tmp_path / "data" / "certs", ["engine-1"])
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = gg(*RESIZE, "--data", tmp_path / "data", "--identity", "engine-1",
           "--server", f"localhost:{port}", "--timeout", "5")  # fmt: skip
    assert r.code == 1, r
    assert f"cannot reach the gateway at localhost:{port}" in r.msg
    assert "Traceback" not in r.err


def test_commands_that_do_not_call_a_gateway_do_not_load_grpc(tmp_path: Path) -> None:
    """The client commands load gRPC and protobuf when they first use them; keys, ledger
    and report commands start without (about 65 ms of imports)."""
    code = (
        "import sys\n"
        "from gateway.cli import main\n"
        "data = ['--data', sys.argv[1]]\n"
        "for argv in (['keys', 'generate', *data], ['ledger', 'append', '--kind', 'note',\n"
        "             '--body', '{}', *data], ['ledger', 'checkpoint', *data],\n"
        "             ['approvals', 'list', '--help']):\n"
        "    sys.argv = ['govgate', *argv]\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, (argv, e.code)\n"
        "loaded = [m for m in ('grpc', 'grpc._cython.cygrpc', 'google.protobuf.descriptor_pool',\n"
        "          'gateway._proto.govgate.v1.decision_pb2') if m in sys.modules]\n"
        "print('LOADED', loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "data")],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert "LOADED []" in out, out


def test_a_lazy_module_is_imported_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "lazypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    ran = tmp_path / "ran"
    (pkg / "sub.py").write_text(f"open({str(ran)!r}, 'w').close()\nVALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("lazypkg", "lazypkg.sub"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    sub = lazy_module("lazypkg.sub")
    assert not ran.exists()
    assert "lazypkg.sub" not in sys.modules  # nothing stands in for it there
    assert sub.VALUE == 7
    assert ran.exists()
    import lazypkg.sub

    assert lazypkg.sub is sys.modules["lazypkg.sub"]  # an ordinary import, done once
    assert lazypkg.sub.VALUE == 7
