"""The span recorder and its exporter process, against real OTLP receivers on loopback.

:class:`~gateway.spans.SpanRecorder` records spans in this process and exports them from a
child process (:mod:`gateway.span_exporter`). These tests check what reaches a collector:
the same spans, encoded as the SDK's own provider and encoder would encode them (ids
apart), under the SDK's span limits, sampling and exception rules; and what happens when
the child is killed, signalled or stopped, or cannot be started at all.

Each test starts its own recorder (about 0.3 s) and shuts it down in a fixture, so that no
child process outlives the test.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from gateway.config import ConfigError
from gateway.spans import SpanRecorder, use_leaf
from gateway.telemetry import setup_tracing

RESOURCE = Resource(
    {
        "service.name": "govgate-test",
        "service.instance.id": "replica-1",
        "host.cpu.count": 4,
        "deployment.canary": False,
    },
    "https://opentelemetry.io/schemas/1.26.0",
)
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
# The engine's span, in another process: a remote parent.
REMOTE = SpanContext(
    0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, SAMPLED,
    TraceState([("engine", "t61rcWkgMzE")]),
)  # fmt: skip
# A span of another trace that one of ours links to.
LINKED = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, SAMPLED,
    TraceState([("vendor", "linked")]),
)  # fmt: skip
T0 = 1_700_000_000_000_000_000  # explicit times, so that the SDK's spans and ours agree

# OTLP span flags: the parent's remoteness is known (0x100), and it is remote (0x200).
LOCAL_PARENT, REMOTE_PARENT = 0x100, 0x300
SERVER = trace_pb2.Span.SPAN_KIND_SERVER
INTERNAL = trace_pb2.Span.SPAN_KIND_INTERNAL
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
UNSET = trace_pb2.Status.STATUS_CODE_UNSET
ERROR = trace_pb2.Status.STATUS_CODE_ERROR


# -- collectors --------------------------------------------------------------------------------


class Collector:
    """What an OTLP collector on loopback was sent (over gRPC or HTTP)."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.port = 0
        self._lock = threading.Lock()

    def add(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def Export(self, request: ExportTraceServiceRequest, context: Any) -> Any:  # gRPC servicer
        self.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def received(self) -> list[ExportTraceServiceRequest]:
        with self._lock:
            return list(self.requests)

    def spans(self) -> dict[str, trace_pb2.Span]:
        """Every span received, by name (names are unique in these tests)."""
        spans = [s for r in self.received() for rs in r.resource_spans
                 for ss in rs.scope_spans for s in ss.spans]  # fmt: skip
        by_name = {s.name: s for s in spans}
        assert len(by_name) == len(spans), sorted(s.name for s in spans)
        return by_name


@pytest.fixture
def collector() -> Iterator[Collector]:
    """An OTLP/gRPC trace collector on a loopback port."""
    found = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(found, server)  # type: ignore[no-untyped-call]
    found.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield found
    server.stop(None).wait()


@pytest.fixture
def http_collector() -> Iterator[Collector]:
    """An OTLP/HTTP (protobuf) trace collector on a loopback port."""
    found = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert self.path == "/v1/traces"
            found.add(ExportTraceServiceRequest.FromString(body))
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found.port = httpd.server_port
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield found
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The process environment without any OTEL_* variable (the child inherits it)."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


Start = Callable[..., SpanRecorder]


@pytest.fixture
def start(env: pytest.MonkeyPatch, collector: Collector) -> Iterator[Start]:
    """``start(kind="otlp-grpc", **variables)``: a recorder exporting to the gRPC ``collector``
    (or, for another kind, wherever ``variables`` say), with ``variables`` (``OTEL_*``) set
    in the environment first; every one made is shut down after the test."""
    made: list[SpanRecorder] = []

    def make(kind: str = "otlp-grpc", **variables: str) -> SpanRecorder:
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.port}")
        for name, value in variables.items():
            env.setenv(name, value)
        recorder = SpanRecorder([kind], RESOURCE)
        made.append(recorder)
        return recorder

    yield make
    for recorder in made:
        recorder.shutdown(5_000)


def flushed(recorder: SpanRecorder, collector: Collector) -> dict[str, trace_pb2.Span]:
    assert recorder.force_flush(10_000)
    return collector.spans()


def attributes(kvs: Any) -> dict[str, Any]:
    """OTLP ``KeyValue``s as a dict of plain values (arrays as lists)."""
    return {kv.key: _plain(kv.value) for kv in kvs}


def _plain(value: Any) -> Any:
    field = value.WhichOneof("value")
    if field == "array_value":
        return [_plain(v) for v in value.array_value.values]
    return getattr(value, field) if field else None


def _children() -> set[int]:
    """This process's child processes, zombies included."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        if int(stat.rpartition(")")[2].split()[1]) == os.getpid():
            found.add(int(entry.name))
    return found


# -- the same spans as the SDK's ---------------------------------------------------------------

ATTRIBUTES: dict[str, Any] = {
    "str": "text",
    "bool": True,
    "int": 42,
    "float": 0.25,
    "bytes": b"\x00\xff",
    "strs": ["a", "b"],
    "ints": [1, 2, 3],
    "bools": [True, False],
    "floats": [1.5, -2.0],
}


def scenario(provider: trace.TracerProvider) -> None:
    """Spans of every kind, attribute type, event, link and status, with fixed times: a
    SERVER span under a remote parent with an INTERNAL child and a CLIENT grandchild, and
    a local root with a child in a second instrumentation scope."""
    tracer = provider.get_tracer("govgate.test", "1.2.3", "https://opentelemetry.io/schemas/1.21.0")
    server = tracer.start_span(
        "server", trace.set_span_in_context(NonRecordingSpan(REMOTE)), SpanKind.SERVER,
        attributes=ATTRIBUTES, links=[Link(LINKED, {"link.kind": "follows", "n": 1})],
        start_time=T0,
    )  # fmt: skip
    internal = tracer.start_span("internal", trace.set_span_in_context(server), start_time=T0 + 10)
    internal.add_event(
        "retry", {"attempt": 2, "ok": False, "delay": 0.5, "why": "busy", "tags": ["x", "y"]},
        timestamp=T0 + 20,
    )  # fmt: skip
    internal.add_event("gave up", timestamp=T0 + 25)
    internal.set_status(Status(StatusCode.ERROR, "disk full"))
    client = tracer.start_span(
        "client", trace.set_span_in_context(internal), SpanKind.CLIENT, start_time=T0 + 30
    )
    client.set_attribute("peer.service", "ledger")
    client.add_link(LINKED, {"why": "batch"})
    client.end(T0 + 40)
    internal.end(T0 + 50)
    server.set_attributes({"late": 7, "str": "replaced"})
    server.end(T0 + 60)

    other = provider.get_tracer("govgate.other")
    root = other.start_span("root", start_time=T0 + 70)
    child = other.start_span("child", trace.set_span_in_context(root), start_time=T0 + 80)
    child.set_status(StatusCode.OK)
    child.end(T0 + 90)
    root.end(T0 + 100)


def sdk_request(run: Callable[[trace.TracerProvider], None]) -> ExportTraceServiceRequest:
    """What the SDK's own provider and OTLP encoder make of ``run`` (span limits and all
    from the same ``OTEL_*`` variables)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(ParentBased(ALWAYS_ON), RESOURCE, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    run(provider)
    provider.shutdown()
    return encode_spans(exporter.get_finished_spans())


def comparable(requests: list[ExportTraceServiceRequest]) -> list[dict[str, Any]]:
    """Every span of ``requests`` as a dict with its resource and scope, sorted by name,
    with the ids made here replaced by names: a span's id by its name, a trace's by the
    first name in it. Ids from elsewhere (the remote parent, linked spans) stay as hex."""
    rows = [(rs, ss, s) for r in requests for rs in r.resource_spans
            for ss in rs.scope_spans for s in ss.spans]  # fmt: skip
    names = {s.span_id: s.name for _, _, s in rows}
    traces: dict[bytes, str] = {}
    for _, _, s in sorted(rows, key=lambda row: row[2].name):
        traces.setdefault(s.trace_id, f"trace of {s.name}")
    out = []
    for rs, ss, s in rows:
        span = MessageToDict(s, preserving_proto_field_name=True)
        span["trace_id"] = traces[s.trace_id]
        span["span_id"] = names[s.span_id]
        if s.parent_span_id:
            span["parent_span_id"] = names.get(s.parent_span_id, s.parent_span_id.hex())
        for link, pb in zip(span.get("links", []), s.links, strict=True):
            link["trace_id"] = traces.get(pb.trace_id, pb.trace_id.hex())
            link["span_id"] = names.get(pb.span_id, pb.span_id.hex())
            link.pop("trace_state", None)  # the SDK's encoder leaves it out; checked apart
        if span.get("status") == {}:  # the SDK sends an empty status, we none: both UNSET
            del span["status"]
        for item in [span, *span.get("events", []), *span.get("links", [])]:
            if "attributes" in item:  # a map in OTLP: its order means nothing
                item["attributes"].sort(key=lambda kv: kv["key"])
        out.append({
            "resource": MessageToDict(rs.resource), "resource_schema_url": rs.schema_url,
            "scope": MessageToDict(ss.scope), "scope_schema_url": ss.schema_url, "span": span,
        })  # fmt: skip
    return sorted(out, key=lambda row: str(row["span"]["name"]))


@pytest.mark.parametrize("kind", ["otlp-grpc", "otlp-http"])
def test_exported_spans_are_what_the_sdk_would_export(
    start: Start, collector: Collector, http_collector: Collector, kind: str
) -> None:
    if kind == "otlp-http":
        endpoint = f"http://127.0.0.1:{http_collector.port}"
        recorder = start(kind, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                         OTEL_EXPORTER_OTLP_ENDPOINT=endpoint)  # fmt: skip
        collector = http_collector
    else:
        recorder = start(kind)
    scenario(recorder)
    spans = flushed(recorder, collector)

    # What the scenario asked for, checked here and not only against the SDK.
    assert sorted(spans) == ["child", "client", "internal", "root", "server"]
    server, internal, client = spans["server"], spans["internal"], spans["client"]
    root, child = spans["root"], spans["child"]
    assert server.trace_id == REMOTE.trace_id.to_bytes(16, "big")
    assert server.parent_span_id == REMOTE.span_id.to_bytes(8, "big")
    assert server.trace_state == "engine=t61rcWkgMzE"
    assert server.flags == REMOTE_PARENT
    assert (internal.parent_span_id, internal.trace_id) == (server.span_id, server.trace_id)
    assert (client.parent_span_id, client.trace_id) == (internal.span_id, server.trace_id)
    assert internal.flags == client.flags == LOCAL_PARENT
    assert root.parent_span_id == b""
    assert root.flags == LOCAL_PARENT
    assert root.trace_id != server.trace_id
    assert len({s.span_id for s in spans.values()}) == 5
    assert (child.trace_id, child.parent_span_id) == (root.trace_id, root.span_id)
    assert [server.kind, internal.kind, client.kind, root.kind] == [SERVER, INTERNAL, CLIENT,
                                                                    INTERNAL]  # fmt: skip
    assert attributes(server.attributes) == {
        **ATTRIBUTES, "str": "replaced", "late": 7,
    }  # fmt: skip
    types = {k: type(v) for k, v in attributes(server.attributes).items()}
    assert types == {
        "str": str, "bool": bool, "int": int, "float": float, "bytes": bytes,
        "strs": list, "ints": list, "bools": list, "floats": list, "late": int,
    }  # fmt: skip
    assert (server.start_time_unix_nano, server.end_time_unix_nano) == (T0, T0 + 60)
    (link,) = server.links
    assert (link.trace_id, link.span_id) == (LINKED.trace_id.to_bytes(16, "big"),
                                             LINKED.span_id.to_bytes(8, "big"))  # fmt: skip
    assert attributes(link.attributes) == {"link.kind": "follows", "n": 1}
    assert link.flags == REMOTE_PARENT
    if kind == "otlp-grpc":  # the SDK's encoder (used for HTTP) does not send a link's state
        assert link.trace_state == "vendor=linked"
    assert [(e.name, e.time_unix_nano) for e in internal.events] == [
        ("retry", T0 + 20), ("gave up", T0 + 25),
    ]  # fmt: skip
    assert attributes(internal.events[0].attributes) == {
        "attempt": 2, "ok": False, "delay": 0.5, "why": "busy", "tags": ["x", "y"],
    }  # fmt: skip
    assert (internal.status.code, internal.status.message) == (ERROR, "disk full")
    assert child.status.code == trace_pb2.Status.STATUS_CODE_OK
    assert server.status.code == UNSET
    (request, *_) = collector.received()
    assert attributes(request.resource_spans[0].resource.attributes) == dict(RESOURCE.attributes)
    scopes = {(ss.scope.name, ss.scope.version, ss.schema_url)
              for r in collector.received() for ss in r.resource_spans[0].scope_spans}  # fmt: skip
    assert scopes == {
        ("govgate.test", "1.2.3", "https://opentelemetry.io/schemas/1.21.0"),
        ("govgate.other", "", ""),
    }

    # And everything, field by field, as the SDK encodes the same spans.
    assert comparable(collector.received()) == comparable([sdk_request(scenario)])


def test_tracer_attributes_are_the_scopes_attributes(start: Start, collector: Collector) -> None:
    def run(provider: trace.TracerProvider) -> None:
        tracer = provider.get_tracer("govgate.test", "1.0", attributes={"team": "ops", "n": 2})
        tracer.start_span("scoped", start_time=T0).end(T0 + 1)

    recorder = start()
    run(recorder)
    flushed(recorder, collector)
    (request,) = collector.received()
    (scope_spans,) = request.resource_spans[0].scope_spans
    assert attributes(scope_spans.scope.attributes) == {"team": "ops", "n": 2}
    assert comparable(collector.received()) == comparable([sdk_request(run)])


class Level(enum.IntEnum):
    HIGH = 3


class Color(str, enum.Enum):  # noqa: UP042 - its str() is "Color.RED", unlike a StrEnum's
    RED = "red"


def test_values_marshal_cannot_carry_are_sent_as_plain_values(
    start: Start, collector: Collector
) -> None:
    recorder = start()
    tracer = recorder.get_tracer("test")
    with tracer.start_span("before", attributes={"n": 1}):
        pass
    odd_values: dict[str, Any] = {"path": Path("/var/lib/govgate")}  # not an AttributeValue
    with tracer.start_span("odd", attributes=odd_values) as span:
        span.set_attribute("level", Level.HIGH)
        span.set_attribute("color", Color.RED)
        span.set_attribute("levels", [Level.HIGH, 4])
        span.set_attribute("fine", "as is")
        moved: dict[str, Any] = {"to": Path("/srv"), "level": Level.HIGH}
        span.add_event("moved", moved)
        span.add_link(LINKED, {"color": Color.RED})
    with tracer.start_span("after", attributes={"n": 2}):
        pass
    spans = flushed(recorder, collector)

    assert sorted(spans) == ["after", "before", "odd"]  # none of the batch is lost
    odd = spans["odd"]
    values = attributes(odd.attributes)
    assert values == {
        "path": "/var/lib/govgate", "level": 3, "color": "red", "levels": [3, 4], "fine": "as is",
    }  # fmt: skip
    assert type(values["level"]) is int  # an int in OTLP, not the enum's str()
    assert attributes(odd.events[0].attributes) == {"to": "/srv", "level": 3}
    assert attributes(odd.links[0].attributes) == {"color": "red"}
    assert attributes(spans["after"].attributes) == {"n": 2}


def test_a_span_named_by_a_str_enum_keeps_the_enums_value(
    start: Start, collector: Collector
) -> None:
    """A ``str`` subclass is a ``str``: the SDK exports ``Color.RED`` as ``"red"``."""
    recorder = start()
    tracer = recorder.get_tracer("test")
    with tracer.start_span(Color.RED) as span:
        span.add_event(Color.RED)
    spans = flushed(recorder, collector)
    assert sorted(spans) == ["red"]
    assert [e.name for e in spans["red"].events] == ["red"]


def test_a_status_description_marshal_cannot_carry_does_not_break_export(
    start: Start, collector: Collector
) -> None:
    recorder = start()
    tracer = recorder.get_tracer("test")
    with tracer.start_span("good-1"):
        pass
    with tracer.start_span("failed") as span:
        span.set_status(StatusCode.ERROR, Color.RED)  # a str, as the API asks
    with tracer.start_span("good-2"):
        pass
    spans = flushed(recorder, collector)  # neither raises nor loses the batch
    assert sorted(spans) == ["failed", "good-1", "good-2"]
    assert (spans["failed"].status.code, spans["failed"].status.message) == (ERROR, "red")


def test_a_span_the_exporter_cannot_encode_does_not_stop_later_exports(
    start: Start, collector: Collector
) -> None:
    """A file name that is not UTF-8 decodes to lone surrogates (``os.fsdecode``), which
    protobuf refuses: the SDK drops that one attribute, logging why."""
    recorder = start()
    tracer = recorder.get_tracer("test")
    with tracer.start_span("undecodable") as span:
        span.set_attribute("file.path", os.fsdecode(b"/srv/caf\xe9"))
    assert recorder.force_flush(10_000)
    with tracer.start_span("later"):
        pass
    assert recorder.force_flush(10_000)
    assert "later" in collector.spans()
    assert recorder.dropped == 0


# -- span limits -------------------------------------------------------------------------------

LIMITS = {
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "2",
    "OTEL_SPAN_EVENT_COUNT_LIMIT": "2",
    "OTEL_SPAN_LINK_COUNT_LIMIT": "1",
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT": "1",
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "4",
}


def limited(provider: trace.TracerProvider) -> None:
    tracer = provider.get_tracer("test")
    other = SpanContext(LINKED.trace_id, LINKED.span_id + 1, True, SAMPLED)
    span = tracer.start_span(
        "limited", attributes={"a": 1, "b": "bbbbbbbb"}, links=[Link(LINKED), Link(other)],
        start_time=T0,
    )  # fmt: skip
    span.set_attribute("c", "cccccccc")
    span.set_attribute("d", ["dddddddd", "dd", "ddddd"])
    for i in range(3):
        span.add_event(f"e{i}", {"x": "long event value", "y": i}, timestamp=T0 + 1 + i)
    span.end(T0 + 10)


@pytest.mark.parametrize("kind", ["otlp-grpc", "otlp-http"])
def test_span_limits_keep_the_latest_and_count_the_rest(
    start: Start, collector: Collector, http_collector: Collector, kind: str
) -> None:
    if kind == "otlp-http":
        recorder = start(kind, OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                         OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{http_collector.port}",
                         **LIMITS)  # fmt: skip
        collector = http_collector
    else:
        recorder = start(kind, **LIMITS)
    limited(recorder)
    span = flushed(recorder, collector)["limited"]

    assert attributes(span.attributes) == {"c": "cccc", "d": ["dddd", "dd", "dddd"]}
    assert span.dropped_attributes_count == 2
    assert [e.name for e in span.events] == ["e1", "e2"]
    assert span.dropped_events_count == 1
    # The value length limit is for span attributes; events have OTEL_ATTRIBUTE_VALUE_...
    assert [attributes(e.attributes) for e in span.events] == [{"y": 1}, {"y": 2}]
    assert [e.dropped_attributes_count for e in span.events] == [1, 1]
    assert [lk.span_id for lk in span.links] == [(LINKED.span_id + 1).to_bytes(8, "big")]
    assert span.dropped_links_count == 1
    assert comparable(collector.received()) == comparable([sdk_request(limited)])


def test_an_attribute_set_again_counts_as_the_latest(start: Start, collector: Collector) -> None:
    """Setting a key again makes it the newest, as the SDK keeps attributes: over the count
    limit, the oldest *other* attribute is the one dropped."""

    def run(provider: trace.TracerProvider) -> None:
        span = provider.get_tracer("test").start_span("again", start_time=T0)
        for key, value in [("a", 1), ("b", 2), ("c", 3), ("a", 4)]:
            span.set_attribute(key, value)
        span.end(T0 + 1)

    recorder = start(OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT="2")
    run(recorder)
    span = flushed(recorder, collector)["again"]
    assert attributes(span.attributes) == {"c": 3, "a": 4}  # a=4 was set last
    # One attribute (b) is not exported. The SDK counts 2: it also counts a=1, evicted
    # before a was set again; the recorder counts what the export leaves out.
    assert span.dropped_attributes_count == 1
    ours, sdk = comparable(collector.received()), comparable([sdk_request(run)])
    assert sdk[0]["span"].pop("dropped_attributes_count") == 2
    assert ours[0]["span"].pop("dropped_attributes_count") == 1
    assert ours == sdk


# -- exceptions --------------------------------------------------------------------------------


def test_an_error_that_may_echo_a_request_leaves_only_its_type_in_the_trace(
    start: Start, collector: Collector
) -> None:
    """The spans never carry an action's parameters; a domain error's text may."""
    from adapters.errors import InvalidActionError

    recorder = start()
    tracer = recorder.get_tracer("test")
    secret = "snapshot 's3cr3t-token-in-param' does not exist"
    with pytest.raises(InvalidActionError), tracer.start_as_current_span("plan"):
        raise InvalidActionError(secret, field="action.parameters.snapshot")
    with tracer.start_as_current_span("handled") as span:
        span.record_exception(InvalidActionError(secret))
    spans = flushed(recorder, collector)
    assert spans["plan"].status.message == "InvalidActionError"
    for name in ("plan", "handled"):
        (event,) = spans[name].events
        values = attributes(event.attributes)
        assert values["exception.message"] == "InvalidActionError"
        assert "exception.stacktrace" not in values
        assert "s3cr3t" not in repr(values)


@pytest.mark.parametrize("form", ["start_span", "start_as_current_span"])
def test_an_exception_leaving_the_block_is_recorded_as_the_sdk_does(
    start: Start, collector: Collector, form: str
) -> None:
    recorder = start()
    tracer = recorder.get_tracer("test")
    begin = getattr(tracer, form)

    def fail(name: str, err: BaseException, **options: bool) -> None:
        with pytest.raises(type(err)), begin(name, **options):
            raise err

    fail("raised", ValueError("bad input"))
    fail("cancelled", asyncio.CancelledError())
    fail("no event", ValueError("quiet"), record_exception=False)
    fail("no status", ValueError("kept ok"), set_status_on_exception=False)
    spans = flushed(recorder, collector)

    raised = spans["raised"]
    assert (raised.status.code, raised.status.message) == (ERROR, "ValueError: bad input")
    (event,) = raised.events
    assert event.name == "exception"
    assert raised.start_time_unix_nano <= event.time_unix_nano <= raised.end_time_unix_nano
    values = attributes(event.attributes)
    assert values["exception.type"] == "ValueError"
    assert values["exception.message"] == "bad input"
    trace_text = values["exception.stacktrace"]
    assert trace_text.startswith("Traceback (most recent call last):")
    assert "in fail" in trace_text
    assert trace_text.rstrip().endswith("ValueError: bad input")

    # A cancellation is not an error (as the API's use_span has it).
    assert (spans["cancelled"].status.code, list(spans["cancelled"].events)) == (UNSET, [])
    assert spans["no event"].status.code == ERROR
    assert list(spans["no event"].events) == []
    assert spans["no status"].status.code == UNSET
    assert [e.name for e in spans["no status"].events] == ["exception"]


# -- sampling and context ----------------------------------------------------------------------


def test_a_zero_ratio_sampler_records_and_exports_nothing(
    start: Start, collector: Collector
) -> None:
    recorder = start(OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="0")
    tracer = recorder.get_tracer("test")
    with tracer.start_as_current_span("root") as root:
        assert not root.is_recording()
        assert not root.get_span_context().trace_flags.sampled
        child = tracer.start_span("child")
        assert not child.is_recording()
        assert child.get_span_context().trace_id == root.get_span_context().trace_id
        child.set_attribute("ignored", True)
        child.end()
    assert recorder.force_flush(10_000)
    assert collector.received() == []
    assert recorder.dropped == 0


def test_sampling_follows_the_parent(start: Start, collector: Collector) -> None:
    recorder = start()  # the default sampler: parentbased_always_on
    tracer = recorder.get_tracer("test")
    unsampled = SpanContext(REMOTE.trace_id, REMOTE.span_id, True, TraceFlags(TraceFlags.DEFAULT))
    with tracer.start_as_current_span(
        "engine did not sample", trace.set_span_in_context(NonRecordingSpan(unsampled))
    ) as span:
        assert not span.is_recording()
        assert span.get_span_context().trace_id == REMOTE.trace_id
        assert not span.get_span_context().trace_flags.sampled
        assert not tracer.start_span("nor its child").is_recording()

    with tracer.start_as_current_span("recorded") as parent:
        assert parent.is_recording()
        assert parent.get_span_context().trace_flags.sampled
        with tracer.start_as_current_span("child") as child:
            assert child.is_recording()
            grandchild = tracer.start_span("grandchild")
            assert grandchild.is_recording()
            grandchild.end()
        assert child.get_span_context().trace_id == parent.get_span_context().trace_id
    spans = flushed(recorder, collector)

    assert sorted(spans) == ["child", "grandchild", "recorded"]
    assert len({s.trace_id for s in spans.values()}) == 1
    assert spans["child"].parent_span_id == spans["recorded"].span_id
    assert spans["grandchild"].parent_span_id == spans["child"].span_id
    assert spans["recorded"].trace_id == parent.get_span_context().trace_id.to_bytes(16, "big")


def test_start_as_current_span_is_current_in_its_block_only(
    start: Start, collector: Collector
) -> None:
    recorder = start()
    tracer = recorder.get_tracer("test")
    before = trace.get_current_span()
    with tracer.start_as_current_span("outer") as outer:
        assert trace.get_current_span() is outer
        detached = tracer.start_span("detached")
        assert trace.get_current_span() is outer  # start_span does not make it current
        with tracer.start_as_current_span("inner") as inner:
            assert trace.get_current_span() is inner
        assert trace.get_current_span() is outer
        assert not inner.is_recording()  # ended on leaving its block
        with tracer.start_as_current_span("kept open", end_on_exit=False) as kept:
            pass
        assert kept.is_recording()
        kept.end()
        detached.end()
    assert trace.get_current_span() is before
    spans = flushed(recorder, collector)

    assert sorted(spans) == ["detached", "inner", "kept open", "outer"]
    for name in ("detached", "inner", "kept open"):
        assert spans[name].parent_span_id == spans["outer"].span_id


def test_start_as_current_span_decorates_with_a_span_per_call(
    start: Start, collector: Collector
) -> None:
    """As the API's: ``@tracer.start_as_current_span(...)`` on a function, plain or async."""
    recorder = start()
    tracer = recorder.get_tracer("test")

    @tracer.start_as_current_span("work")
    def work(x: int) -> trace.Span:
        return trace.get_current_span()

    @tracer.start_as_current_span("async work")
    async def async_work() -> trace.Span:
        await asyncio.sleep(0)
        return trace.get_current_span()

    first, second = work(1), work(2)
    third = asyncio.run(async_work())
    assert first is not second  # each call its own span, current while it runs
    assert first.get_span_context().span_id != second.get_span_context().span_id
    assert not any(s.is_recording() for s in (first, second, third))  # ended after the call
    assert work.__name__ == "work"
    assert trace.get_current_span() is trace.INVALID_SPAN
    assert recorder.force_flush(10_000)
    names = [s.name for r in collector.received() for rs in r.resource_spans
             for ss in rs.scope_spans for s in ss.spans]  # fmt: skip
    assert sorted(names) == ["async work", "work", "work"]


def test_a_leaf_is_the_span_start_span_makes_under_its_parent(
    start: Start, collector: Collector
) -> None:
    """The cheap path the pipeline's stages take gives what ``start_span`` gives."""
    recorder = start()
    engine = trace.set_span_in_context(NonRecordingSpan(REMOTE))
    server = recorder.get_tracer("server").start_span("server", engine, SpanKind.SERVER)
    tracer = recorder.get_tracer("stages", "2.0")
    with trace.use_span(server, end_on_exit=False):
        plain = tracer.start_span("plain")
        leaf = tracer.start_leaf(server, "leaf")
        assert leaf is not None
        assert leaf.is_recording()
        assert trace.get_current_span() is server  # started, not made current
        for span in (plain, leaf):
            span.set_attributes({"govgate.ledger.kind": "decision", "govgate.ledger.index": 7})
            span.add_event("checked", {"n": 1})
            with pytest.raises(ValueError, match="disk full"), span:
                raise ValueError("disk full")
    server.end()
    spans = flushed(recorder, collector)

    def fields(s: trace_pb2.Span) -> dict[str, Any]:
        out = MessageToDict(s, preserving_proto_field_name=True)
        for key in ("name", "span_id", "start_time_unix_nano", "end_time_unix_nano"):
            out.pop(key)
        for event in out["events"]:
            event.pop("time_unix_nano")
            event["attributes"] = [a for a in event["attributes"]  # stack traces differ
                                   if a["key"] != "exception.stacktrace"]  # fmt: skip
        return out

    assert fields(spans["leaf"]) == fields(spans["plain"])
    assert spans["leaf"].parent_span_id == spans["server"].span_id
    assert spans["leaf"].trace_id == REMOTE.trace_id.to_bytes(16, "big")
    assert spans["leaf"].trace_state == spans["server"].trace_state == "engine=t61rcWkgMzE"
    assert (spans["leaf"].kind, spans["leaf"].flags) == (INTERNAL, LOCAL_PARENT)
    assert spans["leaf"].status.message == "ValueError: disk full"
    assert spans["leaf"].span_id not in (spans["plain"].span_id, spans["server"].span_id)
    scopes = {s.name: ss.scope for r in collector.received() for rs in r.resource_spans
              for ss in rs.scope_spans for s in ss.spans}  # fmt: skip
    assert (scopes["leaf"].name, scopes["leaf"].version) == ("stages", "2.0")


def test_start_leaf_declines_a_parent_it_cannot_continue(start: Start) -> None:
    """None, so that the caller takes ``start_span``'s way: a span of another recorder, an
    ended span, and spans that are not recorded."""
    recorder, other = start(), start()
    tracer = recorder.get_tracer("test")
    foreign = other.get_tracer("test").start_span("foreign")
    ended = tracer.start_span("ended")
    ended.end()
    sdk = TracerProvider(shutdown_on_exit=False).get_tracer("test").start_span("sdk")
    for parent in (foreign, ended, sdk, NonRecordingSpan(REMOTE), trace.INVALID_SPAN):
        assert tracer.start_leaf(parent, "child") is None, parent
    foreign.end()
    sdk.end()


def test_use_leaf_makes_the_leaf_current_in_its_block_and_ends_it(
    start: Start, collector: Collector
) -> None:
    recorder = start()
    tracer = recorder.get_tracer("test")
    with tracer.start_as_current_span("decide") as parent:
        leaf = tracer.start_leaf(parent, "stage")
        assert leaf is not None
        seen: list[trace.Span] = []

        def stage() -> None:
            with use_leaf(leaf) as current:
                seen.extend((current, trace.get_current_span()))
                child = tracer.start_leaf(trace.get_current_span(), "under the stage")
                assert child is not None
                child.end()
                raise KeyError("gone")

        with pytest.raises(KeyError, match="gone"):
            stage()
        assert seen == [leaf, leaf]
        assert trace.get_current_span() is parent
        assert not leaf.is_recording()
        with pytest.raises(TypeError):
            use_leaf(leaf)(lambda: None)  # as a decorator it would reuse one span
    spans = flushed(recorder, collector)

    assert spans["under the stage"].parent_span_id == spans["stage"].span_id
    assert spans["stage"].parent_span_id == spans["decide"].span_id
    assert spans["stage"].status.code == ERROR
    (event,) = spans["stage"].events
    assert attributes(event.attributes)["exception.escaped"] == "False"  # as start_as_current


# -- faults ------------------------------------------------------------------------------------


def test_a_killed_exporter_process_drops_spans_without_raising(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = start()
    tracer = recorder.get_tracer("test")
    process = recorder._proc
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with caplog.at_level(logging.WARNING, logger="gateway.spans"):
        for i in range(5):
            with tracer.start_as_current_span(f"lost-{i}"):
                pass
        assert not recorder.force_flush(5_000)
        before = recorder.dropped
        for i in range(5):
            tracer.start_span(f"lost-later-{i}").end()
        assert recorder.dropped == before + 5
        assert not recorder.force_flush(5_000)
        recorder.shutdown(5_000)
    assert any(
        r.name == "gateway.spans" and r.levelno == logging.WARNING
        and "span export stopped" in r.getMessage()
        for r in caplog.records
    )  # fmt: skip


def test_spans_lost_with_the_exporter_process_are_all_counted(start: Start) -> None:
    """``dropped`` counts the spans lost to a dead exporter process: those queued when its
    death was found as well as those ended after."""
    recorder = start()
    tracer = recorder.get_tracer("test")
    os.kill(recorder._proc.pid, signal.SIGKILL)
    recorder._proc.wait()
    for i in range(10):
        tracer.start_span(f"lost-{i}").end()
    assert not recorder.force_flush(5_000)
    assert recorder.dropped == 10


def test_the_exporter_process_ignores_sigterm_and_sigint(
    start: Start, collector: Collector
) -> None:
    recorder = start()
    tracer = recorder.get_tracer("test")
    with tracer.start_span("before"):
        pass
    os.kill(recorder._proc.pid, signal.SIGTERM)
    os.kill(recorder._proc.pid, signal.SIGINT)
    with tracer.start_span("after"):
        pass
    assert sorted(flushed(recorder, collector)) == ["after", "before"]
    assert recorder._proc.poll() is None
    assert recorder.dropped == 0


def test_a_stopped_exporter_process_never_blocks_the_caller(
    start: Start, collector: Collector
) -> None:
    recorder = start(OTEL_BSP_MAX_QUEUE_SIZE="8")
    tracer = recorder.get_tracer("test")
    # Distinct 4 kB values (marshal writes a repeated object once): two frames fill the
    # pipe, and the shipping thread waits on it, as on an exporter that is stuck.
    pid = recorder._proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        ended = 0
        for i in range(2000):
            with tracer.start_span(f"stopped-{i}", attributes={"v": f"{i:06}".ljust(4096)}):
                pass
            ended += 1
        assert ended == 2000
        assert recorder.dropped > 0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert recorder.force_flush(10_000)
    with tracer.start_span("after"):
        pass
    assert recorder.force_flush(10_000)
    assert "after" in collector.spans()
    assert recorder._proc.poll() is None


def test_shutdown_exports_everything_queued_and_stops_the_process(
    start: Start, collector: Collector
) -> None:
    recorder = start()
    tracer = recorder.get_tracer("test")
    names = [f"span-{i}" for i in range(1000)]
    for name in names:
        tracer.start_span(name).end()
    recorder.shutdown()  # no force_flush before
    assert sorted(collector.spans()) == sorted(names)
    assert recorder._proc.returncode == 0
    assert recorder.dropped == 0

    recorder.shutdown()  # again: nothing to do
    assert recorder._proc.returncode == 0
    tracer.start_span("late").end()  # after shutdown: dropped, never raises
    assert recorder.dropped == 1
    assert not recorder.force_flush(1_000)
    assert len(collector.spans()) == 1000


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OTEL_EXPORTER_OTLP_TIMEOUT", "abc"), ("OTEL_EXPORTER_OTLP_COMPRESSION", "bogus")],
)
def test_an_exporter_that_cannot_be_made_is_a_config_error(
    env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    env.setenv(variable, value)
    before = _children()
    with pytest.raises(ConfigError, match=f"span exporter .*{value}"):
        setup_tracing(set_global=False)
    assert _children() == before  # the child was reaped, not left running or a zombie


# -- the console exporter ----------------------------------------------------------------------


def test_console_export_writes_the_spans_to_standard_output(
    start: Start, capfd: pytest.CaptureFixture[str]
) -> None:
    recorder = start("console")
    with recorder.get_tracer("test").start_span("hello", attributes={"n": 1, "s": "x"}) as span:
        span.add_event("step", {"ok": True})
    assert recorder.force_flush(10_000)
    assert recorder.force_flush(10_000)  # the replies are still understood
    recorder.shutdown(5_000)
    assert recorder._proc.returncode == 0

    out = capfd.readouterr().out
    decoder, spans, at = json.JSONDecoder(), [], 0
    while out[at:].strip():
        at += len(out[at:]) - len(out[at:].lstrip())
        span_json, at = decoder.raw_decode(out, at)
        spans.append(span_json)
    (hello,) = spans
    assert hello["name"] == "hello"
    assert hello["attributes"] == {"n": 1, "s": "x"}
    assert [(e["name"], e["attributes"]) for e in hello["events"]] == [("step", {"ok": True})]
    assert hello["resource"]["attributes"]["service.name"] == "govgate-test"


def test_the_exporter_keeps_a_bounded_number_of_tracestates():
    """Some tracers put a per-request value in tracestate: one parsed state per distinct
    header, kept for good, grew the exporter process without bound."""
    from opentelemetry.sdk.trace import SpanLimits

    from gateway import span_exporter

    spans = span_exporter._Spans(None, Resource.create({}), SpanLimits())  # type: ignore[arg-type]
    for i in range(5 * span_exporter._MAX_STATES):
        state = spans._state(f"dd=s:1;p:{i:016x}")
        assert state.get("dd") == f"s:1;p:{i:016x}"
        assert len(spans._states) <= span_exporter._MAX_STATES + 1
    assert spans._state("") == spans._state("")
