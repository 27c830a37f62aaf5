"""The gateway over a real grpc.aio server on loopback with mTLS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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
from gateway.server import TlsFiles, start_server
from ledger import DataDir, LedgerConfig
from ledger.merkle import verify_inclusion

EXAMPLE_POLICY = Path(__file__).resolve().parents[2] / "gateway" / "policies" / "default.toml"
NODE = """<node><domain type='test'><name>web-1</name>
  <memory unit='MiB'>8192</memory><currentMemory unit='MiB'>4096</currentMemory>
  <vcpu current='2'>8</vcpu><os><type arch='x86_64'>hvm</type></os>
  <metadata><govgate:labels xmlns:govgate='https://govgate.dev/xmlns/labels/1'>
    <label key='environment'>staging</label><label key='criticality'>low</label>
  </govgate:labels></metadata><devices/></domain></node>"""
APPROVE_ALL = b"version = 1\n[defaults]\nexecute_below = 0.0\napprove_below = 1.0\napprovals = 1\n"


@dataclass
class Clients:
    gw: Gateway
    lv: LibvirtAdapter
    channels: dict[str, grpc.aio.Channel]

    def decisions(self, who: str) -> decision_pb2_grpc.DecisionServiceStub:
        return decision_pb2_grpc.DecisionServiceStub(self.channels[who])

    def oversight(self, who: str) -> oversight_pb2_grpc.OversightServiceStub:
        return oversight_pb2_grpc.OversightServiceStub(self.channels[who])

    def ledger(self, who: str) -> ledger_pb2_grpc.LedgerServiceStub:
        return ledger_pb2_grpc.LedgerServiceStub(self.channels[who])


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Clients]:
    certs = init_certs(tmp_path / "certs", ["engine-1", "alice"])
    data = DataDir(tmp_path / "data")
    data.generate_key("example.com/govgate")
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    async with (
        data.open_ledger(LedgerConfig(checkpoint_every=0, checkpoint_interval=0)) as ledger,
        LibvirtAdapter(LibvirtConfig(uri=f"test://{node}")) as lv,
        MicroBatcher(Scorer(Registry(tmp_path / "models").load())) as batcher,
    ):
        gw = Gateway(ledger, {"libvirt": lv}, batcher, Policy.load(EXAMPLE_POLICY))
        tls = TlsFiles(certs["ca"].cert, certs["server"].cert, certs["server"].key)
        server, port = await start_server(gw, tls)
        ca = certs["ca"].cert.read_bytes()
        channels = {
            who: grpc.aio.secure_channel(
                f"localhost:{port}",
                grpc.ssl_channel_credentials(
                    ca, certs[who].key.read_bytes(), certs[who].cert.read_bytes()
                ),
            )
            for who in ("engine-1", "alice")
        }
        try:
            yield Clients(gw, lv, channels)
        finally:
            for ch in channels.values():
                await ch.close()
            await server.stop(None)


def propose(request_id: str, verb: str = "resize", **params: str) -> decision_pb2.ProposeRequest:
    return decision_pb2.ProposeRequest(
        request_id=request_id,
        action=types_pb2.Action(
            verb=verb,
            target=types_pb2.Target(runtime="libvirt", resource="web-1"),
            parameters=params,
            justification="p95 CPU above 85% for 20 minutes; scale out",
            confidence=0.95,
            engine="autoscaler",
        ),
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
    kinds = [r.kind async for r in ledger.Query(ledger_pb2.QueryRequest(decision_id=d.decision_id))]
    assert kinds == ["decision", "outcome"]

    again = await clients.decisions("engine-1").Propose(propose("r-1", vcpus="4"), timeout=10)
    assert again.decision_id == d.decision_id
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await clients.decisions("engine-1").Propose(propose("r-1", vcpus="6"), timeout=10)
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (propose("r-2", verb="explode"), "action.verb"),
        (propose("r-3", vcpus="lots"), "action.parameters.vcpus"),
        (propose("", vcpus="4"), "request_id"),
    ],
    ids=["verb", "parameter", "request-id"],
)
async def test_invalid_input_names_the_field(clients: Clients, request_, field: str):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await clients.decisions("engine-1").Propose(request_, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [bad, errinfo] = details(info.value)
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert bad.field_violations[0].field == field
    assert isinstance(errinfo, error_details_pb2.ErrorInfo)
    assert errinfo.domain == "govgate"


async def test_approval_over_grpc_with_watch(clients: Clients):
    await clients.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    d = await clients.decisions("engine-1").Propose(propose("r-4", vcpus="3"), timeout=10)
    assert d.state == types_pb2.PENDING_APPROVAL
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
    d = await clients.decisions("engine-1").Propose(propose("r-5", vcpus="3"), timeout=10)
    assert d.state == types_pb2.HALTED
    await clients.oversight("alice").Resume(
        oversight_pb2.ResumeRequest(scope=types_pb2.Scope(all=True), reason="over")
    )
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
    )
    d = await clients.decisions("engine-1").Propose(propose("r-7", vcpus="3"), timeout=10)
    assert d.state == types_pb2.EXECUTED
    refused = [
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
    }
