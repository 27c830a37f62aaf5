"""Tracing end to end: a real OTLP receiver in process, the gateway over mTLS on loopback.

The spans travel the way they do in production: the gateway's span recorder hands them
to its exporter process, where the SDK's batch processor passes them to the OTLP
exporter, which sends them over gRPC (or HTTP) to a collector; here the collector is an
in-process ``TraceService`` that keeps every export request. The gateway's tests run
with the SDK's own provider as well. Nothing
depends on OpenTelemetry's global provider: each test passes its own.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import NoOpTracerProvider
from opentelemetry.trace import TracerProvider as ApiTracerProvider

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
from gateway.config import ConfigError
from gateway.identity import init_certs
from gateway.pipeline import Gateway
from gateway.policy import Policy
from gateway.samples import NODE
from gateway.server import ServerOptions, TlsFiles, start_server
from gateway.spans import SpanRecorder
from gateway.telemetry import TRACER_NAME, TracingInterceptor, exporter_names, setup_tracing
from ledger import DataDir, LedgerConfig, Record
from ledger.store import RecordQuery

EXAMPLE_POLICY = Path(__file__).resolve().parents[2] / "gateway" / "policies" / "default.toml"
APPROVE_ALL = b"version = 1\n[defaults]\nexecute_below = 0.0\napprove_below = 1.0\napprovals = 1\n"

# The engine's span: the gateway's server span must be its child.
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = (("traceparent", f"00-{TRACE}-{PARENT}-01"), ("tracestate", "engine=t61rcWkgMzE"))
OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"

SERVER = trace_pb2.Span.SPAN_KIND_SERVER
INTERNAL = trace_pb2.Span.SPAN_KIND_INTERNAL
STATUS_UNSET = trace_pb2.Status.STATUS_CODE_UNSET
STATUS_ERROR = trace_pb2.Status.STATUS_CODE_ERROR

Provider = SpanRecorder | TracerProvider


# -- an OTLP receiver -----------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """One exported span, decoded from OTLP."""

    name: str
    trace_id: str
    span_id: str
    parent: str  # "" for a root
    kind: int
    attributes: dict[str, Any]
    status: int
    events: tuple[str, ...]
    trace_state: str
    resource: dict[str, Any]
    start: int


def _value(v: common_pb2.AnyValue) -> Any:
    field = v.WhichOneof("value")
    return getattr(v, field) if field else None


def _decode(request: trace_service_pb2.ExportTraceServiceRequest) -> list[Span]:
    out = []
    for rs in request.resource_spans:
        resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    Span(
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent=s.parent_span_id.hex(),
                        kind=s.kind,
                        attributes={kv.key: _value(kv.value) for kv in s.attributes},
                        status=s.status.code,
                        events=tuple(e.name for e in s.events),
                        trace_state=s.trace_state,
                        resource=resource,
                        start=s.start_time_unix_nano,
                    )
                )
    return out


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector on a loopback port, keeping what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self, trace_id: str | None = None) -> list[Span]:
        with self.lock:
            spans = [s for r in self.requests for s in _decode(r)]
        spans = [s for s in spans if trace_id is None or s.trace_id == trace_id]
        return sorted(spans, key=lambda s: s.start)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    collector = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield collector, port
    server.stop(None).wait()


@pytest.fixture(params=["recorder", "sdk"])
def provider(
    request: pytest.FixtureRequest, receiver: tuple[Receiver, int], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Provider]:
    """A provider exporting over OTLP/gRPC to the receiver: ``recorder`` is what ``govgate
    serve`` makes (spans exported from a child process, configured by ``OTEL_*``),
    ``sdk`` the SDK's own provider, which the gateway's code works with as well."""
    p: SpanRecorder | TracerProvider
    if request.param == "recorder":
        for name in list(os.environ):
            if name.startswith("OTEL_"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver[1]}")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "govgate-test")
        recorder = setup_tracing(set_global=False)
        assert isinstance(recorder, SpanRecorder)
        p = recorder
    else:
        exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{receiver[1]}", insecure=True)
        p = TracerProvider(
            sampler=ParentBased(ALWAYS_ON), resource=Resource({"service.name": "govgate-test"})
        )
        p.add_span_processor(BatchSpanProcessor(exporter))
    yield p
    p.shutdown()


# -- a traced gateway ---------------------------------------------------------------------


@dataclass
class Traced:
    gw: Gateway
    port: int
    channels: dict[str, grpc.aio.Channel]

    def decisions(self, who: str = "engine-1") -> decision_pb2_grpc.DecisionServiceStub:
        return decision_pb2_grpc.DecisionServiceStub(self.channels[who])

    def oversight(self, who: str = "alice") -> oversight_pb2_grpc.OversightServiceStub:
        return oversight_pb2_grpc.OversightServiceStub(self.channels[who])

    async def records(self, **query: Any) -> list[Record]:
        return await self.gw.ledger.store.query(RecordQuery(**query))


@asynccontextmanager
async def traced(tmp_path: Path, provider: ApiTracerProvider) -> AsyncIterator[Traced]:
    """The gateway on loopback with mTLS, its pipeline and its server span traced by
    ``provider``."""
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
        tracer = provider.get_tracer(TRACER_NAME)
        gw = Gateway(ledger, {"libvirt": lv}, batcher, Policy.load(EXAMPLE_POLICY), tracer=tracer)
        tracing = TracingInterceptor(provider, server_address="127.0.0.1")
        tls = TlsFiles(certs["ca"].cert, certs["server"].cert, certs["server"].key)
        options = ServerOptions(interceptors=(tracing,))
        server, port = await start_server(gw, tls, options=options)
        tracing.server_port = port
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
            yield Traced(gw, port, channels)
        finally:
            for ch in channels.values():
                await ch.close()
            await server.stop(None)


def propose(request_id: str, runtime: str = "libvirt", **params: str) -> Any:
    return decision_pb2.ProposeRequest(
        request_id=request_id,
        action=types_pb2.Action(
            verb="resize",
            target=types_pb2.Target(runtime=runtime, resource="web-1"),
            parameters=params,
            justification="p95 CPU above 85% for 20 minutes; scale out",
            confidence=0.95,
            engine="autoscaler",
        ),
    )


SERVER_SPAN = "govgate.v1.DecisionService/Propose"


async def flushed(
    provider: Provider, receiver: Receiver, trace_id: str, *, server: bool = False
) -> list[Span]:
    """The spans of ``trace_id`` once the batch processor has exported everything.

    ``server``: wait (5 s at most) for the call's server span too. A call that ends in an
    error status can reach the caller first: gRPC sends the status from within the abort,
    and the interceptor ends the span as the abort's exception unwinds, just after."""
    give_up = time.monotonic() + 5
    while True:
        assert await asyncio.to_thread(provider.force_flush, 10_000)
        spans = receiver.spans(trace_id)
        if not server or any(s.name == SERVER_SPAN for s in spans):
            return spans
        if time.monotonic() > give_up:
            return spans
        await asyncio.sleep(0.05)


def one(spans: list[Span], name: str) -> Span:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def children(spans: list[Span], parent: Span) -> list[Span]:
    return [s for s in spans if s.parent == parent.span_id]


# -- the tests ------------------------------------------------------------------------------


async def test_a_proposal_continues_the_engines_trace_down_to_its_records(
    tmp_path: Path, provider: Provider, receiver: tuple[Receiver, int]
):
    async with traced(tmp_path, provider) as t:
        d = await t.decisions().Propose(propose("r-1", vcpus="4"), metadata=TRACEPARENT,
                                        timeout=10)  # fmt: skip
        assert d.state == types_pb2.EXECUTED, d.reasons
        assert d.trace_id == TRACE  # the answer names the trace too
        spans = await flushed(provider, receiver[0], TRACE)

        server = one(spans, "govgate.v1.DecisionService/Propose")
        assert server.kind == SERVER
        assert server.parent == PARENT  # a child of the engine's span
        assert server.trace_state == "engine=t61rcWkgMzE"
        assert server.resource["service.name"] == "govgate-test"
        assert server.attributes == {
            "rpc.system": "grpc",
            "rpc.service": "govgate.v1.DecisionService",
            "rpc.method": "Propose",
            "rpc.grpc.status_code": 0,
            "server.address": "127.0.0.1",
            "server.port": t.port,
            "network.peer.address": "127.0.0.1",
            "network.peer.port": server.attributes["network.peer.port"],
        }
        assert server.status == STATUS_UNSET

        decide = one(spans, "govgate.decide")
        assert decide.parent == server.span_id
        assert decide.kind == INTERNAL
        attrs = decide.attributes
        assert attrs["govgate.decision.id"] == d.decision_id
        assert attrs["govgate.decision.request_id"] == "r-1"
        assert attrs["govgate.decision.requester"] == "spiffe://govgate.local/engine-1"
        assert attrs["govgate.decision.verb"] == "resize"
        assert attrs["govgate.decision.target"] == "libvirt/web-1"
        assert attrs["govgate.decision.state"] == "EXECUTED"
        assert attrs["govgate.decision.risk"] == pytest.approx(d.risk)
        assert attrs["govgate.decision.model_id"] == d.model_id
        assert attrs["govgate.decision.policy_id"] == d.policy_id
        assert attrs["govgate.decision.ledger_index"] == d.ledger_index
        assert attrs["govgate.decision.trace_id"] == TRACE

        stages = children(spans, decide)
        assert [s.name for s in stages] == [
            "govgate.validate", "govgate.describe", "govgate.score", "govgate.policy",
            "govgate.plan", "govgate.ledger.append", "govgate.execute", "govgate.ledger.append",
        ]  # fmt: skip
        assert all(s.status == STATUS_UNSET for s in stages)
        appends = [s.attributes for s in stages if s.name == "govgate.ledger.append"]
        assert [a["govgate.ledger.kind"] for a in appends] == ["decision", "outcome"]
        assert appends[0]["govgate.ledger.index"] == d.ledger_index
        assert appends[1]["govgate.ledger.index"] == d.outcome.ledger_index
        policy = one(stages, "govgate.policy").attributes
        assert policy["govgate.policy.verdict"] == "execute"
        assert one(stages, "govgate.score").attributes["govgate.decision.model_id"] == d.model_id

        # From the trace to the signed records, and back.
        records = await t.records(trace_id=TRACE)
        assert [(r.kind, r.decision_id) for r in records] == [
            ("decision", d.decision_id), ("outcome", d.decision_id),
        ]  # fmt: skip
        assert [r.index for r in records] == [a["govgate.ledger.index"] for a in appends]
        by_decision = await t.records(decision_id=attrs["govgate.decision.id"])
        assert {r.trace_id for r in by_decision} == {TRACE}


async def test_a_refusal_gives_the_server_span_the_status_the_caller_gets(
    tmp_path: Path, provider: Provider, receiver: tuple[Receiver, int]
):
    async with traced(tmp_path, provider) as t:
        # Refused by the pipeline: no request id.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await t.decisions().Propose(propose("", vcpus="4"), metadata=TRACEPARENT, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Refused while decoding, before the pipeline: only the server span.
        other = (("traceparent", f"00-{OTHER_TRACE}-{PARENT}-01"),)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await t.decisions().Propose(propose("r-2", vcpus="many"), metadata=other, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        spans = await flushed(provider, receiver[0], TRACE, server=True)
        server = one(spans, "govgate.v1.DecisionService/Propose")
        assert (
            server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        )
        assert server.status == STATUS_UNSET  # the caller's mistake, not the server's
        assert server.events == ()  # the abort is the mapped status, not an exception
        validate = one(spans, "govgate.validate")
        assert validate.status == STATUS_ERROR
        assert validate.events == ("exception",)
        assert one(spans, "govgate.decide").status == STATUS_ERROR
        assert await t.records(trace_id=TRACE) == []  # nothing was decided

        spans = receiver[0].spans(OTHER_TRACE)
        assert [s.name for s in spans] == ["govgate.v1.DecisionService/Propose"]
        assert spans[0].attributes["rpc.grpc.status_code"] == 3


async def test_a_ledger_that_cannot_record_is_the_servers_error(
    tmp_path: Path, provider: Provider, receiver: tuple[Receiver, int]
):
    async with traced(tmp_path, provider) as t:
        await t.gw.ledger.close()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await t.decisions().Propose(propose("r-1", vcpus="4"), metadata=TRACEPARENT,
                                        timeout=10)  # fmt: skip
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        spans = await flushed(provider, receiver[0], TRACE, server=True)
    server = one(spans, "govgate.v1.DecisionService/Propose")
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert server.status == STATUS_ERROR
    append = one(spans, "govgate.ledger.append")
    assert append.status == STATUS_ERROR
    assert append.attributes == {}  # no index: nothing was recorded
    assert one(spans, "govgate.decide").status == STATUS_ERROR


async def test_a_stream_is_one_server_span_with_a_decision_span_per_message(
    tmp_path: Path, provider: Provider, receiver: tuple[Receiver, int]
):
    async with traced(tmp_path, provider) as t:
        requests = [propose(f"r-{i}", vcpus=str(2 + i)) for i in range(3)]
        call = t.decisions().ProposeStream(iter(requests), metadata=TRACEPARENT, timeout=10)
        decisions = [d async for d in call]
        assert [d.state for d in decisions] == [types_pb2.EXECUTED] * 3
        spans = await flushed(provider, receiver[0], TRACE)
        records = await t.records(trace_id=TRACE)

    server = one(spans, "govgate.v1.DecisionService/ProposeStream")
    assert server.parent == PARENT
    assert server.attributes["rpc.method"] == "ProposeStream"
    assert server.attributes["rpc.grpc.status_code"] == 0
    decides = children(spans, server)
    assert [s.name for s in decides] == ["govgate.decide"] * 3
    ids = [d.decision_id for d in decisions]
    assert [s.attributes["govgate.decision.id"] for s in decides] == ids
    for decide in decides:
        assert [s.name for s in children(spans, decide)].count("govgate.ledger.append") == 2
    assert [(r.kind, r.decision_id) for r in records] == [
        (kind, i) for i in ids for kind in ("decision", "outcome")
    ]


async def test_without_a_traceparent_the_gateway_starts_the_trace(
    tmp_path: Path, provider: Provider, receiver: tuple[Receiver, int]
):
    async with traced(tmp_path, provider) as t:
        d = await t.decisions().Propose(propose("r-1", vcpus="4"), timeout=10)
        assert len(d.trace_id) == 32
        spans = await flushed(provider, receiver[0], d.trace_id)
        records = await t.records(decision_id=d.decision_id)
    server = one(spans, "govgate.v1.DecisionService/Propose")
    assert server.parent == ""
    assert one(spans, "govgate.decide").parent == server.span_id
    assert {r.trace_id for r in records} == {d.trace_id}


async def test_an_approval_in_its_own_trace_leads_back_to_the_proposal(
    tmp_path: Path, provider: Provider, receiver: tuple[Receiver, int]
):
    async with traced(tmp_path, provider) as t:
        await t.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
        d = await t.decisions().Propose(propose("r-1", vcpus="4"), metadata=TRACEPARENT,
                                        timeout=10)  # fmt: skip
        assert d.state == types_pb2.PENDING_APPROVAL
        approver = (("traceparent", f"00-{OTHER_TRACE}-{PARENT}-01"),)
        review = oversight_pb2.ReviewRequest(
            decision_id=d.decision_id, reason="ok", request_digest=d.request_digest
        )
        done = await t.oversight().Approve(review, metadata=approver, timeout=10)
        assert done.state == types_pb2.EXECUTED
        spans = await flushed(provider, receiver[0], OTHER_TRACE)
        records = await t.records(decision_id=d.decision_id)

    server = one(spans, "govgate.v1.OversightService/Approve")
    review_span = one(spans, "govgate.review")
    assert review_span.parent == server.span_id
    assert review_span.attributes["govgate.decision.id"] == d.decision_id
    assert review_span.attributes["govgate.decision.trace_id"] == TRACE  # the proposal's
    assert review_span.attributes["govgate.decision.state"] == "EXECUTED"
    assert review_span.attributes["govgate.review.approve"] is True
    assert [s.name for s in children(spans, review_span)] == [
        "govgate.plan", "govgate.ledger.append", "govgate.execute", "govgate.ledger.append",
    ]  # fmt: skip
    # The decision's records all carry the proposal's trace id, whoever's call wrote them.
    assert [(r.kind, r.trace_id) for r in records] == [
        ("decision", TRACE), ("approval", TRACE), ("outcome", TRACE),
    ]  # fmt: skip


async def test_a_trace_the_engine_did_not_sample_exports_nothing_but_is_recorded(
    tmp_path: Path, provider: Provider, receiver: tuple[Receiver, int]
):
    unsampled = (("traceparent", f"00-{TRACE}-{PARENT}-00"),)  # flags 00: not sampled
    async with traced(tmp_path, provider) as t:
        d = await t.decisions().Propose(propose("r-1", vcpus="4"), metadata=unsampled,
                                        timeout=10)  # fmt: skip
        assert d.state == types_pb2.EXECUTED
        assert await flushed(provider, receiver[0], TRACE) == []  # parent-based sampling
        assert [r.kind for r in await t.records(trace_id=TRACE)] == ["decision", "outcome"]


async def test_with_tracing_off_the_callers_trace_id_is_still_recorded(tmp_path: Path):
    async with traced(tmp_path, NoOpTracerProvider()) as t:
        d = await t.decisions().Propose(propose("r-1", vcpus="4"), metadata=TRACEPARENT,
                                        timeout=10)  # fmt: skip
        assert d.state == types_pb2.EXECUTED
        assert d.trace_id == TRACE
        assert [r.kind for r in await t.records(trace_id=TRACE)] == ["decision", "outcome"]

        d = await t.decisions().Propose(propose("r-2", vcpus="3"), timeout=10)
        assert d.state == types_pb2.EXECUTED
        assert d.trace_id == ""  # no trace to continue, and none started
        assert {r.trace_id for r in await t.records(decision_id=d.decision_id)} == {""}

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await t.decisions().Propose(propose("r-3", runtime="kata"), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- configuration from OTEL_* ----------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The process environment without any OTEL_* variable."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.parametrize(
    ("variables", "names"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp, Console"}, ["otlp", "console"]),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, []),
    ],
)
def test_tracing_is_off_unless_an_exporter_or_an_endpoint_is_named(
    env: pytest.MonkeyPatch, variables: dict[str, str], names: list[str]
):
    for k, v in variables.items():
        env.setenv(k, v)
    assert exporter_names() == names
    provider = setup_tracing(set_global=False)
    assert (provider is None) == (not names)
    if provider is not None:
        provider.shutdown()


def test_sdk_disabled_wins(env: pytest.MonkeyPatch):
    env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    env.setenv("OTEL_SDK_DISABLED", "true")
    assert setup_tracing(set_global=False) is None


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin", "OTEL_TRACES_EXPORTER"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
    ],
)
def test_an_exporter_this_build_lacks_is_refused_by_name(
    env: pytest.MonkeyPatch, variable: str, value: str, named: str
):
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    env.setenv(variable, value)
    with pytest.raises(ConfigError, match=named):
        setup_tracing(set_global=False)


def _export_one(provider: SpanRecorder | None) -> None:
    assert provider is not None
    with provider.get_tracer("test").start_as_current_span("hello"):
        pass
    assert provider.force_flush(10_000)
    provider.shutdown()


def test_otlp_grpc_export_from_the_environment(
    env: pytest.MonkeyPatch, receiver: tuple[Receiver, int]
):
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver[1]}")  # http: insecure
    env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    _export_one(setup_tracing(set_global=False))
    (span,) = receiver[0].spans()
    assert span.name == "hello"
    assert span.resource["service.name"] == "govgate"  # ours, as none was given
    assert span.resource["deployment.environment.name"] == "test"


class _HttpReceiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, body))
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_otlp_http_export_from_the_environment(env: pytest.MonkeyPatch):
    _HttpReceiver.received = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _HttpReceiver)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{httpd.server_port}")
        env.setenv("OTEL_SERVICE_NAME", "govgate-east")
        _export_one(setup_tracing(set_global=False))
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
    ((path, body),) = _HttpReceiver.received
    assert path == "/v1/traces"
    (span,) = _decode(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
    assert span.name == "hello"
    assert span.resource["service.name"] == "govgate-east"  # OTEL_SERVICE_NAME wins


async def test_a_stream_the_caller_cancels_ends_its_span_cancelled(
    tmp_path: Path,
    provider: Provider,
    receiver: tuple[Receiver, int],
    caplog: pytest.LogCaptureFixture,
):
    async with traced(tmp_path, provider) as t:
        await t.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
        d = await t.decisions().Propose(propose("r-1", vcpus="4"), timeout=10)
        watch = t.decisions().WatchDecision(
            decision_pb2.WatchDecisionRequest(decision_id=d.decision_id), metadata=TRACEPARENT
        )
        first = await watch.read()
        assert first.state == types_pb2.PENDING_APPROVAL
        watch.cancel()
        for _ in range(100):  # the server learns of the cancellation asynchronously
            assert await asyncio.to_thread(provider.force_flush, 10_000)
            if receiver[0].spans(TRACE):
                break
            await asyncio.sleep(0.05)
    (server,) = receiver[0].spans(TRACE)
    assert server.name == "govgate.v1.DecisionService/WatchDecision"
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert server.status == STATUS_UNSET
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
