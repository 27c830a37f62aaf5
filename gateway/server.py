"""The gRPC server: thin servicers over :class:`~gateway.pipeline.Gateway`, one error table.

Servicers decode, call the core, encode. The caller's identity is read from
the verified client certificate (:func:`caller`), never from a request field.
Domain errors become status codes in one place (:class:`ErrorMapper`), with
``google.rpc`` details: ``BadRequest`` field violations for invalid input, and
``ErrorInfo`` (reason, domain ``govgate``, the decision id where there is one)
for the rest. Core code never calls ``context.abort``.

Example::

    server = await start_server(gateway, TlsFiles(ca, cert, key), port=0)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from adapters.errors import AdapterError, AdapterTimeoutError, UnavailableError
from gateway._proto.govgate.v1 import (
    decision_pb2,
    decision_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    oversight_pb2,
    oversight_pb2_grpc,
    types_pb2,
)
from gateway.config import STREAM_WINDOW
from gateway.convert import action_from_proto, decision_to_proto, halt_from_proto, record_to_proto
from gateway.decision import Decision
from gateway.errors import (
    DeadlineExceededError,
    DecisionNotFoundError,
    GatewayError,
    InvalidRequestError,
    LedgerUnavailableError,
    OverloadedError,
    RequestConflictError,
    ReviewRefusedError,
)
from gateway.identity import IdentityError, identity_of
from gateway.logs import LOG, event
from gateway.metrics import Metrics
from gateway.pipeline import Gateway, retrieved
from gateway.roles import AccessDeniedError
from ledger.errors import LedgerError
from ledger.errors import NotFoundError as LedgerNotFoundError
from ledger.record import time_bound
from ledger.store import RecordQuery

__all__ = [
    "Admission",
    "DecisionServicer",
    "ErrorMapper",
    "Health",
    "LedgerServicer",
    "OversightServicer",
    "ServerOptions",
    "TlsFiles",
    "caller",
    "start_server",
    "status_of",
]

_PAGE = 500  # pending decisions per ListPending page, at most

_LIVE_STATES = (types_pb2.PENDING_APPROVAL, types_pb2.EXECUTING)  # a watch goes on past these

_REVIEW_CODES = {
    "self-approval": code_pb2.PERMISSION_DENIED,
    "digest-mismatch": code_pb2.PERMISSION_DENIED,
    "duplicate": code_pb2.ALREADY_EXISTS,
    "expired": code_pb2.FAILED_PRECONDITION,
    "not-pending": code_pb2.FAILED_PRECONDITION,
    "reason-required": code_pb2.INVALID_ARGUMENT,
    "not-executed": code_pb2.FAILED_PRECONDITION,
    "irreversible": code_pb2.FAILED_PRECONDITION,
    "nothing-changed": code_pb2.FAILED_PRECONDITION,
    "halted": code_pb2.FAILED_PRECONDITION,
    "not-halted": code_pb2.FAILED_PRECONDITION,
}


_MAX_MESSAGE = 512  # UTF-8 bytes of an error's text in the status and its details
_MAX_FIELD = 160  # UTF-8 bytes of a field path (a parameter's name is the caller's)


def _bounded(text: str, most: int) -> str:
    """``text`` cut to at most ``most`` UTF-8 bytes, on a character boundary. Messages
    echo what the caller sent, and the status travels in trailers (grpc-message
    percent-encodes each non-ASCII byte as three): past the client's metadata limit
    (8 KB), the caller would get RESOURCE_EXHAUSTED, the overload code, instead."""
    raw = text.encode()
    if len(raw) <= most:
        return text
    return raw[: most - 3].decode(errors="ignore") + "…"  # "…" is 3 bytes


def status_of(err: BaseException) -> status_pb2.Status:
    """The one table from domain errors to gRPC status codes, with rich details."""
    code, reason = code_pb2.INTERNAL, "INTERNAL"
    match err:
        case InvalidRequestError():
            code, reason = code_pb2.INVALID_ARGUMENT, "INVALID_ARGUMENT"
        case RequestConflictError():
            code, reason = code_pb2.ALREADY_EXISTS, "REQUEST_ID_REUSED"
        case DecisionNotFoundError() | LedgerNotFoundError():
            code, reason = code_pb2.NOT_FOUND, "NOT_FOUND"
        case ReviewRefusedError():
            code = _REVIEW_CODES.get(err.code, code_pb2.FAILED_PRECONDITION)
            reason = err.code.upper().replace("-", "_")
        case LedgerUnavailableError() | UnavailableError():
            code, reason = code_pb2.UNAVAILABLE, "UNAVAILABLE"
        case OverloadedError():
            code, reason = code_pb2.RESOURCE_EXHAUSTED, "OVERLOADED"
        case AdapterTimeoutError():
            code, reason = code_pb2.DEADLINE_EXCEEDED, "RUNTIME_TIMEOUT"
        case DeadlineExceededError():
            code, reason = code_pb2.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"
        case IdentityError():
            code, reason = code_pb2.UNAUTHENTICATED, "NO_IDENTITY"
        case AccessDeniedError():
            code, reason = code_pb2.PERMISSION_DENIED, "ACCESS_DENIED"
        case AdapterError() | LedgerError():
            code, reason = code_pb2.FAILED_PRECONDITION, type(err).__name__.upper()
    message = _bounded(str(err), _MAX_MESSAGE) if code != code_pb2.INTERNAL else "internal error"
    status = status_pb2.Status(code=code, message=message)
    if isinstance(err, InvalidRequestError):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=_bounded(err.field, _MAX_FIELD), description=message
        )
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    if isinstance(err, OverloadedError):
        delay = Duration()
        delay.FromMilliseconds(max(1, round(err.retry_after * 1000)))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    info = error_details_pb2.ErrorInfo(reason=reason, domain="govgate")
    decision_id = getattr(err, "decision_id", "")
    if decision_id:
        info.metadata["decision_id"] = _bounded(decision_id, _MAX_FIELD)
    status.details.add().Pack(info)
    return status


_HANDLED = (GatewayError, AdapterError, LedgerError, IdentityError, AccessDeniedError)


Authorize = Callable[[str, str], Awaitable[None]]  # (identity, method name)


class ErrorMapper(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authorizes every govgate call by the caller's roles, and turns every domain error a
    handler raises into a status with details."""

    def __init__(
        self,
        authorize: Authorize | None = None,
        on_unavailable: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.authorize = authorize
        self.on_unavailable = on_unavailable  # health: the ledger or a runtime failed

    async def _abort(self, context: grpc.aio.ServicerContext, err: BaseException) -> None:
        if isinstance(err, LedgerUnavailableError) and self.on_unavailable is not None:
            self.on_unavailable(err)
        await context.abort_with_status(rpc_status.to_status(status_of(err)))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        service, _, method = details.method.strip("/").partition("/")
        guard = self.authorize if service.startswith("govgate.v1.") else None

        async def admit(context: grpc.aio.ServicerContext) -> None:
            if guard is not None:
                await guard(caller(context), method)

        def unary(fn: Callable[..., Any]) -> Callable[..., Any]:
            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    await admit(context)
                    return await fn(request, context)
                except _HANDLED as err:
                    await self._abort(context, err)

            return wrapped

        def streaming(fn: Callable[..., Any]) -> Callable[..., Any]:
            if not inspect.isasyncgenfunction(fn):  # writes with context.write (health Watch)
                return unary(fn)

            async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    await admit(context)
                    # Closed as soon as the call ends, however it ends (grpc does not close
                    # a handler's generator itself; ProposeStream cleans up in its finally).
                    async with contextlib.aclosing(fn(request, context)) as items:
                        async for item in items:
                            yield item
                except _HANDLED as err:
                    await self._abort(context, err)

            return wrapped

        if handler.unary_unary:
            return handler._replace(unary_unary=unary(handler.unary_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=streaming(handler.unary_stream))
        if handler.stream_stream:
            return handler._replace(stream_stream=streaming(handler.stream_stream))
        return handler


class _Behind(Exception):
    """A stream's request not started because the one before it on its target failed (its
    answer is never sent: the stream ends at that failure)."""


def caller(context: grpc.aio.ServicerContext) -> str:
    """The identity proved by the client certificate of this call."""
    certs = context.auth_context().get("x509_pem_cert") or []
    if not certs:
        raise IdentityError("no client certificate")
    return _identity(certs[0])


@functools.lru_cache(maxsize=4096)
def _identity(cert_pem: bytes) -> str:
    """:func:`identity_of`, parsed once per certificate (TLS has verified it already)."""
    return identity_of(cert_pem)


@contextlib.contextmanager
def _about(decision_id: str) -> Iterator[None]:
    """Name the decision in the ``ErrorInfo`` of whatever goes wrong with it."""
    try:
        yield
    except GatewayError as err:
        err.decision_id = err.decision_id or decision_id
        raise


def _logged(d: Decision) -> None:
    """One log line per decision state: ids and verdict, never parameters or free text."""
    if not LOG.isEnabledFor(logging.INFO):  # on the hot path: build nothing for nobody
        return
    event("decision", decision_id=d.decision_id, state=d.state, verb=d.action.verb.value,
          target=str(d.action.target), requester=d.requester, risk=d.risk,
          policy_id=d.policy_id[:16], ledger_index=d.ledger_index, trace_id=d.trace_id)  # fmt: skip


class Admission:
    """The one bound on work in flight: at most ``limit`` proposals between arrival and
    the end of their work. It caps every stage's queue behind it (describe, scoring, the
    ledger's), so that overload is a fast ``RESOURCE_EXHAUSTED`` with ``RetryInfo``, not a
    slow answer.

    A proposal whose caller stopped waiting runs on to its end (its records must take
    effect): ``busy`` (the gateway's work under way, callers or not) keeps counting it, so
    callers who give up cannot pile work up past the bound."""

    def __init__(
        self,
        limit: int = 512,
        retry_after: float = 0.2,
        metrics: Metrics | None = None,
        busy: Callable[[], int] | None = None,
    ) -> None:
        if limit < 1 or retry_after <= 0:
            raise ValueError("limit must be >= 1 and retry_after > 0")
        self.limit, self.retry_after = limit, retry_after
        self.inflight = 0  # calls being answered
        self.refused = 0
        self.metrics = metrics
        self._busy = busy

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        load = max(self.inflight, self._busy() if self._busy is not None else 0)
        if load >= self.limit:
            self.refused += 1
            if self.metrics is not None:
                self.metrics.refused.add(1)
            raise OverloadedError(
                f"{load} proposals are in flight (the limit is {self.limit}); "
                f"retry in {self.retry_after:g}s",
                self.retry_after,
            )
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1


class DecisionServicer(decision_pb2_grpc.DecisionServiceServicer):  # type: ignore[misc]
    def __init__(
        self, gw: Gateway, admission: Admission | None = None, stream_window: int = STREAM_WINDOW
    ) -> None:
        if stream_window < 1:
            raise ValueError("stream_window must be at least 1")
        self.gw = gw
        self.admission = admission or Admission()
        self.stream_window = stream_window

    async def _propose(
        self, req: Any, context: Any, requester: str | None = None
    ) -> types_pb2.Decision:
        with self.admission():
            action = action_from_proto(req.action)
            d = await self.gw.propose(
                req.request_id,
                action,
                requester=requester or caller(context),
                dry_run=req.dry_run,
                timeout=context.time_remaining(),  # the caller's deadline, if it set one
            )
            _logged(d)
            return decision_to_proto(d)

    async def Propose(self, request: Any, context: Any) -> types_pb2.Decision:
        return await self._propose(request, context)

    async def ProposeStream(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        """Up to ``stream_window`` messages of one stream are decided at once; answers go
        back in the order the messages came, and messages on one target are decided (and,
        when they run at once, run) one after another, in that order. The first message
        that fails ends the stream with its error, after the answers before it; later
        messages on its target never run, and others already under way run to their end
        (a retry with their request ids gets those decisions)."""
        room = asyncio.Semaphore(self.stream_window)
        answers: asyncio.Queue[asyncio.Task[types_pb2.Decision] | None] = asyncio.Queue()

        async def read() -> None:
            requester = ""  # one connection, one certificate: read once, at the first message
            last: dict[tuple[str, str], asyncio.Task[types_pb2.Decision]] = {}
            try:
                async for req in request_iterator:
                    await room.acquire()
                    requester = requester or caller(context)
                    target = (req.action.target.runtime, req.action.target.resource)
                    task = asyncio.create_task(
                        self._propose_after(last.get(target), req, context, requester)
                    )
                    last[target] = task
                    answers.put_nowait(task)
                    if len(last) > 2 * self.stream_window:  # forget the targets left idle
                        last = {t: x for t, x in last.items() if not x.done()}
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (task := await answers.get()) is not None:
                try:
                    answer = await task
                finally:
                    room.release()
                yield answer
            await reader  # how reading ended: the client's end of the stream, or an error
        finally:
            reader.cancel()
            while not answers.empty():
                if (task := answers.get_nowait()) is not None:
                    task.cancel()  # one not yet proposing never starts; one that is ends
                    task.add_done_callback(retrieved)

    async def _propose_after(
        self, before: asyncio.Task[Any] | None, req: Any, context: Any, requester: str
    ) -> types_pb2.Decision:
        if before is not None:  # the stream's last message on this target goes first
            await asyncio.wait([before])
            if before.cancelled() or before.exception() is not None:
                # The stream ends at that message (or sooner): this one must not run
                # before it, as it would if the client retried both.
                raise _Behind("an earlier request on this target did not go through")
        return await self._propose(req, context, requester)

    async def GetDecision(self, request: Any, context: Any) -> types_pb2.Decision:
        with _about(request.decision_id):
            return decision_to_proto(await self.gw.read(request.decision_id, caller(context)))

    async def Rollback(self, request: Any, context: Any) -> types_pb2.Decision:
        with _about(request.decision_id):
            d = await self.gw.rollback(request.decision_id, request.reason, caller(context))
        return decision_to_proto(d)

    async def ReportIncident(self, request: Any, context: Any) -> Any:
        with _about(request.decision_id):
            index = await self.gw.report_incident(
                request.decision_id,
                request.harmful,
                request.severity,
                request.description,
                caller(context),
            )
        return decision_pb2.ReportIncidentResponse(ledger_index=index)

    async def WatchDecision(self, request: Any, context: Any) -> AsyncIterator[Any]:
        with _about(request.decision_id):
            d = await self.gw.read(request.decision_id, caller(context))
        while True:
            wake = d.changed.current()  # before reading what is sent: no change is missed
            sent = decision_to_proto(d)
            yield sent
            if sent.state not in _LIVE_STATES:  # judge what was sent, not what is now
                return
            await wake.wait()


class OversightServicer(oversight_pb2_grpc.OversightServiceServicer):  # type: ignore[misc]
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def ListPending(self, request: Any, context: Any) -> Any:
        """Oldest first, ``page_size`` at a time (default and most: 500). The page token is
        the id of the last decision sent, so a page stays right as decisions come and go."""
        size = min(request.page_size or _PAGE, _PAGE)
        await self.gw.sync()  # with replicas: what the others recorded too
        waiting = sorted(self.gw.pending(), key=lambda d: (d.created, d.decision_id))
        if request.page_token:
            after = next((i for i, d in enumerate(waiting)
                          if d.decision_id == request.page_token), None)  # fmt: skip
            if after is None:  # decided since, or never pending
                raise InvalidRequestError(
                    "unknown page token (the decision it names is no longer pending); "
                    "start again without one", field="page_token",
                )  # fmt: skip
            waiting = waiting[after + 1 :]
        page = waiting[:size]
        more = len(waiting) > size
        return oversight_pb2.ListPendingResponse(
            decisions=[decision_to_proto(d) for d in page],
            next_page_token=page[-1].decision_id if more else "",
        )

    async def _review(self, request: Any, context: Any, approve: bool) -> Any:
        reviewer = caller(context)
        with _about(request.decision_id):
            d = await self.gw.review(request.decision_id, reviewer, approve, request.reason,
                                     request.request_digest)  # fmt: skip
        event("review", decision_id=d.decision_id, reviewer=reviewer, approved=approve)
        _logged(d)
        return decision_to_proto(d)

    async def Approve(self, request: Any, context: Any) -> Any:
        return await self._review(request, context, True)

    async def Deny(self, request: Any, context: Any) -> Any:
        return await self._review(request, context, False)

    async def Halt(self, request: Any, context: Any) -> Any:
        scope, who = halt_from_proto(request.scope), caller(context)
        done = await self.gw.halt(scope, request.reason, who)
        event("halt", scope=scope.describe(), actor=who, ledger_index=done.ledger_index,
              halt_id=done.halt_id)  # fmt: skip
        return oversight_pb2.HaltResponse(halt_id=done.halt_id, ledger_index=done.ledger_index)

    async def Resume(self, request: Any, context: Any) -> Any:
        scope, who = halt_from_proto(request.scope), caller(context)
        done = await self.gw.resume(scope, request.reason, who)
        event("resume", scope=scope.describe(), actor=who, ledger_index=done.ledger_index)
        return oversight_pb2.ResumeResponse(ledger_index=done.ledger_index)


def _record_time(value: str, field: str) -> str | None:
    """A time in the records' own form: they compare as strings, so ``…:00Z`` must become
    ``…:00.000000Z`` (and ``+02:00`` UTC) before it is compared with them."""
    if not value:
        return None
    try:
        return time_bound(value)
    except ValueError as e:
        raise InvalidRequestError(f"must be an RFC 3339 time: {e}", field=field) from None


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):  # type: ignore[misc]
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def Query(self, request: Any, context: Any) -> AsyncIterator[Any]:
        limit = request.limit or 1000
        end = request.to_index or None
        if end is not None and end < request.from_index:
            raise InvalidRequestError("must not be below from_index", field="to_index")
        q = RecordQuery(
            start=request.from_index, end=end,
            since=_record_time(request.since, "since"), until=_record_time(request.until, "until"),
            kind=request.kind or None, actor=request.actor or None,
            target=request.target or None, decision_id=request.decision_id or None,
            trace_id=request.trace_id or None, limit=min(limit, 10_000),
        )  # fmt: skip
        for rec in await self.gw.ledger.store.query(q):
            yield record_to_proto(rec)

    async def GetCheckpoint(self, request: Any, context: Any) -> Any:
        cp = await self.gw.ledger.checkpoint(request.size or None)
        return ledger_pb2.Checkpoint(note=cp.note, size=cp.size, root=cp.root)

    async def GetInclusionProof(self, request: Any, context: Any) -> Any:
        p = await self.gw.ledger.inclusion_proof(request.index, request.tree_size or None)
        return ledger_pb2.InclusionProof(index=p.index, tree_size=p.tree_size, leaf=p.leaf,
                                         leaf_hash=p.leaf_hash, proof=list(p.proof))  # fmt: skip

    async def GetConsistencyProof(self, request: Any, context: Any) -> Any:
        p = await self.gw.ledger.consistency_proof(request.old_size, request.tree_size or None)
        return ledger_pb2.ConsistencyProof(old_size=p.old_size, tree_size=p.tree_size,
                                           proof=list(p.proof))  # fmt: skip


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # clients must present a certificate issued by this CA
    cert: Path
    key: Path


class Health:
    """The gateway's ``grpc.health.v1`` status (service ``""``), set from one place.

    ``NOT_SERVING`` while the ledger cannot write (a failed append marks it at once;
    ``govgate serve`` probes it back) and while draining for shutdown.
    """

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self.servicer = health.aio.HealthServicer()
        self.serving: bool | None = None
        self.why = ""
        self._say = say  # told of a change made by down() (serve's watcher tells its own)
        self._marking: set[asyncio.Task[None]] = set()

    async def set(self, serving: bool, why: str = "") -> bool:
        """Set the status; returns whether it changed."""
        if serving == self.serving:
            return False
        self.serving, self.why = serving, why
        status = health_pb2.HealthCheckResponse.SERVING if serving else (
            health_pb2.HealthCheckResponse.NOT_SERVING)  # fmt: skip
        await self.servicer.set("", status)
        return True

    def down(self, err: BaseException) -> None:
        """From synchronous code: mark NOT_SERVING because of ``err`` (said, if it changed)."""

        async def mark() -> None:
            if await self.set(False, str(err)) and self._say is not None:
                self._say(f"NOT_SERVING: {err}")

        task = asyncio.get_running_loop().create_task(mark())
        self._marking.add(task)
        task.add_done_callback(self._marking.discard)


@dataclass(frozen=True)
class ServerOptions:
    max_inflight: int = 512  # proposals in flight before RESOURCE_EXHAUSTED
    stream_window: int = STREAM_WINDOW  # messages of one ProposeStream decided at once
    retry_after: float = 0.2  # seconds, in RetryInfo
    reflection: bool = True  # grpc.reflection.v1alpha, for grpcurl and friends
    interceptors: tuple[grpc.aio.ServerInterceptor, ...] = ()  # run before the error mapper
    # Keepalive (docs/serve.md): ping a connection idle this long to find dead peers ...
    keepalive_time: float = 30.0
    keepalive_timeout: float = 10.0  # ... and drop it when the ping is not answered in this
    min_client_ping_interval: float = 10.0  # clients pinging more often get GOAWAY
    # Share the listening address with other processes (SO_REUSEPORT; the kernel spreads
    # connections among them): for replicas on one host. Off, a second server on the
    # address is refused, where gRPC's own default would let both listen and split calls.
    reuse_port: bool = False

    def grpc_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.so_reuseport", int(self.reuse_port)),
            ("grpc.keepalive_time_ms", round(self.keepalive_time * 1000)),
            ("grpc.keepalive_timeout_ms", round(self.keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms",
             round(self.min_client_ping_interval * 1000)),
            ("grpc.http2.max_pings_without_data", 0),
        ]  # fmt: skip


async def start_server(
    gw: Gateway,
    tls: TlsFiles,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    options: ServerOptions | None = None,
    health_status: Health | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start a mTLS gRPC server (client certificates required); returns it and its port.

    ``health_status`` is the caller's when it reports health itself (``govgate serve``
    does); a failure to record marks the gateway ``NOT_SERVING`` either way.
    """
    options = options or ServerOptions()
    health_status = health_status or Health()
    mapper = ErrorMapper(gw.authorize, on_unavailable=health_status.down)
    server = grpc.aio.server(
        interceptors=[*options.interceptors, mapper], options=options.grpc_options()
    )
    admission = Admission(
        options.max_inflight, options.retry_after, gw.metrics, busy=gw.proposals_under_way
    )
    decision_pb2_grpc.add_DecisionServiceServicer_to_server(
        DecisionServicer(gw, admission, options.stream_window), server
    )
    oversight_pb2_grpc.add_OversightServiceServicer_to_server(OversightServicer(gw), server)
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(LedgerServicer(gw), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_status.servicer, server)
    if options.reflection:
        names = [
            decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name,
            oversight_pb2.DESCRIPTOR.services_by_name["OversightService"].full_name,
            ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, server)
    creds = grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=tls.ca.read_bytes(),
        require_client_auth=True,
    )
    bound = server.add_secure_port(f"{host}:{port}", creds)
    await server.start()
    await health_status.set(True)
    return server, bound
