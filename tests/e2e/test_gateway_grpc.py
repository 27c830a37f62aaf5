"""The gateway over a real grpc.aio server on loopback with mTLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from adapters.action import Target
from adapters.libvirt import LibvirtAdapter, LibvirtConfig
from explain.batcher import MicroBatcher
from explain.registry import Registry
from explain.scorer import Scorer
from gateway._proto.govgate.v1 import (
    decision_pb2,
    decision_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    oversight_pb2,
    oversight_pb2_grpc,
    types_pb2,
)
from gateway.identity import init_certs
from gateway.pipeline import Gateway
from gateway.policy import Policy
from gateway.samples import NODE
from gateway.server import ServerOptions, TlsFiles, start_server
from ledger import DataDir, LedgerConfig
from ledger.export import export_ledger
from ledger.merkle import verify_inclusion
from ledger.verify import verify_export

EXAMPLE_POLICY = Path(__file__).resolve().parents[2] / "gateway" / "policies" / "default.toml"
APPROVE_ALL = b"version = 1\n[defaults]\nexecute_below = 0.0\napprove_below = 1.0\napprovals = 1\n"
TWO_APPROVERS = APPROVE_ALL.replace(b"approvals = 1", b"approvals = 2")
ONE_SECOND_TO_APPROVE = APPROVE_ALL + b"approval_ttl = 1\n"
JUSTIFICATION = "p95 CPU above 85% for 20 minutes; scale out"
IDENTITIES = ("engine-1", "alice", "bob")


@dataclass
class Clients:
    gw: Gateway
    lv: LibvirtAdapter
    channels: dict[str, grpc.aio.Channel]
    tls: TlsFiles
    port: int
    # Teardown proves the ledger with the public key alone; a test that breaks the ledger
    # on purpose (fail closed) turns this off.
    verify_ledger: bool = True

    def decisions(self, who: str) -> decision_pb2_grpc.DecisionServiceStub:
        return decision_pb2_grpc.DecisionServiceStub(self.channels[who])

    def oversight(self, who: str) -> oversight_pb2_grpc.OversightServiceStub:
        return oversight_pb2_grpc.OversightServiceStub(self.channels[who])

    def ledger(self, who: str) -> ledger_pb2_grpc.LedgerServiceStub:
        return ledger_pb2_grpc.LedgerServiceStub(self.channels[who])

    async def vcpus(self) -> int | None:
        return (await self.lv.describe(Target("libvirt", "web-1"))).vcpus

    async def records(self, decision_id: str) -> list[ledger_pb2.Record]:
        query = ledger_pb2.QueryRequest(decision_id=decision_id)
        return [r async for r in self.ledger("alice").Query(query, timeout=10)]


@asynccontextmanager
async def serving(
    tmp_path: Path, *, shadow: bool = False, options: ServerOptions | None = None
) -> AsyncIterator[Clients]:
    """A gateway on loopback with mTLS, and a channel per identity; on a clean exit the
    exported ledger verifies with only the public key."""
    certs = init_certs(tmp_path / "certs", list(IDENTITIES))
    data = DataDir(tmp_path / "data")
    data.generate_key("example.com/govgate")
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    async with (
        data.open_ledger(LedgerConfig(checkpoint_every=0, checkpoint_interval=0)) as ledger,
        LibvirtAdapter(LibvirtConfig(uri=f"test://{node}")) as lv,
        MicroBatcher(Scorer(Registry(tmp_path / "models").load())) as batcher,
    ):
        policy = Policy.load(EXAMPLE_POLICY)
        gw = Gateway(ledger, {"libvirt": lv}, batcher, policy, shadow=shadow)
        tls = TlsFiles(certs["ca"].cert, certs["server"].cert, certs["server"].key)
        server, port = await start_server(gw, tls, options=options)
        ca = certs["ca"].cert.read_bytes()
        channels = {
            who: grpc.aio.secure_channel(
                f"localhost:{port}",
                grpc.ssl_channel_credentials(
                    ca, certs[who].key.read_bytes(), certs[who].cert.read_bytes()
                ),
            )
            for who in IDENTITIES
        }
        try:
            clients = Clients(gw, lv, channels, tls, port)
            yield clients
            if clients.verify_ledger:
                await gw.ledger.checkpoint()
                export = tmp_path / "export.jsonl"
                await export_ledger(gw.ledger, export)
                assert verify_export(export, data.signer().verifier).size > 0
        finally:
            for ch in channels.values():
                await ch.close()
            await server.stop(None)


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Clients]:
    async with serving(tmp_path) as c:
        yield c


@pytest.fixture
async def shadow_clients(tmp_path: Path) -> AsyncIterator[Clients]:
    async with serving(tmp_path, shadow=True) as c:
        yield c


def propose(
    request_id: str,
    verb: str = "resize",
    *,
    runtime: str = "libvirt",
    resource: str = "web-1",
    confidence: float = 0.95,
    justification: str = JUSTIFICATION,
    engine: str = "autoscaler",
    dry_run: bool = False,
    **params: str,
) -> decision_pb2.ProposeRequest:
    return decision_pb2.ProposeRequest(
        request_id=request_id,
        action=types_pb2.Action(
            verb=verb,
            target=types_pb2.Target(runtime=runtime, resource=resource),
            parameters=params,
            justification=justification,
            confidence=confidence,
            engine=engine,
        ),
        dry_run=dry_run,
    )


def review(d: types_pb2.Decision, reason: str = "ok") -> oversight_pb2.ReviewRequest:
    return oversight_pb2.ReviewRequest(
        decision_id=d.decision_id, reason=reason, request_digest=d.request_digest
    )


def details(err: grpc.aio.AioRpcError) -> list[object]:
    status = rpc_status.from_call(err)
    assert status is not None
    out: list[object] = []
    for any_ in status.details:
        for kind in (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo):
            if any_.Is(kind.DESCRIPTOR):
                msg = kind()
                any_.Unpack(msg)
                out.append(msg)
    return out


def error_reason(err: grpc.aio.AioRpcError) -> str:
    """The ``ErrorInfo`` reason of a refusal, after checking its domain."""
    infos = [d for d in details(err) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert len(infos) == 1, details(err)
    assert infos[0].domain == "govgate"
    return infos[0].reason


async def test_propose_executes_and_the_record_is_provable(clients: Clients):
    d = await clients.decisions("engine-1").Propose(propose("r-1", vcpus="4"), timeout=10)
    assert d.state == types_pb2.EXECUTED, d.reasons
    assert d.requester == "spiffe://govgate.local/engine-1"  # from the certificate
    assert 0 <= d.risk < 0.3
    assert len(d.model_id) == 64
    assert len(d.policy_id) == 64
    assert len(d.leaf_hash) == 32
    assert len(d.contributions) == 19
    sizes = [abs(c.contribution) for c in d.contributions]
    assert sizes == sorted(sizes, reverse=True)
    assert d.outcome.status == "applied"
    assert (await clients.lv.describe(Target("libvirt", "web-1"))).vcpus == 4

    ledger = clients.ledger("alice")
    cp = await ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=10)
    proof = await ledger.GetInclusionProof(
        ledger_pb2.GetInclusionProofRequest(index=d.ledger_index, tree_size=cp.size), timeout=10
    )
    assert proof.leaf_hash == d.leaf_hash
    verify_inclusion(proof.leaf_hash, d.ledger_index, cp.size, list(proof.proof), cp.root)
    for size in (cp.size + 1, 2**64 - 1):  # a uint64 beyond the log, even beyond SQLite's
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest(size=size), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
        assert "beyond the log's size" in (info.value.details() or "")
    kinds = [r.kind async for r in ledger.Query(ledger_pb2.QueryRequest(decision_id=d.decision_id))]
    assert kinds == ["decision", "outcome"]

    again = await clients.decisions("engine-1").Propose(propose("r-1", vcpus="4"), timeout=10)
    assert again.decision_id == d.decision_id
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await clients.decisions("engine-1").Propose(propose("r-1", vcpus="6"), timeout=10)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_query_times_are_compared_in_the_records_form(clients: Clients):
    """Records carry microseconds and compare as strings: a time without them, or with an
    offset, is brought to their form first, and a bad one names its field."""
    d = await clients.decisions("engine-1").Propose(propose("r-t", vcpus="4"), timeout=10)
    ledger = clients.ledger("alice")
    [first, *_] = [
        r async for r in ledger.Query(ledger_pb2.QueryRequest(decision_id=d.decision_id))
    ]
    t = dt.datetime.fromisoformat(first.time.replace("Z", "+00:00"))
    second = t.replace(microsecond=0)  # "…:SSZ" sorts after "…:SS.ffffffZ" as a string
    since = second.strftime("%Y-%m-%dT%H:%M:%SZ")
    until = (
        (second + dt.timedelta(seconds=1))
        .astimezone(dt.timezone(dt.timedelta(hours=2)))
        .isoformat()
    )  # the same instant with an offset
    q = ledger_pb2.QueryRequest(decision_id=d.decision_id, since=since, until=until)
    found = [r.index async for r in ledger.Query(q, timeout=10)]
    assert first.index in found
    for field, q in (
        ("since", ledger_pb2.QueryRequest(since="yesterday")),
        ("until", ledger_pb2.QueryRequest(until="2026-11-26T10:00:00")),  # no zone
        ("to_index", ledger_pb2.QueryRequest(from_index=5, to_index=2)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            [r async for r in ledger.Query(q, timeout=10)]
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [bad, _] = details(info.value)
        assert bad.field_violations[0].field == field


TOO_LONG = "x" * 4097  # adapters.action.MAX_TEXT is 4096


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        pytest.param(propose("", vcpus="4"), "request_id", id="request-id"),
        pytest.param(propose("r" * 129, vcpus="4"), "request_id", id="request-id-too-long"),
        pytest.param(propose("r-2", verb="explode"), "action.verb", id="verb"),
        pytest.param(propose("r-2", runtime="xen", vcpus="4"), "action.target.runtime",
                     id="runtime-unknown"),
        pytest.param(propose("r-2", resource="", vcpus="4"), "action.target.resource",
                     id="resource-empty"),
        pytest.param(propose("r-2", resource="nope", vcpus="4"), "action.target.resource",
                     id="resource-does-not-exist"),
        pytest.param(propose("r-2", cores="4"), "action.parameters.cores",
                     id="parameter-the-verb-does-not-take"),
        pytest.param(propose("r-3", vcpus="lots"), "action.parameters.vcpus", id="parameter"),
        pytest.param(propose("r-2", vcpus="4", live="maybe"), "action.parameters.live",
                     id="parameter-not-a-boolean"),
        pytest.param(propose("r-2"), "action.parameters", id="resize-without-a-size"),
        pytest.param(propose("r-2", "revert"), "action.parameters.snapshot",
                     id="required-parameter-missing"),
        pytest.param(propose("r-2", confidence=1.5, vcpus="4"), "action.confidence",
                     id="confidence-above-1"),
        pytest.param(propose("r-2", confidence=-0.1, vcpus="4"), "action.confidence",
                     id="confidence-negative"),
        pytest.param(propose("r-2", confidence=float("nan"), vcpus="4"), "action.confidence",
                     id="confidence-nan"),
        pytest.param(propose("r-2", justification=TOO_LONG, vcpus="4"), "action.justification",
                     id="justification-too-long"),
        pytest.param(propose("r-2", justification="all clear\x1b[2J", vcpus="4"),
                     "action.justification", id="justification-control-characters"),
        pytest.param(propose("r-2", engine=TOO_LONG, vcpus="4"), "action.engine",
                     id="engine-too-long"),
        pytest.param(propose("r-2", engine="auto\x00scaler", vcpus="4"), "action.engine",
                     id="engine-control-characters"),
        # Errors that echo long input stay within the client's metadata limit (8 KB): else
        # the caller gets RESOURCE_EXHAUSTED, the overload code, instead of this answer.
        pytest.param(propose("r-2", vcpus="9" * 4096), "action.parameters.vcpus",
                     id="long-value-echoed"),
        pytest.param(propose("r-2", "x" * 4096, vcpus="4"), "action.verb", id="long-verb"),
        pytest.param(propose("r-2", resource="r" * 4096, vcpus="4"), "action.target.resource",
                     id="long-resource-echoed"),
        pytest.param(propose("r-2", **{"p" * 3000: "4"}), "action.parameters." + "p" * 139 + "…",
                     id="long-parameter-name"),
        pytest.param(propose("r-2", resource="😀" * 4096, vcpus="4"), "action.target.resource",
                     id="long-non-ascii-resource"),
        pytest.param(propose("r-2", **{"😀" * 3000: "4"}), "action.parameters." + "😀" * 34 + "…",
                     id="long-non-ascii-parameter-name"),
    ],
)  # fmt: skip
async def test_invalid_input_names_the_field(clients: Clients, request_, field: str):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await clients.decisions("engine-1").Propose(request_, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [bad, errinfo] = details(info.value)
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert bad.field_violations[0].field == field
    assert isinstance(errinfo, error_details_pb2.ErrorInfo)
    assert errinfo.domain == "govgate"
    assert errinfo.reason == "INVALID_ARGUMENT"
    decisions = ledger_pb2.QueryRequest(kind="decision")
    assert [r async for r in clients.ledger("alice").Query(decisions, timeout=10)] == []
    assert await clients.vcpus() == 2


async def test_approval_over_grpc_with_watch(clients: Clients):
    await clients.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    d = await clients.decisions("engine-1").Propose(propose("r-4", vcpus="3"), timeout=10)
    assert d.state == types_pb2.PENDING_APPROVAL
    ttl = d.approval_deadline.ToDatetime() - d.created.ToDatetime()
    assert abs(ttl.total_seconds() - 3600) < 1  # the default approval_ttl, one hour
    pending = await clients.oversight("alice").ListPending(oversight_pb2.ListPendingRequest())
    assert [p.decision_id for p in pending.decisions] == [d.decision_id]

    watch = clients.decisions("alice").WatchDecision(
        decision_pb2.WatchDecisionRequest(decision_id=d.decision_id)
    )
    first = await anext(aiter(watch))
    assert first.state == types_pb2.PENDING_APPROVAL

    with pytest.raises(grpc.aio.AioRpcError) as info:  # the engine cannot approve itself
        await clients.oversight("engine-1").Approve(
            oversight_pb2.ReviewRequest(
                decision_id=d.decision_id, reason="mine", request_digest=d.request_digest
            )
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    [errinfo] = details(info.value)
    assert isinstance(errinfo, error_details_pb2.ErrorInfo)
    assert errinfo.reason == "SELF_APPROVAL"

    approved = await clients.oversight("alice").Approve(
        oversight_pb2.ReviewRequest(
            decision_id=d.decision_id, reason="ok", request_digest=d.request_digest
        )
    )
    assert approved.state == types_pb2.EXECUTED
    assert approved.reviews[0].reviewer == "spiffe://govgate.local/alice"
    states = [m.state async for m in watch]
    assert states[-1] == types_pb2.EXECUTED


async def test_halt_and_health(clients: Clients):
    h = await clients.oversight("alice").Halt(
        oversight_pb2.HaltRequest(scope=types_pb2.Scope(all=True), reason="drill")
    )
    assert h.ledger_index > 0
    query = ledger_pb2.QueryRequest(from_index=h.ledger_index, to_index=h.ledger_index + 1)
    (record,) = [r async for r in clients.ledger("alice").Query(query, timeout=10)]
    assert record.kind == "halt"
    assert h.halt_id == f"halt:{json.loads(record.body_json)['version']}"
    d = await clients.decisions("engine-1").Propose(propose("r-5", vcpus="3"), timeout=10)
    assert d.state == types_pb2.HALTED
    r = await clients.oversight("alice").Resume(
        oversight_pb2.ResumeRequest(scope=types_pb2.Scope(all=True), reason="over")
    )
    assert r.ledger_index > h.ledger_index
    health = health_pb2_grpc.HealthStub(clients.channels["alice"])
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await clients.decisions("alice").GetDecision(
            decision_pb2.GetDecisionRequest(decision_id="nope"), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    await asyncio.sleep(0)


async def test_rollback_and_incident_over_grpc(clients: Clients):
    d = await clients.decisions("engine-1").Propose(propose("r-6", vcpus="5"), timeout=10)
    assert d.state == types_pb2.EXECUTED
    rolled = await clients.decisions("alice").Rollback(
        decision_pb2.RollbackRequest(decision_id=d.decision_id, reason="regression"), timeout=10
    )
    assert rolled.state == types_pb2.ROLLED_BACK
    assert (await clients.lv.describe(Target("libvirt", "web-1"))).vcpus == 2
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await clients.decisions("alice").Rollback(
            decision_pb2.RollbackRequest(decision_id=d.decision_id, reason="again"), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    reply = await clients.decisions("alice").ReportIncident(
        decision_pb2.ReportIncidentRequest(decision_id=d.decision_id, harmful=True,
                                           severity="minor", description="p99 doubled"),
        timeout=10,
    )  # fmt: skip
    assert reply.ledger_index > rolled.ledger_index


async def test_roles_refuse_and_record(clients: Clients):
    from gateway.roles import Roles

    clients.gw.roles = Roles.parse(
        b'version = 1\n[identities."spiffe://govgate.local/engine-1"]\nroles = ["engine"]\n'
        b'verbs = ["resize"]\nselectors = ["env=staging"]\n'
        b'[identities."spiffe://govgate.local/alice"]\nroles = ["approver", "auditor"]\n'
        b'[identities."spiffe://govgate.local/bob"]\nroles = ["engine"]\n'
    )
    d = await clients.decisions("engine-1").Propose(propose("r-7", vcpus="3"), timeout=10)
    assert d.state == types_pb2.EXECUTED
    mine = decision_pb2.GetDecisionRequest(decision_id=d.decision_id)
    assert (await clients.decisions("engine-1").GetDecision(mine)).decision_id == d.decision_id
    refused = [
        (clients.decisions("bob").GetDecision(mine), "read"),  # another engine's decision
        (clients.decisions("engine-1").Propose(propose("r-8", verb="suspend")), "suspend"),
        (clients.decisions("alice").Propose(propose("r-9", vcpus="3")), "Propose"),
        (clients.oversight("engine-1").Halt(oversight_pb2.HaltRequest(
            scope=types_pb2.Scope(all=True), reason="x")), "Halt"),
        (clients.ledger("engine-1").GetCheckpoint(ledger_pb2.GetCheckpointRequest()),
         "GetCheckpoint"),
    ]  # fmt: skip
    for call, what in refused:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, what
        [errinfo] = details(info.value)
        assert isinstance(errinfo, error_details_pb2.ErrorInfo)
        assert errinfo.reason == "ACCESS_DENIED"
        assert what in (info.value.details() or "")
    access = [
        r async for r in clients.ledger("alice").Query(ledger_pb2.QueryRequest(kind="access"))
    ]
    assert len(access) == len(refused)
    assert {r.actor for r in access} == {
        "spiffe://govgate.local/engine-1",
        "spiffe://govgate.local/alice",
        "spiffe://govgate.local/bob",
    }


async def test_two_approvers_are_needed_and_each_counts_once(clients: Clients):
    await clients.gw.activate_policy(Policy.parse(TWO_APPROVERS, "two-approvers"))
    d = await clients.decisions("engine-1").Propose(propose("r-10", vcpus="3"), timeout=10)
    assert (d.state, d.approvals_required) == (types_pb2.PENDING_APPROVAL, 2)

    first = await clients.oversight("alice").Approve(review(d), timeout=10)
    assert first.state == types_pb2.PENDING_APPROVAL
    assert [r.reviewer for r in first.reviews] == ["spiffe://govgate.local/alice"]
    assert await clients.vcpus() == 2

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await clients.oversight("alice").Approve(review(d, "ok again"), timeout=10)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(info.value) == "DUPLICATE"

    second = await clients.oversight("bob").Approve(review(d), timeout=10)
    assert second.state == types_pb2.EXECUTED
    assert [r.reviewer for r in second.reviews] == [
        "spiffe://govgate.local/alice",
        "spiffe://govgate.local/bob",
    ]
    assert second.outcome.status == "applied"
    assert await clients.vcpus() == 3
    kinds = [r.kind for r in await clients.records(d.decision_id)]
    assert kinds == ["decision", "approval", "approval", "outcome"]


async def test_an_approval_cannot_be_replayed_onto_another_decision(clients: Clients):
    await clients.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    a = await clients.decisions("engine-1").Propose(propose("r-11", vcpus="3"), timeout=10)
    b = await clients.decisions("engine-1").Propose(propose("r-12", vcpus="4"), timeout=10)
    assert a.state == b.state == types_pb2.PENDING_APPROVAL
    assert a.request_digest != b.request_digest

    replayed = oversight_pb2.ReviewRequest(
        decision_id=a.decision_id, reason="ok", request_digest=b.request_digest
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await clients.oversight("alice").Approve(replayed, timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(info.value) == "DIGEST_MISMATCH"
    [errinfo] = [d for d in details(info.value) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert errinfo.metadata["decision_id"] == a.decision_id  # which decision refused it

    still = await clients.decisions("alice").GetDecision(
        decision_pb2.GetDecisionRequest(decision_id=a.decision_id), timeout=10
    )
    assert still.state == types_pb2.PENDING_APPROVAL
    assert list(still.reviews) == []
    assert [r.kind for r in await clients.records(a.decision_id)] == ["decision"]
    assert await clients.vcpus() == 2


async def test_dry_run_decides_and_records_but_never_executes(clients: Clients):
    d = await clients.decisions("engine-1").Propose(
        propose("r-13", vcpus="4", dry_run=True), timeout=10
    )
    assert d.state == types_pb2.DRY_RUN, d.reasons
    assert 0 <= d.risk < 0.3  # the same request without dry_run would execute
    assert not d.HasField("outcome")
    assert await clients.vcpus() == 2
    [decision] = await clients.records(d.decision_id)
    assert decision.kind == "decision"
    body = json.loads(decision.body_json)
    assert body["dry_run"] is True
    assert body["verdict"] == "DRY_RUN"


async def test_shadow_mode_records_a_low_risk_action_without_executing(
    shadow_clients: Clients,
):
    d = await shadow_clients.decisions("engine-1").Propose(propose("r-14", vcpus="4"), timeout=10)
    assert d.state == types_pb2.DRY_RUN, d.reasons
    assert 0 <= d.risk < 0.3
    assert not d.HasField("outcome")
    assert await shadow_clients.vcpus() == 2
    [decision] = await shadow_clients.records(d.decision_id)
    assert json.loads(decision.body_json)["dry_run"] is True


async def test_fail_closed_when_the_ledger_cannot_record(clients: Clients):
    clients.verify_ledger = False  # the ledger is closed on purpose
    await clients.gw.ledger.close()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await clients.decisions("engine-1").Propose(propose("r-15", vcpus="4"), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(info.value) == "UNAVAILABLE"
    assert await clients.vcpus() == 2


async def test_an_overseer_denies_with_a_reason_only(clients: Clients):
    await clients.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    d = await clients.decisions("engine-1").Propose(propose("r-16", vcpus="3"), timeout=10)
    assert d.state == types_pb2.PENDING_APPROVAL

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await clients.oversight("alice").Deny(review(d, reason=""), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(info.value) == "REASON_REQUIRED"

    denied = await clients.oversight("alice").Deny(review(d, "not during the freeze"), timeout=10)
    assert denied.state == types_pb2.DENIED
    assert [(r.reviewer, r.approved) for r in denied.reviews] == [
        ("spiffe://govgate.local/alice", False)
    ]
    assert any("not during the freeze" in r for r in denied.reasons)
    assert await clients.vcpus() == 2
    assert [r.kind for r in await clients.records(d.decision_id)] == ["decision", "denial"]


async def test_an_action_the_runtime_refuses_fails_with_an_outcome(clients: Clients):
    d = await clients.decisions("engine-1").Propose(propose("r-17", vcpus="64"), timeout=10)
    assert d.state == types_pb2.FAILED, d.reasons
    assert d.outcome.status == "failed"
    assert "maximum of 8" in d.outcome.detail
    assert await clients.vcpus() == 2
    [decision, outcome] = await clients.records(d.decision_id)
    assert (decision.kind, outcome.kind) == ("decision", "outcome")
    assert outcome.index == d.outcome.ledger_index
    assert json.loads(outcome.body_json)["status"] == "failed"


async def test_an_overdue_approval_expires_and_cannot_be_approved(clients: Clients):
    await clients.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    d = await clients.decisions("engine-1").Propose(propose("r-18", vcpus="3"), timeout=10)
    assert d.state == types_pb2.PENDING_APPROVAL
    watch = clients.decisions("alice").WatchDecision(
        decision_pb2.WatchDecisionRequest(decision_id=d.decision_id)
    )
    assert (await anext(aiter(watch))).state == types_pb2.PENDING_APPROVAL

    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)  # the policy's TTL is 1h
    assert await clients.gw.expire_overdue(now=later) == 1
    states = [m.state async for m in watch]
    assert states[-1:] == [types_pb2.EXPIRED]  # the stream ends on the final state
    got = await clients.decisions("alice").GetDecision(
        decision_pb2.GetDecisionRequest(decision_id=d.decision_id), timeout=10
    )
    assert got.state == types_pb2.EXPIRED

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await clients.oversight("alice").Approve(review(d), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(info.value) == "NOT_PENDING"
    assert await clients.vcpus() == 2
    assert [r.kind for r in await clients.records(d.decision_id)] == ["decision", "expiry"]


async def test_an_approval_after_the_deadline_is_refused_and_expires(clients: Clients):
    await clients.gw.activate_policy(Policy.parse(ONE_SECOND_TO_APPROVE, "one-second"))
    d = await clients.decisions("engine-1").Propose(propose("r-19", vcpus="3"), timeout=10)
    assert d.state == types_pb2.PENDING_APPROVAL
    await asyncio.sleep(1.1)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await clients.oversight("alice").Approve(review(d), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(info.value) == "EXPIRED"
    got = await clients.decisions("alice").GetDecision(
        decision_pb2.GetDecisionRequest(decision_id=d.decision_id), timeout=10
    )
    assert got.state == types_pb2.EXPIRED
    assert await clients.vcpus() == 2


async def test_overload_is_refused_fast_with_retry_info_and_the_server_recovers(tmp_path: Path):
    async with serving(tmp_path, options=ServerOptions(max_inflight=2, retry_after=0.5)) as clients:
        stub = clients.decisions("engine-1")
        burst = [stub.Propose(propose(f"r-{n}", vcpus=str(3 + n % 2)), timeout=30)
                 for n in range(40)]  # fmt: skip
        results = await asyncio.gather(*burst, return_exceptions=True)
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        decided = [r for r in results if not isinstance(r, BaseException)]
        assert refused, "40 at once against a limit of 2 must be refused in part"
        assert decided, "and the first ones decided"
        assert len(refused) + len(decided) == 40
        for err in refused:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            status = rpc_status.from_call(err)
            assert status is not None
            [packed] = [a for a in status.details if a.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            assert retry.retry_delay.ToMilliseconds() == 500
        # Nothing refused was recorded; everything decided was, once.
        q = ledger_pb2.QueryRequest(kind="decision", limit=1000)
        recorded = [r async for r in clients.ledger("alice").Query(q)]
        assert len(recorded) == len(decided)
        again = await stub.Propose(propose("r-after", vcpus="4"), timeout=30)  # recovered
        assert again.state in (types_pb2.EXECUTED, types_pb2.PENDING_APPROVAL)


async def test_callers_who_give_up_do_not_lift_the_bound_on_work_in_flight(tmp_path: Path):
    """A proposal whose caller's deadline passed runs on to its end: it still counts
    against max_inflight, so callers who keep giving up cannot pile up work."""
    async with serving(tmp_path, options=ServerOptions(max_inflight=2, retry_after=0.5)) as clients:
        real, go_on = clients.lv._execute, asyncio.Event()

        async def slow(*args: object, **kwargs: object) -> object:
            await go_on.wait()
            return await real(*args, **kwargs)  # type: ignore[arg-type]

        clients.lv._execute = slow  # type: ignore[method-assign]
        stub = clients.decisions("engine-1")
        codes = []
        for n in range(12):  # one after another: never more than one caller waiting
            try:
                await stub.Propose(propose(f"r-{n}", vcpus=str(3 + n % 2)), timeout=0.5)
            except grpc.aio.AioRpcError as err:
                codes.append(err.code())
        assert set(codes) <= {
            grpc.StatusCode.DEADLINE_EXCEEDED,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        }
        assert codes.count(grpc.StatusCode.DEADLINE_EXCEEDED) >= 2
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        assert clients.gw.proposals_under_way() <= 2  # the bound held
        go_on.set()
        del clients.lv._execute
        for _ in range(100):  # the abandoned work finishes, and the bound frees up
            if clients.gw.proposals_under_way() == 0:
                break
            await asyncio.sleep(0.05)
        again = await stub.Propose(propose("r-after", vcpus="4"), timeout=30)
        assert again.state in (types_pb2.EXECUTED, types_pb2.PENDING_APPROVAL)


async def test_a_deadline_that_passes_leaves_no_decision_without_its_outcome(clients: Clients):
    stub = clients.decisions("engine-1")
    calls = [stub.Propose(propose(f"r-{n}", vcpus=str(3 + n % 2)), timeout=0.002)
             for n in range(20)]  # fmt: skip
    results = await asyncio.gather(*calls, return_exceptions=True)
    late = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert late, "a 2 ms deadline must pass for some of 20 concurrent proposals"
    assert {r.code() for r in late} == {grpc.StatusCode.DEADLINE_EXCEEDED}
    await asyncio.sleep(1.0)  # what was recorded finishes without its callers
    ledger = clients.ledger("alice")
    decided = [r async for r in ledger.Query(ledger_pb2.QueryRequest(kind="decision"))]
    finished = {r.decision_id async for r in ledger.Query(ledger_pb2.QueryRequest(kind="outcome"))}
    for record in decided:
        verdict = json.loads(record.body_json)["verdict"]
        assert verdict != "EXECUTING" or record.decision_id in finished, record.decision_id


async def test_pending_decisions_are_listed_a_page_at_a_time(clients: Clients):
    await clients.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    made = [await clients.decisions("engine-1").Propose(propose(f"p-{n}", vcpus=str(3 + n % 2)))
            for n in range(5)]  # fmt: skip
    ov = clients.oversight("alice")
    seen, token, pages = [], "", 0
    while True:
        page = await ov.ListPending(oversight_pb2.ListPendingRequest(page_size=2, page_token=token))
        seen += [d.decision_id for d in page.decisions]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == [d.decision_id for d in made]  # oldest first, each once
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await ov.ListPending(oversight_pb2.ListPendingRequest(page_token="d-nope"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_second_server_on_the_address_is_refused_unless_both_share_it(clients: Clients):
    # gRPC's own default (SO_REUSEPORT) would let both listen and split the calls between
    # two gateways that know nothing of each other's halts, approvals and request ids.
    with pytest.raises(RuntimeError, match="Failed to bind"):
        await start_server(clients.gw, clients.tls, port=clients.port)
    shared = ServerOptions(reuse_port=True)
    first, port = await start_server(clients.gw, clients.tls, options=shared)
    try:
        second, again = await start_server(clients.gw, clients.tls, port=port, options=shared)
        await second.stop(None)
        assert again == port
    finally:
        await first.stop(None)


class _Under:
    """Wraps ``Gateway.propose`` to see a stream's proposals: the order they start and end in,
    and how many are under way at once. ``hold(request_id, until)`` keeps one proposal from
    going on until ``until`` (another proposal's start, say) has happened."""

    def __init__(self, gw: Gateway) -> None:
        self.events: list[tuple[str, str]] = []
        self.started: dict[str, asyncio.Event] = {}
        self.now = self.most = 0
        self.holds: dict[str, asyncio.Event] = {}
        real = gw.propose

        async def propose(request_id: str, *args: object, **kwargs: object) -> object:
            self.events.append(("start", request_id))
            self.now += 1
            self.most = max(self.most, self.now)
            self.start_of(request_id).set()
            try:
                if request_id in self.holds:
                    await asyncio.wait_for(self.holds[request_id].wait(), 10)
                return await real(request_id, *args, **kwargs)  # type: ignore[arg-type]
            finally:
                self.now -= 1
                self.events.append(("end", request_id))

        gw.propose = propose  # type: ignore[method-assign]

    def start_of(self, request_id: str) -> asyncio.Event:
        return self.started.setdefault(request_id, asyncio.Event())

    def at(self, kind: str, request_id: str) -> int:
        return self.events.index((kind, request_id))


async def test_a_stream_decides_other_targets_at_once_and_one_target_in_order(clients: Clients):
    under = _Under(clients.gw)
    # s-1 goes on only once s-3, on another target, has started: one at a time, it never would.
    under.holds["s-1"] = under.start_of("s-3")
    requests = [propose("s-1", vcpus="3"), propose("s-2", vcpus="4"),
                propose("s-3", resource="web-2", vcpus="3")]  # fmt: skip
    call = clients.decisions("engine-1").ProposeStream(iter(requests), timeout=20)
    answers = [d async for d in call]
    assert [d.request_id for d in answers] == ["s-1", "s-2", "s-3"]  # the order they came in
    assert all(d.state == types_pb2.EXECUTED for d in answers), [d.reasons for d in answers]
    assert under.at("start", "s-3") < under.at("end", "s-1")  # at once
    assert under.at("end", "s-1") < under.at("start", "s-2")  # web-1's, one after the other
    assert await clients.vcpus() == 4  # s-2 ran last on web-1


async def test_a_stream_has_at_most_its_window_under_way(tmp_path: Path):
    async with serving(tmp_path, options=ServerOptions(stream_window=2)) as c:
        under = _Under(c.gw)
        release = asyncio.Event()
        targets = ("web-1", "web-2", "dev-1", "api-1")
        for n in range(len(targets)):
            under.holds[f"w-{n}"] = release
        requests = [propose(f"w-{n}", "start", resource=t) for n, t in enumerate(targets)]
        call = c.decisions("engine-1").ProposeStream(iter(requests), timeout=20)
        answers = asyncio.ensure_future(_collect(call))
        await asyncio.wait_for(under.start_of("w-1").wait(), 10)
        await asyncio.sleep(0.3)  # a third would have started by now, were it let in
        assert (under.now, under.most) == (2, 2)
        release.set()
        assert [d.request_id for d in await answers] == ["w-0", "w-1", "w-2", "w-3"]
        assert under.most == 2


async def _collect(call: grpc.aio.StreamStreamCall) -> list[types_pb2.Decision]:
    return [d async for d in call]


async def _until_error(
    stub: decision_pb2_grpc.DecisionServiceStub, requests: list[decision_pb2.ProposeRequest]
) -> tuple[list[types_pb2.Decision], grpc.aio.AioRpcError]:
    """The answers of a stream that must end with an error, and the error."""
    call = stub.ProposeStream(iter(requests), timeout=20)
    answers: list[types_pb2.Decision] = []

    async def read() -> None:
        async for d in call:
            answers.append(d)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read()
    return answers, caught.value


async def test_a_stream_ends_at_its_first_failing_message_after_the_answers_before_it(
    clients: Clients,
):
    requests = [propose("f-1", vcpus="3"), propose("f-2", "explode", resource="web-2"),
                propose("f-3", resource="dev-1", vcpus="2")]  # fmt: skip
    answers, err = await _until_error(clients.decisions("engine-1"), requests)
    assert [d.request_id for d in answers] == ["f-1"]
    assert answers[0].state == types_pb2.EXECUTED
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "verb" in err.details()


async def test_after_a_failing_request_the_next_on_its_target_never_runs(clients: Clients):
    """A retry of both would otherwise run them the other way round."""
    under = _Under(clients.gw)
    release = asyncio.Event()
    asyncio.get_running_loop().call_later(0.3, release.set)
    under.holds["g-1"] = release  # the stream's answers wait on g-1 meanwhile
    requests = [propose("g-1", vcpus="3"), propose("g-2", "explode", resource="web-2"),
                propose("g-3", resource="web-2", vcpus="3")]  # fmt: skip
    answers, err = await _until_error(clients.decisions("engine-1"), requests)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [d.request_id for d in answers] == ["g-1"]
    assert ("start", "g-3") not in under.events
    query = ledger_pb2.QueryRequest(kind="decision")
    decided = [json.loads(r.body_json)["request_id"]
               async for r in clients.ledger("alice").Query(query, timeout=10)]  # fmt: skip
    assert "g-3" not in decided
