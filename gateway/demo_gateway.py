"""The gateway part of ``govgate demo``: proposals over gRPC with mTLS, reviews, a halt, a rollback.

Everything is real and local: a CA and certificates in ``DATA/certs``, the
policy in ``DATA/policy.toml``, libvirt's test driver with a few sample
domains (``DATA/libvirt-node.xml``), the bundled risk model, the SQLite
ledger, and a gRPC server on a loopback port. A simulated decision engine
proposes a mix of actions on one stream. Two overseers, each with their own
certificate, approve one pending action and deny another. Then an overseer
halts production, resumes it, and rolls one executed action back.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from rich.console import Console
from rich.markup import escape

from adapters.libvirt import LibvirtAdapter, LibvirtConfig
from explain.batcher import MicroBatcher
from explain.registry import Registry
from explain.scorer import Scorer
from gateway._proto.govgate.v1 import (
    decision_pb2,
    decision_pb2_grpc,
    oversight_pb2,
    oversight_pb2_grpc,
    types_pb2,
)
from gateway.identity import init_certs
from gateway.pipeline import Gateway
from gateway.policy import Policy
from gateway.samples import NODE
from gateway.server import TlsFiles, start_server
from ledger import DataDir, LedgerConfig

__all__ = ["gateway_walk"]

IDENTITIES = ("engine-1", "alice", "bob")

POLICY = """# The demo's approval policy (docs/policy.md explains every setting).
version = 1

[defaults]
execute_below = 0.3
approve_below = 0.8
above = "deny"
approvals = 1
min_confidence = 0.5
approval_ttl = "1h"
fallback = "approval"
fallback_irreversible = "deny"

[[rules]]
name = "production deletes need two people"
match = { verbs = ["delete"], selector = "env=prod" }
approvals = 2

[[rules]]
name = "relaxed in development"
match = { selector = "env=dev" }
execute_below = 0.6
"""


# (verb, domain, parameters, engine confidence, justification)
SCRIPT: list[tuple[str, str, dict[str, str], float, str]] = [
    ("resize", "web-1", {"vcpus": "4"}, 0.93,
     "p95 CPU above 85% for 20 minutes; queue depth rising"),
    ("snapshot", "web-2", {"name": "pre-upgrade"}, 0.97, "nightly safety snapshot"),
    ("resize", "dev-1", {"memory_mib": "4096"}, 0.9, "test suite hits OOM"),
    ("resize", "api-1", {"memory_mib": "2048"}, 0.7,
     "memory utilisation under 20% for a week; reclaim idle capacity"),
    ("reboot", "api-1", {}, 0.55, "kernel update pending"),
    ("delete", "db-1", {}, 0.42, ""),
    ("suspend", "web-2", {}, 0.8, "pause batch worker during backup"),
    ("shutdown", "dev-1", {}, 0.9, "idle since Friday"),
    ("resize", "api-1", {"vcpus": "8"}, 0.6, "traffic forecast for the sale"),
    ("destroy", "web-2", {}, 0.6, "worker stuck in a retry loop"),
]  # fmt: skip

_STYLE = {
    "EXECUTED": "green", "PENDING_APPROVAL": "yellow", "DENIED": "red", "HALTED": "magenta",
    "DRY_RUN": "cyan", "FAILED": "red", "ROLLED_BACK": "blue", "EXPIRED": "red",
}  # fmt: skip


def _request(n: int, verb: str, resource: str, params: dict[str, str], confidence: float,
             why: str) -> decision_pb2.ProposeRequest:  # fmt: skip
    return decision_pb2.ProposeRequest(
        request_id=f"demo-{n}",
        action=types_pb2.Action(
            verb=verb, target=types_pb2.Target(runtime="libvirt", resource=resource),
            parameters=params, justification=why, confidence=confidence, engine="autoscaler",
        ),
    )  # fmt: skip


def _line(d: types_pb2.Decision, con: Console) -> None:
    state = types_pb2.DecisionState.Name(d.state)
    a = d.action
    risk = f"risk {d.risk:.3f}" if d.model_id else "no score"
    why = d.contributions[0].text if d.contributions else (d.reasons[-1] if d.reasons else "")
    need = f" ({d.approvals_required} approver(s))" if state == "PENDING_APPROVAL" else ""
    con.print(
        f"  {a.verb:<9} {a.target.resource:<6} [{_STYLE.get(state, 'white')}]{state:<16}"
        f"[/] {risk}{need}  [dim]{escape(why)}[/dim]",
        soft_wrap=True,
    )


def _prepare(data: Path) -> tuple[dict[str, tuple[bytes, bytes]], bytes, Path, Path]:
    certs_dir = data / "certs"
    if not (certs_dir / "ca.pem").exists():
        init_certs(certs_dir, IDENTITIES)
    read = {n: ((certs_dir / f"{n}.pem").read_bytes(), (certs_dir / f"{n}.key").read_bytes())
            for n in ("server", *IDENTITIES)}  # fmt: skip
    node = data / "libvirt-node.xml"
    node.write_text(NODE)  # a fresh set of domains for every run
    policy = data / "policy.toml"
    if not policy.exists():
        policy.write_text(POLICY)
    return read, (certs_dir / "ca.pem").read_bytes(), node, policy


async def gateway_walk(data: Path, con: Console) -> None:
    read, ca, node, policy_path = _prepare(data)
    d = DataDir(data)
    async with (
        d.open_ledger(LedgerConfig(checkpoint_interval=0.5)) as ledger,
        LibvirtAdapter(LibvirtConfig(uri=f"test://{node.resolve()}")) as lv,
        MicroBatcher(Scorer(Registry(data / "models").load())) as batcher,
    ):
        policy = Policy.load(policy_path)
        gw = Gateway(ledger, {"libvirt": lv}, batcher, policy)
        index = await gw.activate_policy(policy, actor="demo")
        con.print(f"  policy {policy.id[:16]} activated (ledger record {index})")
        tls = TlsFiles(data / "certs" / "ca.pem", data / "certs" / "server.pem",
                       data / "certs" / "server.key")  # fmt: skip
        server, port = await start_server(gw, tls)
        con.print(
            f"  gateway listening on 127.0.0.1:{port} (mTLS; identities from client "
            f"certificates in {data / 'certs'})"
        )

        def channel(who: str) -> grpc.aio.Channel:
            creds = grpc.ssl_channel_credentials(ca, read[who][1], read[who][0])
            return grpc.aio.secure_channel(f"localhost:{port}", creds)

        engine, alice, bob = (channel(n) for n in IDENTITIES)
        try:
            con.print("\n  [bold]The engine (spiffe://govgate.local/engine-1) proposes:[/bold]")
            stub = decision_pb2_grpc.DecisionServiceStub(engine)
            requests = [_request(n, *s) for n, s in enumerate(SCRIPT)]

            async def stream() -> object:
                for r in requests:
                    yield r

            decisions = []
            async for dec in stub.ProposeStream(stream()):
                decisions.append(dec)
                _line(dec, con)

            pending = [x for x in decisions if x.state == types_pb2.PENDING_APPROVAL]
            ov = {n: oversight_pb2_grpc.OversightServiceStub(c)
                  for n, c in (("engine-1", engine), ("alice", alice), ("bob", bob))}  # fmt: skip
            if pending:
                first = pending[0]
                con.print("\n  [bold]Overseers review what waits for them:[/bold]")
                try:
                    await ov["engine-1"].Approve(oversight_pb2.ReviewRequest(
                        decision_id=first.decision_id, reason="trust me",
                        request_digest=first.request_digest))  # fmt: skip
                except grpc.aio.AioRpcError as err:
                    con.print(f"  the engine tries to approve its own request: "
                              f"[red]{err.code().name}[/red] ({escape(err.details() or '')})",
                              soft_wrap=True)  # fmt: skip
                result = first
                for who in ("alice", "bob")[: max(first.approvals_required, 1)]:
                    result = await ov[who].Approve(oversight_pb2.ReviewRequest(
                        decision_id=first.decision_id, reason="checked the dashboards",
                        request_digest=first.request_digest))  # fmt: skip
                    con.print(f"  {who} approves {first.action.verb} "
                              f"{first.action.target.resource}")  # fmt: skip
                _line(result, con)
            if len(pending) > 1:
                second = pending[1]
                denied = await ov["bob"].Deny(oversight_pb2.ReviewRequest(
                    decision_id=second.decision_id, reason="not during the release freeze",
                    request_digest=second.request_digest))  # fmt: skip
                con.print(f"  bob denies {second.action.verb} {second.action.target.resource}: "
                          "not during the release freeze")  # fmt: skip
                _line(denied, con)

            con.print("\n  [bold]The stop switch:[/bold]")
            prod = types_pb2.Scope(selector="env=prod")
            await ov["alice"].Halt(oversight_pb2.HaltRequest(scope=prod, reason="incident drill"))
            con.print("  alice halts env=prod")
            halted = await stub.Propose(_request(100, "reboot", "api-1", {}, 0.9, "retry"))
            _line(halted, con)
            await ov["alice"].Resume(oversight_pb2.ResumeRequest(scope=prod, reason="drill over"))
            con.print("  alice resumes env=prod")

            executed = [x for x in decisions if x.state == types_pb2.EXECUTED
                        and x.action.verb == "resize"]  # fmt: skip
            if executed:
                con.print("\n  [bold]A rollback:[/bold]")
                undo = decision_pb2.RollbackRequest(
                    decision_id=executed[0].decision_id,
                    reason="latency got worse after the change",
                )
                rolled = await decision_pb2_grpc.DecisionServiceStub(alice).Rollback(undo)
                con.print(f"  alice rolls back {rolled.action.verb} "
                          f"{rolled.action.target.resource}")  # fmt: skip
                _line(rolled, con)
        finally:
            for ch in (engine, alice, bob):
                await ch.close()
            await server.stop(None)
