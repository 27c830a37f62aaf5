"""OpenTelemetry tracing: OTLP export from the standard ``OTEL_*`` variables, and the server span.

Two pieces, both at the gRPC edge:

* :func:`setup_tracing` builds a :class:`~gateway.spans.SpanRecorder` from the
  environment alone: spans are recorded here and exported through the SDK's
  exporters from a child process (:mod:`gateway.spans` says why). Tracing
  is **off unless asked for**: with no ``OTEL_TRACES_EXPORTER`` and no OTLP
  endpoint variable it returns ``None``, no provider is installed, and every
  span the gateway starts is the API's no-op span.
* :class:`TracingInterceptor` gives every call one ``SERVER`` span named
  ``govgate.v1.DecisionService/Propose`` (a stream gets one span for the whole
  stream), continuing the caller's W3C ``traceparent``/``tracestate`` from the
  call metadata, with the RPC semantic-convention attributes and the final
  ``rpc.grpc.status_code``. The span is current while the handler runs, so the
  pipeline's spans (:mod:`gateway.pipeline`) are its children and the ledger
  records carry its trace id.

The caller's trace context is continued even when tracing is off: the API's
propagator and no-op tracer keep the incoming span context current, so the
records still carry the engine's trace id, though the gateway exports nothing.

Example::

    provider = setup_tracing()  # None unless OTEL_* asks for an exporter
    server = grpc.aio.server(interceptors=[TracingInterceptor(), ErrorMapper(gw.authorize)])
    ...
    if provider is not None:
        provider.shutdown()  # exports what is still queued, then stops the exporter process
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import inspect
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway import logs
from gateway.config import ConfigError
from gateway.spans import SpanRecorder

__all__ = [
    "TRACER_NAME",
    "TracingInterceptor",
    "exporter_kind",
    "exporter_names",
    "make_exporter",
    "metric_exporter_names",
    "setup_metrics",
    "setup_tracing",
]

TRACER_NAME = "govgate"  # the instrumentation scope of every govgate span


# The codes a server reports as its own failure (RPC semantic conventions); a caller's
# mistake such as INVALID_ARGUMENT leaves the span's status unset.
_SERVER_ERRORS = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})  # fmt: skip


# -- set-up ------------------------------------------------------------------------------


def exporter_names() -> list[str]:
    """The trace exporters the environment asks for; empty means tracing is off.

    ``OTEL_TRACES_EXPORTER`` (comma-separated: ``otlp``, ``console``, ``none``) decides when
    it is set. When it is not, an OTLP endpoint variable turns OTLP export on, and nothing
    else does: unlike the SDK's own default, a gateway never sends spans to a collector
    nobody configured.
    """
    return _wanted("TRACES")


def _wanted(signal: str) -> list[str]:
    """The exporters ``OTEL_{signal}_EXPORTER`` names (without ``none``), or ``otlp`` when it
    is unset and an OTLP endpoint for the signal is, or nothing."""
    raw = os.environ.get(f"OTEL_{signal}_EXPORTER", "").strip()
    if not raw:
        endpoints = (f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if any(os.environ.get(v, "").strip() for v in endpoints) else []
    names = [n.strip().lower() for n in raw.split(",")]
    return [n for n in names if n and n != "none"]


def setup_tracing(service_name: str = "govgate", *, set_global: bool = True) -> SpanRecorder | None:
    """A tracer provider exporting as ``OTEL_*`` says, or ``None`` when tracing is off.

    The provider is a :class:`~gateway.spans.SpanRecorder`: spans are recorded in this
    process and exported, through the SDK's exporters, from a child process it starts.
    ``set_global`` installs it as OpenTelemetry's global provider (once per process),
    which is what the gateway's default tracers use. Call ``shutdown()`` on it when
    stopping: it exports the spans still queued and stops the child. Raises
    :class:`~gateway.config.ConfigError` for an exporter or protocol this build cannot
    provide, naming the variable, or when the exporter process cannot start.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    kinds = [exporter_kind(name) for name in exporter_names()]
    if not kinds:
        return None
    # Sampler (OTEL_TRACES_SAMPLER), limits (OTEL_SPAN_*) and batching (OTEL_BSP_*) are read
    # by the SDK's own code, in this process and in the exporter's.
    try:
        provider = SpanRecorder(kinds, _resource(service_name), log_format=logs.current_format())
    except RuntimeError as err:
        raise ConfigError(str(err)) from None
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def metric_exporter_names() -> list[str]:
    """The metric exporters the environment asks for (``OTEL_METRICS_EXPORTER``), by the rule
    of :func:`exporter_names`; ``prometheus`` is served by ``--metrics-listen`` instead."""
    return [n for n in _wanted("METRICS") if n != "prometheus"]


def setup_metrics(
    prometheus: tuple[str, int] | None = None, service_name: str = "govgate"
) -> MeterProvider | None:
    """A meter provider read by a Prometheus scrape endpoint on ``prometheus`` (host, port)
    and/or pushed over OTLP as ``OTEL_*`` says; ``None`` when neither is asked for.

    Raises :class:`~gateway.config.ConfigError` naming what is wrong (a bad exporter, a
    port that cannot be bound).
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    readers: list[MetricReader] = []
    for name in metric_exporter_names():
        if name != "otlp":
            raise ConfigError(f"OTEL_METRICS_EXPORTER: {name!r} is not one of otlp, "
                              "prometheus, none")  # fmt: skip
        readers.append(PeriodicExportingMetricReader(_metric_exporter()))
    if prometheus is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        host, port = prometheus
        try:
            start_http_server(port, addr=host)
        except OSError as err:
            raise ConfigError(f"--metrics-listen {host}:{port}: {err.strerror or err}") from None
        readers.append(PrometheusMetricReader())
    if not readers:
        return None
    return MeterProvider(metric_readers=readers, resource=_resource(service_name))


def _protocol(signal: str) -> str:
    """The OTLP protocol for ``signal`` (TRACES, METRICS): its own variable, then the shared
    one, then grpc; :class:`ConfigError` naming the variable for anything else."""
    names = (f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    variable = next((v for v in names if os.environ.get(v, "").strip()), "")
    protocol = os.environ[variable].strip() if variable else "grpc"
    if protocol not in ("grpc", "http/protobuf"):
        raise ConfigError(f"{variable}: {protocol!r} is not one of grpc, http/protobuf")
    return protocol


# With no arguments the OTLP exporters read OTEL_EXPORTER_OTLP_* themselves: endpoint,
# headers, certificates, compression, timeout.


def _metric_exporter() -> MetricExporter:
    if _protocol("METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        return OTLPMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter()


def exporter_kind(name: str) -> str:
    """What exporter ``name`` (from ``OTEL_TRACES_EXPORTER``) means here: ``console``,
    ``otlp-grpc`` or ``otlp-http`` (by the OTLP protocol variables); :class:`ConfigError`
    naming the variable for anything else."""
    if name == "console":
        return "console"
    if name != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER: {name!r} is not one of otlp, console, none")
    return "otlp-grpc" if _protocol("TRACES") == "grpc" else "otlp-http"


def make_exporter(kind: str) -> SpanExporter:
    """The SDK's span exporter of ``kind`` (from :func:`exporter_kind`), configured by its
    own ``OTEL_EXPORTER_*`` variables."""
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if kind == "otlp-grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if kind == "otlp-http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter()
    raise ValueError(f"no span exporter {kind!r}")


def _resource(service_name: str) -> Resource:
    """The SDK's resource (``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``), with govgate's
    name and version where the environment gives none."""
    resource = Resource.create()
    ours: dict[str, str] = {}
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        ours["service.name"] = service_name
    if "service.version" not in resource.attributes:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            ours["service.version"] = importlib.metadata.version("govgate")
    return resource.merge(Resource(ours)) if ours else resource


# -- the server span ---------------------------------------------------------------------

_Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


class TracingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """One ``SERVER`` span per call, a child of the caller's W3C trace context.

    It must be the *first* interceptor, outside the one that turns domain errors into
    statuses, so that the span sees the status the caller gets. ``server_port`` may be set
    once the server is bound (port 0 picks one). Calls whose method starts with one of
    ``skip`` (health checks and reflection, by default) get no span.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,  # None: the global one
        *,
        server_address: str = "",
        server_port: int = 0,
        skip: tuple[str, ...] = ("/grpc.health.v1.Health/", "/grpc.reflection."),
    ) -> None:
        self.tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
        self.server_address = server_address
        self.server_port = server_port
        self.skip = skip

    async def intercept_service(
        self, continuation: _Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(self.skip):
            return handler
        service, _, method = details.method.strip("/").partition("/")
        traced = functools.partial(self._span, service, method)

        def unary(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                with traced(context):
                    return await fn(request, context)

            return wrapped

        def streaming(fn: Callable[..., Any]) -> Callable[..., Any]:
            if not inspect.isasyncgenfunction(fn):  # writes with context.write()
                return unary(fn)

            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                with traced(context):
                    async with contextlib.aclosing(fn(request, context)) as items:
                        async for item in items:
                            yield item

            return wrapped

        if handler.unary_unary:
            return handler._replace(unary_unary=unary(handler.unary_unary))
        if handler.stream_unary:
            return handler._replace(stream_unary=unary(handler.stream_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=streaming(handler.unary_stream))
        if handler.stream_stream:
            return handler._replace(stream_stream=streaming(handler.stream_stream))
        return handler

    @contextlib.contextmanager
    def _span(self, service: str, method: str, context: grpc.aio.ServicerContext) -> Iterator[None]:
        """The call's span, current while the handler runs; its status is the call's."""
        parent = propagate.extract(_carrier(context.invocation_metadata() or ()))
        attributes: dict[str, str | int] = {
            "rpc.system": "grpc", "rpc.service": service, "rpc.method": method,
        }  # fmt: skip
        if self.server_address:
            attributes["server.address"] = self.server_address
        if self.server_port:
            attributes["server.port"] = self.server_port
        span = self.tracer.start_span(
            f"{service}/{method}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        code = grpc.StatusCode.OK
        try:
            yield
            code = context.code() or grpc.StatusCode.OK  # a handler may set_code and return
        except BaseException as err:
            # An abort (the error mapper's) has set the code the caller gets; anything else
            # escaping a handler reaches the caller as UNKNOWN, a cancellation as CANCELLED.
            code = context.code() or (
                grpc.StatusCode.CANCELLED if isinstance(err, asyncio.CancelledError)
                else grpc.StatusCode.UNKNOWN
            )  # fmt: skip
            if span.is_recording() and not isinstance(err, grpc.aio.AbortError):
                span.record_exception(err)
            raise
        finally:
            otel_context.detach(token)
            if span.is_recording():
                _finish(span, code, context)
            span.end()


def _finish(span: trace.Span, code: grpc.StatusCode, context: grpc.aio.ServicerContext) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    address, port = _peer(context.peer())
    if address:
        span.set_attribute("network.peer.address", address)
    if port:
        span.set_attribute("network.peer.port", port)
    if code in _SERVER_ERRORS:
        details = context.details()
        span.set_status(Status(StatusCode.ERROR, details if isinstance(details, str) and details
                               else code.name))  # fmt: skip


def _carrier(metadata: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """The call's text metadata as a propagation carrier; repeated keys (``tracestate`` may
    come in several headers) are joined with commas, as HTTP does."""
    out: dict[str, str] = {}
    for key, value in metadata:
        if isinstance(value, str):
            out[key] = f"{out[key]},{value}" if key in out else value
    return out


def _peer(peer: str) -> tuple[str, int]:
    """(address, port) from gRPC's peer string: ``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return "", 0
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else 0
