"""The gateway part of ``govgate demo``: ``govgate serve`` on embedded defaults, driven live.

Everything is real and local, and the same code path as ``govgate serve``
(:func:`gateway.serve.serve`): a CA and certificates in ``DATA/certs``, the
policy in ``DATA/policy.toml`` (the default policy), who may do what in
``DATA/roles.toml``, libvirt's test driver with the sample domains
(``DATA/libvirt-node.xml``), the bundled risk model, the SQLite ledger and a
gRPC server with mTLS on a loopback port. A simulated decision engine proposes
a mix of actions on one stream, and each decision appears as it is made. The
engine's attempt to approve its own request is refused by its role. Alice
approves a pending action and Bob denies another, each with their own
certificate. Alice halts production, resumes it, and rolls one executed
action back.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table

from gateway._proto.govgate.v1 import (
    decision_pb2,
    decision_pb2_grpc,
    oversight_pb2,
    oversight_pb2_grpc,
    types_pb2,
)
from gateway.config import ServeConfig
from gateway.identity import init_certs
from gateway.serve import EXAMPLE_POLICY, serve
from ledger import LedgerConfig

__all__ = ["gateway_walk"]

IDENTITIES = ("engine-1", "alice", "bob")
_RUN = uuid.uuid4().hex[:8]

ROLES = """# Who may do what in the demo (docs/api.md, "Roles").
version = 1

[identities."spiffe://govgate.local/engine-1"]
roles = ["engine"]
runtimes = ["libvirt"]

[identities."spiffe://govgate.local/alice"]
roles = ["approver", "auditor"]

[identities."spiffe://govgate.local/bob"]
roles = ["approver"]
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
        request_id=f"demo-{_RUN}-{n}",  # a fresh id per run: a rerun proposes anew
        action=types_pb2.Action(
            verb=verb, target=types_pb2.Target(runtime="libvirt", resource=resource),
            parameters=params, justification=why, confidence=confidence, engine="autoscaler",
        ),
    )  # fmt: skip


def _cells(d: types_pb2.Decision) -> tuple[str, ...]:
    state = types_pb2.DecisionState.Name(d.state)
    risk = f"{d.risk:.3f}" if d.model_id else "-"
    why = d.contributions[0].text if d.contributions else (d.reasons[-1] if d.reasons else "")
    if state == "PENDING_APPROVAL":
        why = f"needs {d.approvals_required} approver(s); {why}"
    return (d.action.verb, d.action.target.resource,
            f"[{_STYLE.get(state, 'white')}]{state}[/]", risk, escape(why))  # fmt: skip


def _table(header: bool = True) -> Table:
    table = Table(box=None, padding=(0, 1), pad_edge=False, expand=False, show_header=header)
    for name, style in (("verb", "bold"), ("target", ""), ("verdict", ""), ("risk", ""),
                        ("top reason", "dim")):  # fmt: skip
        table.add_column(name, style=style, no_wrap=name != "top reason")
    return table


def _line(d: types_pb2.Decision, con: Console) -> None:
    table = _table(header=False)
    table.add_row(*_cells(d))
    con.print(Padding(table, (0, 0, 0, 4)))


def _prepare(data: Path) -> ServeConfig:
    # Absolute: the config reads a relative policy or roles path from the data directory.
    data = data.resolve()
    certs = data / "certs"
    # A data directory used before (the README's tour) may have a CA without them all.
    missing = [n for n in IDENTITIES if not (certs / f"{n}.pem").exists()]
    if missing or not (certs / "ca.pem").exists():
        init_certs(certs, missing or IDENTITIES)
    policy, roles = data / "policy.toml", data / "roles.toml"
    if not policy.exists():
        policy.write_bytes(EXAMPLE_POLICY.read_bytes())
    if not roles.exists():
        roles.write_text(ROLES)
    return ServeConfig(data=data, listen="127.0.0.1:0", policy=policy, roles=roles,
                       ledger=LedgerConfig(checkpoint_interval=0.5))  # fmt: skip


async def gateway_walk(data: Path, con: Console, pace: float = 0.3) -> None:
    """Start the gateway as ``govgate serve`` would, drive it, stop it; ``pace`` seconds
    between the engine's proposals (0: as fast as it can)."""
    config = _prepare(data)
    stop, ready = asyncio.Event(), asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve(
        config, say=lambda line: con.print(f"  [dim]serve: {escape(line)}[/dim]", soft_wrap=True),
        ready=ready.set_result, stop=stop,
    ))  # fmt: skip
    done, _ = await asyncio.wait({server, ready}, return_when=asyncio.FIRST_COMPLETED)
    if server in done:
        server.result()  # start-up failed: raise its error
    port = ready.result()
    certs = data / "certs"

    def channel(who: str) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes(),
                                             (certs / f"{who}.key").read_bytes(),
                                             (certs / f"{who}.pem").read_bytes())  # fmt: skip
        return grpc.aio.secure_channel(f"localhost:{port}", creds)

    channels: dict[str, grpc.aio.Channel] = {}
    interrupted = False
    try:
        channels.update((n, channel(n)) for n in IDENTITIES)
        drive = asyncio.ensure_future(_drive(channels, con, pace))
        stopped = asyncio.ensure_future(stop.wait())  # Ctrl-C: serve drains and sets it
        await asyncio.wait({drive, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not drive.done():  # interrupted: the engine stops proposing, the gateway drains
            interrupted = True
            drive.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await drive
        else:
            drive.result()
    finally:
        for ch in channels.values():
            await ch.close()
        stop.set()
        await server
    if interrupted:
        con.print("  interrupted: the gateway stopped; what it recorded is in the ledger")
        raise KeyboardInterrupt


async def _drive(channels: dict[str, grpc.aio.Channel], con: Console, pace: float) -> None:
    con.print("\n  [bold]The engine (spiffe://govgate.local/engine-1) proposes:[/bold]")
    stub = decision_pb2_grpc.DecisionServiceStub(channels["engine-1"])
    requests = [_request(n, *s) for n, s in enumerate(SCRIPT)]

    async def stream() -> AsyncIterator[decision_pb2.ProposeRequest]:
        for r in requests:
            yield r
            await asyncio.sleep(pace)

    decisions: list[types_pb2.Decision] = []
    table = _table()
    with Live(Padding(table, (0, 0, 0, 2)), console=con, auto_refresh=False) as live:
        async for dec in stub.ProposeStream(stream()):
            decisions.append(dec)
            table.add_row(*_cells(dec))
            live.refresh()

    pending = [x for x in decisions if x.state == types_pb2.PENDING_APPROVAL]
    ov = {n: oversight_pb2_grpc.OversightServiceStub(c) for n, c in channels.items()}
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
        await asyncio.sleep(pace)
        result = first
        for who in ("alice", "bob")[: max(first.approvals_required, 1)]:
            result = await ov[who].Approve(oversight_pb2.ReviewRequest(
                decision_id=first.decision_id, reason="checked the dashboards",
                request_digest=first.request_digest))  # fmt: skip
            con.print(f"  {who} approves {first.action.verb} {first.action.target.resource}")
        _line(result, con)
        await asyncio.sleep(pace)
    if len(pending) > 1:
        second = pending[1]
        denied = await ov["bob"].Deny(oversight_pb2.ReviewRequest(
            decision_id=second.decision_id, reason="not during the release freeze",
            request_digest=second.request_digest))  # fmt: skip
        con.print(f"  bob denies {second.action.verb} {second.action.target.resource}: "
                  "not during the release freeze")  # fmt: skip
        _line(denied, con)
        await asyncio.sleep(pace)

    con.print("\n  [bold]The stop switch:[/bold]")
    prod = types_pb2.Scope(selector="env=prod")
    await ov["alice"].Halt(oversight_pb2.HaltRequest(scope=prod, reason="incident drill"))
    con.print("  alice halts env=prod")
    halted = await stub.Propose(_request(100, "reboot", "api-1", {}, 0.9, "retry"))
    _line(halted, con)
    await ov["alice"].Resume(oversight_pb2.ResumeRequest(scope=prod, reason="drill over"))
    con.print("  alice resumes env=prod")
    await asyncio.sleep(pace)

    executed = [x for x in decisions if x.state == types_pb2.EXECUTED
                and x.action.verb == "resize"]  # fmt: skip
    if executed:
        con.print("\n  [bold]A rollback:[/bold]")
        undo = decision_pb2.RollbackRequest(
            decision_id=executed[0].decision_id, reason="latency got worse after the change"
        )
        rolled = await decision_pb2_grpc.DecisionServiceStub(channels["alice"]).Rollback(undo)
        con.print(f"  alice rolls back {rolled.action.verb} {rolled.action.target.resource}")
        _line(rolled, con)
