"""Spans recorded in the gateway and exported from a separate process.

The OpenTelemetry SDK spends about 35 µs of interpreter time making a span and 40 µs more
encoding it for OTLP. At ten spans a decision that is a third of what a whole decision
costs, all of it under the gateway's one interpreter lock (docs/operations.md has the
figures). So the gateway keeps only the cheap half of tracing:

* :class:`SpanRecorder` is an OpenTelemetry API ``TracerProvider``. Its spans are small
  objects holding ids, times, attributes, events and links. The OpenTelemetry API is
  unchanged for the code that uses it: context propagation, ``start_as_current_span``,
  ``is_recording``, exceptions and status behave as the SDK's do.
* An ended span waits on a bounded queue (``OTEL_BSP_MAX_QUEUE_SIZE``). When the queue is
  full, spans are dropped and counted, never waited for.
* :meth:`_Tracer.start_leaf` starts a child of a recorded span for about half the
  interpreter time ``start_span`` takes: the pipeline's stages make many short spans.
* A thread ships the queue to the exporter process every 100 ms, or as soon as
  ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` spans wait: each span becomes a tuple of built-in
  values there (in one pass, not one at a time on the hot path), and a batch one
  :mod:`marshal` frame on a pipe.
* The exporter process (:mod:`gateway.span_exporter`, started by the recorder) applies
  the SDK's span limits (``OTEL_SPAN_*``, ``OTEL_ATTRIBUTE_*``) and exports through the
  SDK's own exporters, configured by the same ``OTEL_*`` variables as ever: for OTLP over
  gRPC it encodes each batch as one request itself; otherwise it rebuilds each span as
  the SDK's ``ReadableSpan`` for the SDK's ``BatchSpanProcessor``.

Sampling is the SDK's own sampler (``OTEL_TRACES_SAMPLER``), asked once per local root
span. A span started under one of this recorder's recorded spans shares its decision, as
the SDK's parent-based samplers decide, and as its ``traceidratio``, ``always_on`` and
``always_off`` samplers do for spans of one trace.

The exporter process ignores SIGINT and SIGTERM, so that a signal to the whole process
group (Ctrl-C, a service manager) cannot lose the spans the gateway flushes while it
drains. It exits when the gateway shuts the recorder down or its pipe closes.

Example::

    recorder = SpanRecorder(["otlp-grpc"], Resource({"service.name": "govgate"}))
    trace.set_tracer_provider(recorder)
    with trace.get_tracer("govgate").start_as_current_span("work"):
        ...
    recorder.shutdown()  # exports what is queued, then stops the exporter process
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import logging
import marshal
import os
import random
import select
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.sampling import Decision, Sampler
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
from opentelemetry.util import types

__all__ = ["HEADER", "RecordedSpan", "SpanRecorder", "env_int", "use_leaf"]

LOG = logging.getLogger(__name__)

HEADER = 4  # each frame on the pipes: a little-endian length, then marshal data
_SHIP_EVERY_S = 0.1
_START_TIMEOUT_S = 60.0
_SEND_TIMEOUT_S = 10.0  # a pipe that stays full this long means the exporter is stuck
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_INTERNAL = SpanKind.INTERNAL
_OK = StatusCode.OK.value
_ON_ERROR = (True, True)  # record an escaping exception, and set the ERROR status

# A tracer's instrumentation scope: name, version, schema URL, attributes ("" for none).
Scope = tuple[str, str, str, tuple[tuple[str, Any], ...]]
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


def env_int(name: str, default: int) -> int:
    """The positive integer in environment variable ``name``, or ``default`` (with a
    warning when the value is not one)."""
    raw = os.environ.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        LOG.warning("%s=%r is not an integer; using %d", name, raw, default)
        return default
    return value if value > 0 else default


# -- the gateway's side: spans ------------------------------------------------------------


class RecordedSpan(trace.Span):
    """A sampled span of a :class:`SpanRecorder`; on :meth:`end` it is queued for export.

    Its ids are kept as integers and its ``SpanContext`` is made only when asked for: a
    span that has no children never needs one. Used as a context manager (``with
    tracer.start_span(...) as span``), it records an exception that escapes the block,
    sets the ERROR status, and ends, as the SDK's spans do.
    """

    __slots__ = ("_attributes", "_context", "_description", "_end", "_events", "_header",
                 "_kind", "_links", "_name", "_on_error", "_parent", "_recorder", "_remote",
                 "_scope", "_span_id", "_start", "_state", "_status", "_trace_id")  # fmt: skip

    def __init__(
        self,
        recorder: SpanRecorder,
        scope: Scope,
        name: str,
        trace_id: int,
        parent: int,  # the parent's span id, 0 for a root
        remote: bool,  # whether the parent is in another process
        state: TraceState,
        header: str,  # state as a W3C tracestate header
        kind: int,
        attributes: dict[str, Any],
        links: list[tuple[Any, ...]],
        start: int | None,
        on_error: tuple[bool, bool],  # (record the exception, set the ERROR status)
    ) -> None:
        self._recorder = recorder
        self._scope = scope
        self._name = name
        self._trace_id = trace_id
        self._span_id = random.getrandbits(64) or 1
        self._parent = parent
        self._remote = remote
        self._state = state
        self._header = header
        self._kind = kind
        self._attributes = attributes
        self._links = links
        self._start = time.time_ns() if start is None else start
        self._on_error = on_error
        self._end: int | None = None
        self._events: list[tuple[str, int, dict[str, Any]]] = []
        self._status = 0  # StatusCode.UNSET's value
        self._description: str | None = None
        self._context: SpanContext | None = None

    def get_span_context(self) -> SpanContext:
        if self._context is None:
            self._context = SpanContext(self._trace_id, self._span_id, False, _SAMPLED,
                                        self._state)  # fmt: skip
        return self._context

    def is_recording(self) -> bool:
        return self._end is None

    # As the SDK's: an attribute set again counts as the latest (span limits keep the last).

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if self._end is None:
            self._attributes.pop(key, None)
            self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        if self._end is None:
            mine = self._attributes
            if mine and not mine.keys().isdisjoint(attributes):
                for key in attributes:
                    mine.pop(key, None)
            mine.update(attributes)

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end is None:
            at = time.time_ns() if timestamp is None else timestamp
            self._events.append((name, at, dict(attributes or {})))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._end is None and context.is_valid:
            self._links.append(_link(context, attributes))

    def update_name(self, name: str) -> None:
        if self._end is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: OK is final, UNSET is never set, a Status carries its own description.
        if self._end is not None or self._status == _OK:
            return
        code = status.status_code if isinstance(status, Status) else status
        if isinstance(status, Status):
            description = status.description
        if code is not StatusCode.UNSET:
            self._status = code.value
            self._description = description if code is StatusCode.ERROR else None

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module, name = type(exception).__module__, type(exception).__qualname__
        event: dict[str, Any] = {
            "exception.type": f"{module}.{name}" if module and module != "builtins" else name,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if getattr(exception, "echoes_input", False):  # its text may carry a parameter
            event["exception.message"] = name
            del event["exception.stacktrace"]
        event.update(attributes or {})
        self.add_event("exception", event, timestamp)

    def failed(self, err: BaseException, *, escaped: bool) -> None:
        """What leaving the span's block with ``err`` does: as the API's ``use_span``, only
        an ``Exception`` is an error (not a cancellation or ``GeneratorExit``). ``escaped``
        as the SDK sets it: true when the span itself was the block's context manager."""
        if isinstance(err, Exception) and self._end is None:
            record, status = self._on_error
            if record:
                self.record_exception(err, escaped=escaped)
            if status:
                self.set_status(Status(StatusCode.ERROR, span_text(err)))

    def end(self, end_time: int | None = None) -> None:
        if self._end is not None:
            return
        self._end = time.time_ns() if end_time is None else end_time
        self._recorder._queue(self)  # nothing changes an ended span: the shipper reads it

    def _item(self) -> tuple[Any, ...]:
        """The ended span as the exporter process takes it (built-in values only)."""
        return (
            self._name, self._trace_id, self._span_id, self._parent, self._remote, 1,
            self._header, self._kind, self._start, self._end, self._attributes, self._events,
            self._links, self._status, self._description, self._scope,
        )  # fmt: skip

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if err is not None:
            self.failed(err, escaped=True)
        self.end()

    def __repr__(self) -> str:
        return f"RecordedSpan({self._name!r}, trace {self._trace_id:032x})"


class _Leaf(RecordedSpan):
    """A child of a recorded span, started by :meth:`_Tracer.start_leaf`: an internal span,
    started now, with no attributes or links yet. The same span as ``start_span(name)``
    under ``parent`` would make, for about half the interpreter time in the running
    gateway (no sampler, no second look at the context, no argument handling)."""

    __slots__ = ()

    def __init__(self, parent: RecordedSpan, scope: Scope, name: str) -> None:
        self._recorder = parent._recorder
        self._scope = scope
        self._name = name
        self._trace_id = parent._trace_id
        self._span_id = random.getrandbits(64) or 1
        self._parent = parent._span_id
        self._remote = False
        self._state = parent._state
        self._header = parent._header
        self._kind = 0  # INTERNAL
        self._attributes = {}
        self._links = []
        self._start = time.time_ns()
        self._on_error = _ON_ERROR
        self._end = None
        self._events = []
        self._status = 0
        self._description = None
        self._context = None


def _link(context: SpanContext, attributes: types.Attributes) -> tuple[Any, ...]:
    state = context.trace_state
    header = state.to_header() if state else ""
    return (context.trace_id, context.span_id, int(context.trace_flags), header,
            context.is_remote, dict(attributes or {}))  # fmt: skip


class _Current:
    """``start_as_current_span``'s context manager: what the API's ``use_span`` does, as a
    class (a generator-based one costs microseconds more per span). The span starts on
    entry; as a decorator, each call of the function gets a span of its own."""

    __slots__ = ("end_on_exit", "span", "start", "token")

    def __init__(self, start: Callable[[], trace.Span], end_on_exit: bool) -> None:
        self.start = start
        self.end_on_exit = end_on_exit

    def __enter__(self) -> trace.Span:
        self.span = span = self.start()
        self.token = otel_context.attach(trace.set_span_in_context(span))
        return span

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        otel_context.detach(self.token)
        span = self.span
        if err is not None and isinstance(span, RecordedSpan):
            span.failed(err, escaped=False)
        if self.end_on_exit:
            span.end()

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        start, end_on_exit = self.start, self.end_on_exit
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def traced_async(*args: Any, **kwargs: Any) -> Any:
                with _Current(start, end_on_exit):
                    return await func(*args, **kwargs)

            return traced_async

        @functools.wraps(func)
        def traced(*args: Any, **kwargs: Any) -> Any:
            with _Current(start, end_on_exit):
                return func(*args, **kwargs)

        return traced


class _Made(_Current):
    """:class:`_Current` for a span already started (by :meth:`_Tracer.start_leaf`)."""

    __slots__ = ()

    def __init__(self, span: RecordedSpan) -> None:
        self.span = span
        self.end_on_exit = True

    def __enter__(self) -> trace.Span:
        span = self.span
        self.token = otel_context.attach(trace.set_span_in_context(span))
        return span

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        raise TypeError("a started span cannot decorate a function")


def use_leaf(span: RecordedSpan) -> AbstractContextManager[trace.Span]:
    """``span`` (from :meth:`_Tracer.start_leaf`) as the current span inside a ``with`` block,
    which ends it, as ``start_as_current_span`` does for the spans it starts."""
    return _Made(span)


class _Tracer(trace.Tracer):
    def __init__(self, recorder: SpanRecorder, scope: Scope) -> None:
        self._recorder = recorder
        self._scope = scope

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        current = trace.get_current_span(context)
        kept = (
            [_link(x.context, x.attributes) for x in links if x.context.is_valid] if links else []
        )
        kind_value = 0 if kind is _INTERNAL else kind.value
        on_error = (record_exception, set_status_on_exception)
        if isinstance(current, RecordedSpan) and current._recorder is self._recorder:
            # A child of one of ours shares its sampling decision: no sampler call.
            return RecordedSpan(
                self._recorder, self._scope, name, current._trace_id, current._span_id, False,
                current._state, current._header, kind_value, dict(attributes or {}), kept,
                start_time, on_error,
            )  # fmt: skip
        parent = current.get_span_context()
        valid = parent is not None and parent.is_valid
        trace_id = parent.trace_id if valid else random.getrandbits(128) or 1
        result = self._recorder.sampler.should_sample(
            context, trace_id, name, kind, attributes, links
        )
        state = result.trace_state or TraceState()
        if result.decision is not Decision.RECORD_AND_SAMPLE:
            span_id = random.getrandbits(64) or 1
            return NonRecordingSpan(SpanContext(trace_id, span_id, False, _NOT_SAMPLED, state))
        return RecordedSpan(
            self._recorder, self._scope, name, trace_id, parent.span_id if valid else 0,
            valid and parent.is_remote, state, state.to_header() if state else "", kind_value,
            dict(result.attributes or {}), kept, start_time, on_error,
        )  # fmt: skip

    def start_leaf(self, parent: trace.Span, name: str) -> RecordedSpan | None:
        """``start_span(name)`` under ``parent``, the current span, for less, when ``parent``
        is a recording span of this tracer's recorder; ``None`` otherwise (then use
        :meth:`start_span`). For the many short internal spans of a hot path;
        :func:`use_leaf` makes one current."""
        if not isinstance(parent, RecordedSpan) or parent._recorder is not self._recorder:
            return None
        if parent._end is not None:  # ended: start_span's rules apply
            return None
        return _Leaf(parent, self._scope, name)

    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> _Current:
        start = functools.partial(
            self.start_span, name, context, kind, attributes, links, start_time,
            record_exception, set_status_on_exception,
        )  # fmt: skip
        return _Current(start, end_on_exit)


# -- the gateway's side: the queue and the pipe ---------------------------------------------


def span_text(err: BaseException) -> str:
    """An error as a span's status describes it: its type, and its text unless that may
    echo what a caller sent (the spans never carry an action's parameters)."""
    name = type(err).__name__
    return name if getattr(err, "echoes_input", False) else f"{name}: {err}"


class SpanRecorder(trace.TracerProvider):
    """An OpenTelemetry tracer provider whose spans are exported by a child process.

    ``exporters`` are what :func:`gateway.telemetry.exporter_kind` returns (``otlp-grpc``,
    ``otlp-http``, ``console``); each is made in the child, which reads the exporters'
    own ``OTEL_EXPORTER_*`` variables. ``sampler`` defaults to the
    one ``OTEL_TRACES_SAMPLER`` names. Raises :class:`RuntimeError` with the child's
    message when the exporter process cannot start.
    """

    def __init__(
        self,
        exporters: Sequence[str],
        resource: Resource,
        *,
        sampler: Sampler | None = None,
        log_format: str = "text",
    ) -> None:
        if sampler is None:
            from opentelemetry.sdk.trace import TracerProvider

            sampler = TracerProvider().sampler  # the SDK's reading of OTEL_TRACES_SAMPLER
        self.sampler = sampler
        self.dropped = 0  # spans lost to a full queue or a dead exporter process
        self._max_queue = env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self._batch = min(env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), self._max_queue)
        self._spans: deque[RecordedSpan] = deque()  # ended, not yet shipped
        self._tracers: dict[Scope, _Tracer] = {}
        self._io = threading.Lock()  # one frame, or one request and its reply, at a time
        self._wake = threading.Event()
        self._closing = False
        self._dead = False
        self._reported = 0
        self._seq = 0
        self._replies = b""
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH", "")) if p))  # fmt: skip
        # Replies come on a pipe of their own: the child's standard output and error are the
        # gateway's, for the console exporter and for the exporters' warnings.
        replies, reply_end = os.pipe()
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - our own module, by this interpreter
                [sys.executable, "-m", "gateway.span_exporter", str(reply_end)],
                stdin=subprocess.PIPE, env=env, bufsize=0, pass_fds=(reply_end,),
            )  # fmt: skip
        except BaseException:
            os.close(replies)
            raise
        finally:
            os.close(reply_end)
        assert self._proc.stdin is not None
        self._out, self._in = self._proc.stdin.fileno(), replies
        os.set_blocking(self._out, False)
        os.set_blocking(self._in, False)
        hello = {"exporters": list(exporters), "resource": dict(resource.attributes),
                 "schema_url": resource.schema_url, "log_format": log_format}  # fmt: skip
        ok, message = self._request(("start", hello), _START_TIMEOUT_S)
        if not ok:
            self._stop_process(0)
            raise RuntimeError(message or "the span exporter process did not start")
        self._thread = threading.Thread(target=self._run, name="govgate-spans", daemon=True)
        self._thread.start()
        atexit.register(self.shutdown)

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes = None,
    ) -> trace.Tracer:
        scope = (instrumenting_module_name, instrumenting_library_version or "",
                 schema_url or "", _items(attributes))  # fmt: skip
        tracer = self._tracers.get(scope)
        if tracer is None:
            tracer = self._tracers.setdefault(scope, _Tracer(self, scope))
        return tracer

    @property
    def exporter_pid(self) -> int:
        """The exporter process's pid (for the operator, and benchmarks of its CPU)."""
        return self._proc.pid

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export every span ended so far; ``False`` if that took longer than the timeout."""
        if self._dead:
            return False
        deadline = time.monotonic() + timeout_millis / 1000
        self._ship()
        ok, _ = self._request(("flush", timeout_millis), deadline - time.monotonic())
        return ok

    def shutdown(self, timeout_millis: int = 15_000) -> None:
        """Export what is queued (within the timeout) and stop the exporter process."""
        if self._closing:
            return
        self._closing = True
        atexit.unregister(self.shutdown)
        deadline = time.monotonic() + timeout_millis / 1000
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._ship()
        if not self._dead:
            self._request(("shutdown", timeout_millis), deadline - time.monotonic() + 1)
        self._stop_process(max(1.0, deadline - time.monotonic()))

    # -- the queue ---------------------------------------------------------------------------

    def _queue(self, item: RecordedSpan) -> None:
        spans = self._spans
        if len(spans) >= self._max_queue or self._dead:
            self.dropped += 1
            return
        spans.append(item)
        if len(spans) == self._batch:
            self._wake.set()

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(_SHIP_EVERY_S)
            self._wake.clear()
            self._ship()

    def _ship(self) -> None:
        """Send the queued spans to the exporter process, ``batch`` at a time."""
        with self._io:
            if self.dropped != self._reported:
                lost = self.dropped - self._reported
                LOG.warning("%d spans dropped: the span export queue was full or the exporter "
                            "process has stopped", lost)  # fmt: skip
                self._reported = self.dropped
            spans = self._spans
            while spans and not self._dead:
                batch = [spans.popleft()._item() for _ in range(min(len(spans), self._batch))]
                frame = _frame(batch)
                if frame is None or not self._send(frame, _SEND_TIMEOUT_S):
                    self.dropped += len(batch)
            if self._dead and spans:  # what was queued when the exporter process stopped
                self.dropped += len(spans)
                spans.clear()

    # -- the pipe ----------------------------------------------------------------------------

    def _request(self, message: tuple[Any, ...], timeout: float) -> tuple[bool, str]:
        """Send ``message`` and wait for its reply: (ok, message)."""
        with self._io:
            if self._dead:
                return False, ""
            self._seq += 1
            deadline = time.monotonic() + max(0.0, timeout)
            if not self._send(marshal.dumps((*message, self._seq)), max(0.0, timeout)):
                return False, ""
            while True:
                reply = self._reply(deadline)
                if reply is None:
                    return False, "no answer from the span exporter process"
                seq, ok, text = reply
                if seq == self._seq:  # an earlier request's late answer is skipped
                    return ok, text

    def _send(self, frame: bytes, timeout: float) -> bool:
        data = memoryview(len(frame).to_bytes(HEADER, "little") + frame)
        deadline = time.monotonic() + timeout
        try:
            while data:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([], [self._out], [], left)[1]:
                    raise TimeoutError("the span exporter process stopped reading")
                try:
                    data = data[os.write(self._out, data) :]
                except BlockingIOError:
                    continue
        except (OSError, TimeoutError) as err:
            self._broken(err)
            return False
        return True

    def _reply(self, deadline: float) -> tuple[int, bool, str] | None:
        while True:
            if len(self._replies) >= HEADER:
                size = int.from_bytes(self._replies[:HEADER], "little")
                if len(self._replies) >= HEADER + size:
                    body = self._replies[HEADER : HEADER + size]
                    self._replies = self._replies[HEADER + size :]
                    reply: tuple[int, bool, str] = marshal.loads(body)  # noqa: S302 - our own child's pipe
                    return reply
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                return None
            try:
                chunk = os.read(self._in, 65536)
            except BlockingIOError:
                continue
            except OSError as err:
                self._broken(err)
                return None
            if not chunk:
                self._broken(EOFError("the span exporter process exited"))
                return None
            self._replies += chunk

    def _broken(self, err: BaseException) -> None:
        if not self._dead:
            self._dead = True
            LOG.warning("span export stopped: %s; spans are dropped from now on", err)
            with contextlib.suppress(OSError):
                self._proc.kill()

    def _stop_process(self, timeout: float) -> None:
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        with contextlib.suppress(OSError):
            os.close(self._in)
        self._dead = True


def _items(attributes: types.Attributes) -> tuple[tuple[str, Any], ...]:
    """Attributes as a hashable tuple of pairs (a tracer's, for its scope)."""
    return tuple((k, tuple(v) if isinstance(v, list | tuple) else v)
                 for k, v in (attributes or {}).items())  # fmt: skip


def _frame(batch: list[tuple[Any, ...]]) -> bytes | None:
    """The ``spans`` frame for ``batch``; a value :mod:`marshal` cannot write is written as
    :func:`_plain` makes it, and a batch that still cannot be written is ``None``."""
    try:
        return marshal.dumps(("spans", batch))
    except ValueError:  # a value of a type OTLP has no place for
        pass
    try:
        return marshal.dumps(("spans", [_plain(item) for item in batch]))
    except (ValueError, TypeError) as err:
        LOG.warning("%d spans could not be sent to the exporter process: %s", len(batch), err)
        return None


def _plain(item: tuple[Any, ...]) -> tuple[Any, ...]:
    """``item`` made of the exact types :mod:`marshal` writes: a subclass (an enum) as its
    base type, anything else as its ``str``."""

    def text(v: Any) -> str:
        return str.__str__(v) if isinstance(v, str) else str(v)

    def scalar(v: Any) -> Any:
        if isinstance(v, bool):
            return bool(v)
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            return float(v)
        if isinstance(v, bytes):
            return bytes(v)
        return text(v)

    def value(v: Any) -> Any:
        return [scalar(x) for x in v] if isinstance(v, list | tuple) else scalar(v)

    def clean(attributes: Mapping[str, Any]) -> dict[str, Any]:
        return {text(k): value(v) for k, v in attributes.items()}

    (name, trace_id, span_id, parent, remote, flags, header, kind, start, end, attributes,
     events, links, status, description, scope) = item  # fmt: skip
    return (
        text(name), trace_id, span_id, parent, bool(remote), int(flags), text(header),
        int(kind), int(start), int(end), clean(attributes),
        [(text(n), int(t), clean(a)) for n, t, a in events],
        [(int(t), int(s), int(f), text(h), bool(r), clean(a)) for t, s, f, h, r, a in links],
        int(status), None if description is None else text(description),
        (text(scope[0]), text(scope[1]), text(scope[2]),
         tuple((text(k), value(v)) for k, v in scope[3])),
    )  # fmt: skip
