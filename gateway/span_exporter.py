"""The span exporter process of :class:`gateway.spans.SpanRecorder`.

``python -m gateway.span_exporter FD`` reads frames from standard input, each a 4-byte
little-endian length and a :mod:`marshal` tuple, and answers requests on the pipe whose
write end is file descriptor ``FD``, the same way, as ``(seq, ok, message)``. Standard
output and error are the gateway's (the console exporter writes to the first):

* ``("start", settings, seq)`` first: the exporter kinds, the resource's attributes and
  schema URL, and the log format. The answer says whether the exporters could be made;
* ``("spans", [span, ...])``: ended spans, as :meth:`RecordedSpan.end
  <gateway.spans.RecordedSpan.end>` queues them; no answer;
* ``("flush", timeout_millis, seq)``: export everything received so far;
* ``("shutdown", timeout_millis, seq)``: the same, then stop the exporters and exit.

End of input (the gateway has gone) shuts the exporters down too. SIGINT and SIGTERM are
ignored: the gateway decides when its spans have been flushed.

Two ways out, both applying the SDK's span limits (``OTEL_SPAN_*``, ``OTEL_ATTRIBUTE_*``;
like the SDK, a span over a limit keeps its latest attributes, events and links and
counts the rest as dropped):

* **OTLP/gRPC** (the default protocol): each frame is written straight in protobuf's
  wire format as one OTLP ``ExportTraceServiceRequest`` (:mod:`gateway.otlp_wire`; about
  2 µs a span, where the SDK's encoder, which first needs a ``ReadableSpan`` per span,
  took about 40) and sent, as those bytes, by the SDK's own gRPC exporter, so
  that its endpoint, headers, TLS, compression, timeout and retries are configured by
  the usual ``OTEL_EXPORTER_OTLP_*`` variables (only its stub is ours: one that sends
  bytes without parsing them into a message and serialising it again). A thread sends
  the requests in order; the spans waiting are bounded by ``OTEL_BSP_MAX_QUEUE_SIZE``.
* **OTLP/HTTP and console**: each span is rebuilt as the SDK's ``ReadableSpan`` and
  handed to the SDK's ``BatchSpanProcessor`` and exporter.
"""

from __future__ import annotations

import collections
import logging
import marshal
import signal
import sys
import threading
import time
from typing import Any, NamedTuple, Protocol

import grpc
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from gateway import logs
from gateway.otlp_wire import request_bytes
from gateway.spans import HEADER, Scope

LOG = logging.getLogger(__name__)


class _Way(Protocol):
    def take(self, spans: list[tuple[Any, ...]]) -> None: ...
    def flush(self, timeout_millis: int) -> bool: ...
    def shutdown(self, timeout_millis: int) -> None: ...


# -- OTLP/gRPC: requests encoded here --------------------------------------------------------


_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class _Encoded(NamedTuple):
    """An ``ExportTraceServiceRequest`` already serialised, and how many spans it holds."""

    body: bytes
    spans: int


class _BytesStub:
    """``TraceService``'s client, sending requests that are already bytes as they are."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.Export = channel.unary_unary(
            _EXPORT, request_serializer=None,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )  # fmt: skip


class _RequestExporter(OTLPSpanExporter):
    """The SDK's OTLP/gRPC span exporter (its channel, headers, timeout, compression and
    retries), given requests already encoded: they are sent as they are, not parsed into a
    message for the SDK's stub to serialise again."""

    def _initialize_channel_and_stub(self) -> None:  # the SDK's, also on reconnection
        super()._initialize_channel_and_stub()  # type: ignore[no-untyped-call]
        self._client = _BytesStub(self._channel)  # type: ignore[assignment]

    def _translate_data(self, data: Any) -> Any:
        encoded: _Encoded = data
        return encoded.body

    def _count_data(self, data: Any) -> int:
        encoded: _Encoded = data
        return encoded.spans


_warned_at = 0.0
_lost = 0


def _dropped(why: str, count: int = 1) -> None:
    """Count spans lost here and say so, at most once in 10 seconds."""
    global _warned_at, _lost
    _lost += count
    if time.monotonic() - _warned_at > 10:
        LOG.warning("%d spans dropped so far; the latest because %s", _lost, why)
        _warned_at = time.monotonic()


class _Requests:
    """Requests sent one at a time, in order, by a thread; at most ``max_spans`` waiting."""

    def __init__(self, exporter: OTLPSpanExporter, resource: Resource, limits: SpanLimits,
                 max_spans: int) -> None:  # fmt: skip
        self._exporter = exporter
        self._resource = resource
        self._limits = limits
        self._max = max_spans
        self._waiting: collections.deque[tuple[_Encoded, int] | None] = collections.deque()
        self._held = 0  # spans queued or being sent
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="otlp-grpc", daemon=True)
        self._thread.start()

    def take(self, spans: list[tuple[Any, ...]]) -> None:
        with self._changed:
            if self._held + len(spans) > self._max:
                _dropped("the OTLP exporter is behind", len(spans))
                return
            self._held += len(spans)
        lost = 0

        def dropped(why: str) -> None:
            nonlocal lost
            lost += 1
            _dropped(why)

        body = request_bytes(spans, self._resource, self._limits, dropped)
        with self._changed:
            self._waiting.append((_Encoded(body, len(spans) - lost), len(spans)))
            self._changed.notify_all()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._waiting:
                    self._changed.wait()
                item = self._waiting.popleft()
            if item is None:
                return
            request, count = item
            try:
                # The SDK hands what export is given to _translate_data as it is.
                self._exporter.export(request)  # type: ignore[arg-type]  # logs failures, after retries
            except Exception:
                LOG.exception("OTLP export failed")
            with self._changed:
                self._held -= count
                self._changed.notify_all()

    def flush(self, timeout_millis: int) -> bool:
        deadline = time.monotonic() + timeout_millis / 1000
        with self._changed:
            while self._held:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def shutdown(self, timeout_millis: int) -> None:
        self.flush(timeout_millis)
        with self._changed:
            self._waiting.append(None)
            self._changed.notify_all()
        self._thread.join(timeout_millis / 1000)
        self._exporter.shutdown()


# -- other exporters: the SDK's spans and batch processor ----------------------------------


_MAX_STATES = 1024  # distinct tracestate headers kept parsed (most callers repeat one)


class _Spans:
    """Each span rebuilt as the SDK's ``ReadableSpan``, for its batch processor."""

    def __init__(self, processor: BatchSpanProcessor, resource: Resource,
                 limits: SpanLimits) -> None:  # fmt: skip
        self._processor = processor
        self._resource = resource
        self._limits = limits
        self._scopes: dict[Scope, InstrumentationScope] = {}
        self._states: dict[str, TraceState] = {"": TraceState()}

    def _state(self, header: str) -> TraceState:
        found = self._states.get(header)
        if found is None:
            if len(self._states) >= _MAX_STATES:  # callers may send a new one every call
                self._states = {"": self._states[""]}
            found = self._states[header] = TraceState.from_header([header])
        return found

    def _bounded(self, limit: int | None, values: dict[str, Any], max_len: int | None) -> Any:
        return BoundedAttributes(limit, values, immutable=True, max_value_len=max_len)

    def take(self, spans: list[tuple[Any, ...]]) -> None:
        limits = self._limits
        for (name, trace_id, span_id, parent_id, parent_remote, flags, header, kind, start,
             end, attributes, events, links, code, description, scope) in spans:  # fmt: skip
            ts = self._state(header)
            context = SpanContext(trace_id, span_id, False, TraceFlags(flags), ts)
            parent = None
            if parent_id:
                parent = SpanContext(trace_id, parent_id, parent_remote, TraceFlags(flags), ts)
            if scope not in self._scopes:
                self._scopes[scope] = InstrumentationScope(
                    scope[0], scope[1] or None, scope[2] or None, dict(scope[3]) or None
                )
            span_len, other_len = limits.max_span_attribute_length, limits.max_attribute_length
            self._processor.on_end(ReadableSpan(
                name=name, context=context, parent=parent, resource=self._resource,
                attributes=self._bounded(limits.max_span_attributes, attributes, span_len),
                events=BoundedList.from_seq(limits.max_events, [
                    Event(n, self._bounded(limits.max_event_attributes, a, other_len), t)
                    for n, t, a in events]),
                links=BoundedList.from_seq(limits.max_links, [
                    Link(SpanContext(t, s, r, TraceFlags(f), self._state(h)),
                         self._bounded(limits.max_link_attributes, a, other_len))
                    for t, s, f, h, r, a in links]),
                kind=SpanKind(kind), status=Status(StatusCode(code), description),
                start_time=start, end_time=end, instrumentation_scope=self._scopes[scope],
            ))  # fmt: skip

    def flush(self, timeout_millis: int) -> bool:
        return self._processor.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: int) -> None:
        self._processor.shutdown()  # type: ignore[no-untyped-call]


# -- the loop -----------------------------------------------------------------------------


def _ways(kinds: list[str], resource: Resource, limits: SpanLimits) -> list[_Way]:
    from gateway.spans import env_int
    from gateway.telemetry import make_exporter  # imports gateway.spans, which names this

    ways: list[_Way] = []
    for kind in kinds:
        if kind == "otlp-grpc":
            max_spans = env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
            ways.append(_Requests(_RequestExporter(), resource, limits, max_spans))
        else:
            ways.append(_Spans(BatchSpanProcessor(make_exporter(kind)), resource, limits))
    return ways


def main() -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    source = sys.stdin.buffer
    sink = open(int(sys.argv[1]), "wb", buffering=0)  # noqa: SIM115 - open until exit

    def read() -> Any:
        header = source.read(HEADER)
        if len(header) < HEADER:
            return None
        body = source.read(int.from_bytes(header, "little"))
        return marshal.loads(body)  # noqa: S302 - our own child's pipe

    def reply(seq: int, ok: bool, text: str = "") -> None:
        frame = marshal.dumps((seq, ok, text))
        sink.write(len(frame).to_bytes(HEADER, "little") + frame)

    first = read()
    if first is None:
        return 1
    _, hello, seq = first
    logs.configure(hello["log_format"], threaded=False)  # the gateway may kill this process
    resource = Resource(hello["resource"], hello["schema_url"])
    try:
        ways = _ways(hello["exporters"], resource, SpanLimits())
    except Exception as err:  # the exporter's own complaint, for the gateway to report
        reply(seq, False, f"span exporter (OTEL_EXPORTER_* settings): {err}")
        return 1
    reply(seq, True)
    timeout_millis = 30_000
    while True:
        message = read()
        if message is None:  # the gateway has gone: export what is held, then stop
            break
        if message[0] == "spans":
            for way in ways:
                try:
                    way.take(message[1])
                except Exception as err:  # never the end of export: the next batch may do
                    _dropped(f"a batch could not be handled ({type(err).__name__}: {err})",
                             len(message[1]))  # fmt: skip
        elif message[0] == "flush":
            _, timeout_millis, seq = message
            reply(seq, all([way.flush(timeout_millis) for way in ways]))  # noqa: C419 - each
        elif message[0] == "shutdown":
            _, timeout_millis, seq = message
            for way in ways:
                way.shutdown(timeout_millis)
            reply(seq, True)
            return 0
    for way in ways:
        way.shutdown(timeout_millis)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
