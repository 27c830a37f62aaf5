"""The decision pipeline: one proposal from request to recorded outcome.

:class:`Gateway` composes the ledger, the risk model, the policy and the
runtime adapters in the order of DESIGN.md ("One decision, end to end"):

    validate -> idempotency -> stop switch -> describe -> features -> score and
    explain -> policy -> durable decision record -> execute -> outcome record

It holds no gRPC: the servicers decode a request, call it, and encode what
it returns. Every state change is a ledger record written *before* anything
happens that depends on it. If the decision record cannot be written, nothing
executes and the caller gets :class:`~gateway.errors.LedgerUnavailableError`
(fail closed).

Each stage is an OpenTelemetry span (``govgate.validate``, ``govgate.describe``,
``govgate.score``, ``govgate.policy``, ``govgate.plan``, ``govgate.ledger.append``,
``govgate.execute``) under one ``govgate.decide`` span per proposal, which carries the
``govgate.decision.*`` attributes. Every record the pipeline writes carries the current
trace id unless the caller gave one, so a trace leads to its records and back
(docs/operations.md). With no tracer provider installed when the gateway is made, the
stages start no spans at all, and the caller's trace id (continued by the server's
interceptor) is still recorded.

Approvals, halts and idempotency keys are kept in this process for now. The
multi-replica issue moves them into the store.

Example::

    gw = Gateway(ledger, {"libvirt": lv}, batcher, policy)
    decision = await gw.propose("r-1", action, requester="spiffe://govgate.local/engine-1")
    if decision.state == "PENDING_APPROVAL":
        await gw.review(decision.decision_id, "spiffe://govgate.local/alice", True, "ok",
                        decision.digest)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, NamedTuple, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Span, Tracer

from adapters.action import (
    Action,
    PowerState,
    Reversibility,
    RuntimeState,
    Target,
    Verb,
    text_problem,
)
from adapters.errors import AdapterError, EffectUnknownError, NotFoundError
from adapters.runtime import Outcome, OutcomeStatus, Plan, RuntimeAdapter, new_id
from explain.batcher import MicroBatcher
from explain.errors import ModelUnavailableError
from explain.features import Context, featurize
from gateway.approvals import ApprovalError, Pending, ReviewOutcome, request_digest
from gateway.decision import Decision, Halt
from gateway.errors import (
    DeadlineExceededError,
    DecisionNotFoundError,
    InvalidRequestError,
    LedgerUnavailableError,
    RequestConflictError,
    ReviewRefusedError,
)
from gateway.metrics import Metrics
from gateway.policy import Policy, PolicyInput, VerdictKind
from gateway.replay import RECENT, Replay, Replayed
from gateway.roles import AccessDeniedError, Roles
from gateway.spans import RecordedSpan, span_text, use_leaf
from ledger import Draft, Ledger, LedgerError
from ledger.errors import ClaimedError
from ledger.record import open_record
from ledger.store import RecordQuery

__all__ = ["Gateway", "Switched"]

T = TypeVar("T")

_MAX_REQUEST_ID = 128
_SYNC_PAGE = 1000  # records read per query when catching up with other replicas
_CLAIM_TRIES = 5  # a step another replica keeps winning is retried this often, then UNAVAILABLE
_TRACER = "govgate"  # the instrumentation scope (gateway.telemetry.TRACER_NAME)
_NO_SPAN = contextlib.nullcontext(trace.INVALID_SPAN)


class Switched(NamedTuple):
    """A recorded halt or resume: its record's ledger index, and the halt version it took
    (the ``halt:<version>`` claim; versions count halts and resumes together, across
    replicas)."""

    ledger_index: int
    version: int

    @property
    def halt_id(self) -> str:
        return f"halt:{self.version}"


def _utc(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _plan_record(plan: Plan) -> dict[str, Any]:
    """What a restart needs to reconcile or revert ``plan`` (the action and the state before
    it are in the decision record already)."""
    return {"plan_id": plan.id, "desired": dict(plan.desired), "undo": dict(plan.undo),
            "reversibility": plan.reversibility.value}  # fmt: skip


@contextlib.contextmanager
def _timed(span: AbstractContextManager[Span], metrics: Metrics, stage: str) -> Iterator[Span]:
    started = time.perf_counter()
    try:
        with span as current:
            yield current
    finally:
        metrics.stage(stage, time.perf_counter() - started)


def retrieved(task: asyncio.Future[Any]) -> None:
    """Read the error of a task nobody awaits (else asyncio logs it as never retrieved)."""
    if not task.cancelled():
        task.exception()


def _check_text(value: str, field: str) -> None:
    """Refuse free text that would reach the ledger, overseers' screens and logs unfit:
    longer than an action's text may be, or with control characters."""
    if (problem := text_problem(value)) is not None:
        raise InvalidRequestError(problem, field=field)


def _left(d: Decision) -> float | None:
    """Seconds until the caller's deadline; raises once it has passed."""
    if d.respond_by is None:
        return None
    left = d.respond_by - asyncio.get_running_loop().time()
    if left <= 0:
        raise DeadlineExceededError("the caller's deadline passed before the decision was "
                                    "recorded; nothing was recorded or run")  # fmt: skip
    return left


def _trace_id() -> str:
    """The current W3C trace id (32 hex digits), or "" outside any trace."""
    ctx = trace.get_current_span().get_span_context()
    return trace.format_trace_id(ctx.trace_id) if ctx.is_valid else ""


def _failed(span: Span, err: BaseException) -> None:
    """Mark a stage's span failed by an error the pipeline handles (and so never sees)."""
    if span.is_recording():
        span.record_exception(err)
        span.set_status(trace.StatusCode.ERROR, span_text(err))


def _annotate(span: Span, d: Decision) -> None:
    """Put the decision's ``govgate.decision.*`` attributes on ``span``, if it is recorded."""
    if not span.is_recording():
        return
    attributes: dict[str, str | int | float | bool] = {
        "govgate.decision.id": d.decision_id,
        "govgate.decision.request_id": d.request_id,
        "govgate.decision.requester": d.requester,
        "govgate.decision.verb": d.action.verb.value,
        "govgate.decision.target": str(d.action.target),
        "govgate.decision.state": d.state,
        "govgate.decision.policy_id": d.policy_id,
        "govgate.decision.dry_run": d.dry_run,
        "govgate.decision.fallback": d.fallback,
    }
    if d.trace_id:  # an overseer's call is a trace of its own: this leads to the proposal's
        attributes["govgate.decision.trace_id"] = d.trace_id
    if d.risk is not None:
        attributes["govgate.decision.risk"] = d.risk
    if d.explanation is not None:
        attributes["govgate.decision.model_id"] = d.explanation.model_id
    if d.ledger_index >= 0:
        attributes["govgate.decision.ledger_index"] = d.ledger_index
    if d.approvals_required:
        attributes["govgate.decision.approvals_required"] = d.approvals_required
    span.set_attributes(attributes)


class Gateway:
    def __init__(
        self,
        ledger: Ledger,
        adapters: Mapping[str, RuntimeAdapter],
        batcher: MicroBatcher | None,
        policy: Policy,
        *,
        shadow: bool = False,  # decide and record, never execute
        roles: Roles | None = None,  # None: every identity may do everything (library use)
        cache: int = 1_000,  # final decisions kept in memory; older ones are read back
        requests: int = 10_000,  # request ids kept in memory; older ones: the ledger's claims
        tracer: Tracer | None = None,  # None: from the global provider installed by now
        metrics: Metrics | None = None,  # None: no metrics
        replica: str = "",  # this replica's stable name, on a store shared with others
    ) -> None:
        self.ledger = ledger
        self.adapters = dict(adapters)
        self.batcher = batcher
        self.policy = policy
        self.shadow = shadow
        self.roles = roles
        self.cache = cache
        self.requests = requests
        self.replica = replica
        # Other replicas append to the same store: catch up with them (sync) where it matters.
        self.shared = ledger.store.shared
        self.restore(Replayed())
        self._sync_lock = asyncio.Lock()
        self._late: set[asyncio.Task[None]] = set()  # outcomes waiting for the ledger to recover
        self._running: set[asyncio.Future[Any]] = set()  # proposals, reviews: see _to_the_end
        self._proposing: set[asyncio.Future[Any]] = set()  # the proposals among them
        # Decisions allowed to run whose outcome is not yet durable, by decision record index.
        self._unsettled: Counter[int] = Counter()
        self._floor_unknown = False  # a decision record may be in the ledger, unknown here
        # Rollbacks under way or cut short (no outcome recorded): how many, by the index of
        # the decision record each one reverts (for the replay floor).
        self._rolling_back: Counter[int] = Counter()
        self._sync_asked = self._sync_done = 0
        # Decisions with a record of theirs being appended here (_record): a sync waits
        # before such a decision's records (one may be that very record, not yet reflected
        # by the call writing it) until the write is done (_wrote).
        self._writing: Counter[str] = Counter()
        # With replicas: indexes of records this gateway wrote and has reflected, which a
        # catch-up passes over without opening them (each was wholly applied when written).
        self._own: set[int] = set()
        self._wrote = asyncio.Event()
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._plan_errors: dict[str, AdapterError] = {}  # why a decision could not be planned
        self._tracer = trace.get_tracer(_TRACER) if tracer is None else tracer
        # Even the API's no-op spans cost microseconds each; with no provider the stages skip
        # them. The caller's trace id still reaches the records: the server's span is current.
        self._traced = not isinstance(self._tracer, (trace.NoOpTracer, trace.ProxyTracer))
        # The span recorder's cheap path for the stages' spans (gateway.spans).
        self._leaf: Callable[[Span, str], RecordedSpan | None] | None = getattr(
            self._tracer, "start_leaf", None
        )
        self.metrics = metrics

    def _span(self, name: str, *, current: bool = True) -> AbstractContextManager[Span]:
        """A stage's span and its time in the stage metric; nothing at all when tracing and
        metrics are off, and no span when the sampler left this trace out (its children
        would be left out too). ``current``: the span is the current one inside the block,
        the parent of the spans started there; a stage with no spans below it leaves the
        current span as it is, which costs less."""
        span: AbstractContextManager[Span] = _NO_SPAN
        if self._traced:
            parent = trace.get_current_span()
            leaf = None if self._leaf is None else self._leaf(parent, name)
            if leaf is not None:
                span = use_leaf(leaf) if current else leaf
            elif parent.is_recording() or not parent.get_span_context().is_valid:
                span = (self._tracer.start_as_current_span(name) if current
                        else self._tracer.start_span(name))  # fmt: skip
        if self.metrics is None:
            return span
        return _timed(span, self.metrics, name.removeprefix("govgate."))

    # -- recording ---------------------------------------------------------------------

    async def _record(self, draft: Draft, of: Decision | None = None) -> Any:
        """Append ``draft``, stamped with the current trace id if it carries none; ``of``: the
        decision it changes, which then reflects it (:attr:`Decision.applied`).

        :class:`ClaimedError` passes through: another replica got there first."""
        if not draft.trace_id and (current := _trace_id()):
            draft = replace(draft, trace_id=current)
        with self._span("govgate.ledger.append", current=False) as span:
            started = time.perf_counter()
            if of is not None:
                self._writing[of.decision_id] += 1
            try:
                rec = await self.ledger.append(draft)
            except ClaimedError:
                raise
            except LedgerError as err:
                raise LedgerUnavailableError(f"the ledger cannot record: {err}") from err
            finally:
                if of is not None:
                    left = self._writing[of.decision_id] - 1
                    if left:
                        self._writing[of.decision_id] = left
                    else:
                        del self._writing[of.decision_id]
                    self._wrote.set()
            if of is not None:
                of.applied = max(of.applied, rec.index)
                if self.shared and rec.index > self._state.last_index:  # not read back yet
                    self._own.add(rec.index)
            if self.metrics is not None:
                self.metrics.appended(rec.index, time.perf_counter() - started)
            if span.is_recording():
                span.set_attributes({"govgate.ledger.kind": draft.kind,
                                     "govgate.ledger.index": rec.index})  # fmt: skip
            return rec

    async def authorize(self, identity: str, method: str) -> None:
        """Refuse (and record the refusal) when the identity's roles do not allow ``method``."""
        if self.roles is None:
            return
        try:
            self.roles.check_method(identity, method)
        except AccessDeniedError as err:
            await self._refused(err)
            raise

    async def _refused(self, err: AccessDeniedError) -> None:
        await self._record(
            Draft("access", {"denied": err.what, "reason": err.why}, actor=err.identity)
        )

    async def activate_policy(self, policy: Policy, actor: str = "") -> int:
        rec = await self._record(
            Draft("policy", {"policy_id": policy.id, "source": policy.source}, actor=actor)
        )
        self.policy = policy
        return int(rec.index)

    # -- start-up ----------------------------------------------------------------------

    def restore(self, state: Replayed, replay: Replay | None = None) -> None:
        """Take the state the ledger records (:mod:`gateway.recovery`) as this gateway's own;
        ``replay`` (the one that computed it) then follows what other replicas append."""
        self._state = state
        self.decisions: OrderedDict[str, Decision] = state.decisions  # live, and recent final
        self._by_request = state.by_request  # request id: (decision id, digest), the latest
        self._unclaimed = state.unclaimed  # those no claim in the store would find
        self._pending = state.pending
        self._halts = state.halts
        self._recent = state.recent
        self._replay = replay or Replay(
            keep=self.cache, requests=self.requests,
            claims_from=self.ledger.store.claims_from, replica=self.replica,
        )  # fmt: skip
        self._replay.follow(state)
        self._trim()

    async def _to_the_end(self, work: Coroutine[Any, Any, T], *, proposal: bool = False) -> T:
        """Run ``work`` to its end even if the caller stops waiting (it may write records
        that must take effect); it counts as work under way (:meth:`replay_floor`), and a
        proposal as one in flight (:meth:`proposals_under_way`), until it ends."""
        task = asyncio.ensure_future(work)
        task.add_done_callback(retrieved)  # a caller that left does not read its error
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        if proposal:
            self._proposing.add(task)
            task.add_done_callback(self._proposing.discard)
        return await asyncio.shield(task)

    def proposals_under_way(self) -> int:
        """Proposals running, whether or not their callers still wait (admission's count)."""
        return len(self._proposing)

    def replay_floor(self) -> int | None:
        """The lowest ledger index whose record this gateway's state still needs, as far as
        what it holds goes (:mod:`gateway.recovery`, "Replay floor"): the decision record of
        every decision that is not final, the record of every rollback without an outcome.
        ``-1``: nothing held needs a record. None while work is under way that may still
        write records this gateway does not yet know the index of (a proposal running, an
        outcome waiting for the ledger): no floor can be vouched for then."""
        if self._running or self._late or self._floor_unknown:
            return None
        held = self._rolling_back + self._unsettled
        lowest = min(held, default=-1)
        if held and lowest < 0:
            return None  # a decision whose index is not known here
        for d in self.decisions.values():
            if d.final:
                continue
            if d.ledger_index < 0:
                return None
            lowest = d.ledger_index if lowest < 0 else min(lowest, d.ledger_index)
        return lowest

    @property
    def synced_upto(self) -> int:
        """With other replicas: the index after the last record read from them."""
        return self._state.last_index + 1

    async def sync(self) -> None:
        """Catch up with the records other replicas appended since the last call (nothing to
        do unless the store is shared). Calls that arrive while one runs share the next."""
        if not self.shared:
            return
        self._sync_asked += 1
        ticket = self._sync_asked
        async with self._sync_lock:
            if self._sync_done >= ticket:
                return  # a read that started after this call asked has covered it
            upto = self._sync_asked
            try:
                while True:
                    first = self._state.last_index + 1
                    page = await self.ledger.store.entries_after(first - 1, _SYNC_PAGE)
                    for index, (kind, decision_id, envelope) in enumerate(page, first):
                        if index in self._own:  # reflected when written: feed() would skip it
                            self._own.discard(index)
                            self._replay.skip(index)
                            continue
                        if kind == "outcome" and self._replay.passes_over(decision_id):
                            self._replay.skip(index)  # another replica's, all done there
                            continue
                        rec = open_record(envelope).record
                        if rec.index != index:
                            raise LedgerError(f"record {index} reads as record {rec.index}")
                        while rec.decision_id and rec.decision_id in self._writing:
                            # Perhaps this gateway's own record, committed but not yet
                            # reflected by the call writing it: applied here too, it would
                            # count twice. Once that call is done, feed() knows (applied).
                            self._wrote.clear()
                            await self._wrote.wait()
                        if index in self._own:  # it was ours, and its call has reflected it
                            self._own.discard(index)
                        self._replay.feed(rec)
                    if len(page) < _SYNC_PAGE:
                        break
            except LedgerError as err:
                raise LedgerUnavailableError(f"the ledger cannot be read: {err}") from err
            for decision_id in self._replay.touched:
                if (d := self.decisions.get(decision_id)) is not None:
                    d.changed.set()
            self._replay.touched.clear()
            self._trim()
            self._sync_done = upto

    async def finish_interrupted(self, state: Replayed) -> list[Decision]:
        """Give every decision a crash left without an outcome one, from the runtime's real
        state; nothing runs again. Returns the decisions it finished."""
        for d in state.unfinished:
            d.state, body = await self._reconcile(d)
            try:
                rec = await self._record(
                    Draft("outcome", body, trace_id=d.trace_id, target=str(d.action.target),
                          decision_id=d.decision_id, claims=(f"outcome:{d.decision_id}",)), of=d,
                )  # fmt: skip
            except ClaimedError:  # another replica finished it meanwhile
                continue
            d.outcome = body | {"ledger_index": rec.index}
            d.changed.set()
        for decision_id in state.rollbacks:
            try:
                d = await self.get(decision_id)
            except DecisionNotFoundError:  # a rollback record no gateway wrote: never fatal
                state.skipped.append(f"rollback of {decision_id}: no such decision; left alone")
                self._replay.rollback_finished(decision_id)
                continue
            detail = "the gateway stopped during the rollback; check the target"
            body = {"status": "unknown", "rollback": True, "recovered": True, "detail": detail}
            await self._record(
                Draft("outcome", body, target=str(d.action.target), decision_id=d.decision_id,
                      trace_id=d.trace_id), of=d,
            )  # fmt: skip
            d.reasons.append("a rollback was interrupted by a restart; its effect is unknown")
            self._replay.rollback_finished(decision_id)
        return state.unfinished

    async def _reconcile(self, d: Decision) -> tuple[str, dict[str, Any]]:
        """(state, outcome body) for a decision that may or may not have run before a crash."""
        if d.plan is None:
            detail = "the gateway stopped before it could plan the action; nothing ran"
            return "FAILED", {"status": "failed", "detail": detail, "recovered": True}
        body: dict[str, Any] = {"plan_id": d.plan.id, "recovered": True}
        adapter = self.adapters.get(d.action.target.runtime)
        if adapter is None:
            detail = f"no {d.action.target.runtime} adapter to reconcile with; check the target"
            return "FAILED", body | {"status": "unknown", "detail": detail}
        try:
            seen = await adapter.reconcile(d.plan)
        except AdapterError as err:
            detail = f"could not reconcile after a restart: {err}"
            return "FAILED", body | {"status": "unknown", "detail": detail}
        body["after"] = seen.state.to_record()
        if not seen.took_effect:
            status = "failed" if seen.took_effect is False else "unknown"
            detail = f"reconciled after a restart: {seen.detail}; not retried"
            return "FAILED", body | {"status": status, "detail": detail}
        d.result = Outcome(d.plan, OutcomeStatus.APPLIED, seen.state, seen.detail)
        reversible = d.plan.reversibility is Reversibility.REVERSIBLE
        detail = f"reconciled after a restart: {seen.detail}"
        return "EXECUTED", body | {"status": "applied", "detail": detail, "reversible": reversible}

    # -- propose -----------------------------------------------------------------------

    async def propose(
        self,
        request_id: str,
        action: Action,
        *,
        requester: str,
        dry_run: bool = False,
        trace_id: str = "",  # "": the current trace's (the caller's, continued by the server)
        now: dt.datetime | None = None,
        timeout: float | None = None,  # seconds the caller waits (its gRPC deadline)
    ) -> Decision:
        """Decide on ``action``, record the decision, and run it if the policy allows.

        Once started, a proposal runs to its end even if the caller stops waiting: a
        decision that is recorded always gets its outcome recorded too. ``timeout`` bounds
        the work before the decision record (describe, plan): past it, nothing is recorded
        and :class:`~gateway.errors.DeadlineExceededError` is raised. The execution itself
        runs under the adapter's own deadline, since stopping halfway is worse.
        """
        now = now or dt.datetime.now(dt.UTC)
        respond_by = None if timeout is None else asyncio.get_running_loop().time() + timeout
        with self._span("govgate.decide") as span:
            return await self._to_the_end(self._propose(
                span, request_id, action, requester, dry_run, trace_id or _trace_id(), now,
                respond_by,
            ), proposal=True)  # fmt: skip

    async def _propose(
        self, span: Span, request_id: str, action: Action, requester: str, dry_run: bool,
        trace_id: str, now: dt.datetime, respond_by: float | None,
    ) -> Decision:  # fmt: skip
        with self._span("govgate.validate", current=False):
            self._validate(request_id, action)
            action = replace(action, requester=requester)
            digest = request_digest(request_id, requester, action)
        async with self._locks[request_id]:  # one decision per request id, even concurrently
            for _ in range(_CLAIM_TRIES):
                known = self._by_request.get(request_id) or self._unclaimed.get(request_id)
                if known is not None:
                    first_id, first_digest = known
                    if first_digest != digest:
                        raise RequestConflictError(
                            f"request id {request_id!r} was used for another action "
                            f"(decision {first_id})"
                        )
                    decision = await self.get(first_id)
                    if decision.dry_run != (dry_run or self.shadow):
                        # The same action, but run where it was tried (or the reverse): the
                        # first decision would answer a question that was not asked.
                        first = "a dry run" if decision.dry_run else "a real proposal"
                        raise RequestConflictError(
                            f"request id {request_id!r} was used for {first} of this action "
                            f"(decision {first_id}); use a new request id"
                        )
                    span.set_attribute("govgate.decision.repeated", True)
                    _annotate(span, decision)
                    return decision
                try:
                    decision = await self._decide(request_id, action, digest, requester, dry_run,
                                                  trace_id, now, respond_by)  # fmt: skip
                    break
                except ClaimedError as err:  # the request id was taken, or a halt came first
                    await self.sync()
                    if err.key == f"request:{request_id}" and request_id not in self._by_request:
                        await self._recall(request_id)  # decided before this process knew
                except (InvalidRequestError, DeadlineExceededError):
                    # Refused before anything was recorded: the target is gone, say, or time
                    # ran out. A request id this process no longer keeps in memory may have
                    # been decided already, and a retry of it gets that decision instead.
                    if request_id in self._by_request or not await self._recall(request_id):
                        raise
            else:
                raise LedgerUnavailableError("other replicas kept changing the state; retry")
            self._by_request[request_id] = (decision.decision_id, digest)
            self._trim_requests()
            # From here on the id is known; later callers need no lock to find it.
            self._locks.pop(request_id, None)
        try:  # recorded: from here on the trace leads to the record
            if decision.state == "EXECUTING":
                await self._execute(decision)
        finally:
            _annotate(span, decision)  # once, as it stands when the span ends
        if self.metrics is not None:
            x = decision.explanation
            self.metrics.decided(decision.state, decision.action.verb.value,
                                 fallback=decision.fallback,
                                 features=None if x is None else x.values.values())  # fmt: skip
        return decision

    def _validate(self, request_id: str, action: Action) -> None:
        if not request_id or len(request_id) > _MAX_REQUEST_ID:
            raise InvalidRequestError(
                f"must be 1..{_MAX_REQUEST_ID} characters", field="request_id"
            )
        _check_text(request_id, "request_id")
        if action.target.runtime not in self.adapters:
            raise InvalidRequestError(
                f"no adapter for runtime {action.target.runtime!r} here",
                field="action.target.runtime",
            )

    async def _decide(
        self, request_id: str, action: Action, digest: bytes, requester: str, dry_run: bool,
        trace_id: str, now: dt.datetime, respond_by: float | None = None,
    ) -> Decision:  # fmt: skip
        d = Decision(
            decision_id=f"d-{new_id()}",
            request_id=request_id,
            requester=requester,
            action=action,
            digest=digest,
            state="",
            created=now,
            trace_id=trace_id,
            dry_run=dry_run or self.shadow,
            policy_id=self.policy.id,
            respond_by=respond_by,
        )
        target = action.target
        # The halt version the halts were read at: the guard below claims the next one, so
        # a halt another replica records meanwhile (even one synced here) refuses this record.
        seen = self._state.halt_version
        halt = self._halted(target, None)
        state, described = RuntimeState(), False
        if halt is None:
            state, described = await self._describe(d)
            seen = self._state.halt_version
            halt = self._halted(target, state.labels)
            if halt is None and not described:  # fail closed: it may be in a halted scope
                halt = next((h for h in self._halts if h.selector), None)
        if self.roles is not None:
            try:
                self.roles.check_action(requester, action, state.labels)
            except AccessDeniedError as err:
                # A retry of a request decided before (the grant changed since, and this
                # process no longer holds the id) gets that decision, as any retry does.
                if request_id not in self._by_request and await self._recall(request_id):
                    raise ClaimedError(f"request:{request_id}") from None
                await self._refused(err)
                raise
        state = replace(state, recent_actions=self._recent_count(str(target), now))
        try:
            if halt is not None:
                d.state = "HALTED"
                d.reasons.append(f"halted: the stop switch for {halt.describe()} is on")
            else:
                if described:
                    await self._score(d, state, now)
                else:  # fail closed: its labels are unknown, and scoring nothing means nothing
                    d.reasons.append("not scored: the target could not be described")
                self._apply_policy(d, state if described else None, now)
                if d.state == "EXECUTING":
                    await self._plan(d, state if described else None)
            try:
                rec = await self._record_decision(d, state, digest, seen, now)
            except (ClaimedError, DeadlineExceededError):
                raise  # refused in the transaction, or given up before the write
            except BaseException:
                # A write that failed may still have committed: this process can no longer
                # say which records its state needs (the next start reads them all).
                self._floor_unknown = True
                raise
        except BaseException:
            # Not recorded (or not known to be): it holds no place among the pending.
            self._pending.pop(d.decision_id, None)
            self._plan_errors.pop(d.decision_id, None)
            raise
        d.ledger_index, d.leaf_hash = rec.index, rec.leaf_hash
        # Recorded: the caller's deadline has done its work. What follows (running it now,
        # or the plan when overseers approve it, perhaps much later) is bounded by the
        # runtime's own deadlines.
        d.respond_by = None
        self._remember(d)
        self._recent[str(target)].append(now.timestamp())
        return d

    async def _record_decision(
        self, d: Decision, state: RuntimeState, digest: bytes, seen: int, now: dt.datetime
    ) -> Any:
        """Write ``d``'s decision record: the step that commits to it."""
        request_id, action, target = d.request_id, d.action, d.action.target
        _left(d)  # the last moment to give up without a trace: nothing is recorded yet
        body: dict[str, Any] = {
            "request_id": request_id,
            "action": action.to_record(),
            "state": state.to_record(),
            "scored_at": _utc(now),
            "verdict": d.state,
            "reasons": d.reasons,
            "policy_id": d.policy_id,
            "approvals_required": d.approvals_required,
            "fallback": d.fallback,
            "dry_run": d.dry_run,
            "digest": digest.hex(),
        }
        if d.explanation is not None:
            body.update(d.explanation.to_record())
        pending = self._pending.get(d.decision_id)
        if pending is not None:
            body["deadline"] = _utc(pending.deadline)
            body["reason_required"] = pending.reason_required
        if d.plan is not None:
            body["plan"] = _plan_record(d.plan)
        runs = d.state == "EXECUTING" and not d.dry_run
        if runs and self.replica:
            body["replica"] = d.executor = self.replica
        # Whether it runs or is halted depends on the halts: none may have changed unseen.
        guard = (f"halt:{seen + 1}",) if runs or d.state == "HALTED" else ()
        draft = Draft("decision", body, trace_id=d.trace_id, actor=d.requester,
                      target=str(target), decision_id=d.decision_id,
                      claims=(f"request:{request_id}",), unclaimed=guard)  # fmt: skip
        return await self._record(draft, of=d)

    async def _describe(self, d: Decision) -> tuple[RuntimeState, bool]:
        """The target's state, and whether it could be read at all. A target that does not
        exist is the caller's mistake."""
        target = d.action.target
        with self._span("govgate.describe", current=False) as span:
            try:
                return await self.adapters[target.runtime].describe(target, timeout=_left(d)), True
            except NotFoundError as err:
                if d.action.verb is Verb.CREATE:  # the one verb whose target is not there yet
                    return RuntimeState(power=PowerState.ABSENT), True
                raise InvalidRequestError(str(err), field="action.target.resource") from err
            except AdapterError as err:
                _failed(span, err)
                d.reasons.append(f"could not describe the target: {err}")
                return RuntimeState(), False

    async def _score(self, d: Decision, state: RuntimeState, now: dt.datetime) -> None:
        if self.batcher is None:
            d.reasons.append("no risk model is loaded")
            return
        with self._span("govgate.score", current=False) as span:
            try:
                vector = featurize(d.action, state, Context(now=now))
            except (ValueError, TypeError, OverflowError) as err:  # a state it cannot read
                _failed(span, err)
                d.reasons.append(f"the target's state could not be turned into features: {err}")
                return  # unscored: the policy's fallback decides, as when the model cannot
            try:
                d.explanation = await self.batcher.score(vector)
            except ModelUnavailableError as err:
                _failed(span, err)
                d.reasons.append(f"the model could not score: {err}")
                return
            d.risk, model_id = d.explanation.risk, d.explanation.model_id
            if span.is_recording():
                span.set_attributes({"govgate.decision.risk": d.risk,
                                     "govgate.decision.model_id": model_id})  # fmt: skip

    def _apply_policy(self, d: Decision, state: RuntimeState | None, now: dt.datetime) -> None:
        """Set ``d``'s state from the policy's verdict (and hold it for approval if need be);
        ``state`` None: the target could not be described."""
        with self._span("govgate.policy", current=False) as span:
            action = d.action
            labels = None if state is None else state.labels
            verdict = self.policy.evaluate(
                PolicyInput(action.verb.value, action.target.runtime, labels, d.risk,
                            action.confidence)
            )  # fmt: skip
            d.reasons += verdict.reasons
            d.fallback = verdict.fallback
            if verdict.kind is VerdictKind.DENY:
                d.state = "DENIED"
            elif d.dry_run:
                d.state = "DRY_RUN"
                d.approvals_required = verdict.approvals
                would = ("execute it" if verdict.kind is VerdictKind.EXECUTE
                         else f"wait for {verdict.approvals} approval(s)")  # fmt: skip
                mode = "shadow mode" if self.shadow else "dry run"
                d.reasons.append(f"{mode}: recorded, not executed; enforcing would {would}")
            elif verdict.kind is VerdictKind.APPROVAL:
                d.state = "PENDING_APPROVAL"
                d.approvals_required = verdict.approvals
                d.approval_deadline = now + dt.timedelta(seconds=verdict.ttl)
                self._pending[d.decision_id] = Pending(
                    d.decision_id, d.requester, d.digest, verdict.approvals,
                    d.approval_deadline, verdict.reason_required,
                )  # fmt: skip
            else:
                d.state = "EXECUTING"
            if span.is_recording():
                span.set_attributes({"govgate.policy.verdict": verdict.kind.value,
                                     "govgate.decision.policy_id": d.policy_id,
                                     "govgate.decision.fallback": d.fallback,
                                     "govgate.decision.state": d.state})  # fmt: skip

    def _recent_count(self, key: str, now: dt.datetime) -> int:
        return self._recent[key].count_since(now.timestamp() - RECENT.total_seconds())

    # -- execute -----------------------------------------------------------------------

    async def _plan(self, d: Decision, state: RuntimeState | None = None) -> None:
        """Plan ``d`` before the record that lets it run, so that the record carries the plan
        (a restart reconciles it). A plan the adapter refuses is left out: ``_execute`` then
        records the failure, and nothing runs."""
        with self._span("govgate.plan", current=False) as span:
            try:
                d.plan = await self.adapters[d.action.target.runtime].plan(
                    d.action, state, timeout=_left(d)
                )
            except AdapterError as err:
                _failed(span, err)
                d.plan, self._plan_errors[d.decision_id] = None, err

    async def _execute(self, d: Decision) -> None:
        """Run ``d`` and record its outcome. Until that record is durable, ``d`` holds the
        replay floor at its decision record (a call cancelled on the way leaves it held: a
        restart from record 0 is then what reconciles it)."""
        self._unsettled[d.ledger_index] += 1
        await self._run_and_record(d)
        self._settled(d)

    def _settled(self, d: Decision) -> None:
        self._unsettled -= Counter([d.ledger_index])

    async def _run_and_record(self, d: Decision) -> None:
        adapter = self.adapters[d.action.target.runtime]
        try:
            if d.plan is None:
                raise self._plan_errors.pop(d.decision_id)
            plan = d.plan
            with self._span("govgate.execute", current=False):
                outcome = await adapter.execute(plan)
        except EffectUnknownError as err:  # it may have taken effect: say so, do not guess
            d.state = "FAILED"
            d.outcome = {"status": "unknown", "error": type(err).__name__,
                         "detail": f"{err}; its effect is unknown until reconciled"}  # fmt: skip
        except AdapterError as err:
            d.state = "FAILED"
            d.outcome = {"status": "failed", "detail": str(err), "error": type(err).__name__}
        else:
            d.state = "EXECUTED"
            d.result = outcome
            d.outcome = {
                "status": outcome.status.value,
                "detail": outcome.detail,
                "after": outcome.after.to_record(),
                "plan_id": plan.id,
                "reversible": plan.reversibility is Reversibility.REVERSIBLE,
            }
        draft = Draft("outcome", d.outcome, trace_id=d.trace_id, target=str(d.action.target),
                      decision_id=d.decision_id, claims=(f"outcome:{d.decision_id}",))  # fmt: skip
        try:
            rec = await self._record(draft, of=d)
        except LedgerUnavailableError:
            # It ran: the outcome must still reach the ledger once it can write again.
            task = asyncio.create_task(self._record_late(d, draft))
            self._late.add(task)
            task.add_done_callback(self._late.discard)
            raise
        d.outcome["ledger_index"] = rec.index
        d.changed.set()

    async def _record_late(self, d: Decision, draft: Draft) -> None:
        """Keep trying to record an outcome the ledger refused (a restart would reconcile it
        otherwise); another replica's outcome for it ends the attempts."""
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            try:
                rec = await self._record(draft, of=d)
            except ClaimedError:
                self._settled(d)  # another replica recorded its outcome
                return
            except LedgerUnavailableError:
                delay = min(delay * 2, 10.0)
                continue
            self._settled(d)
            if d.outcome is not None:
                d.outcome["ledger_index"] = rec.index
            d.changed.set()
            return

    # -- oversight ---------------------------------------------------------------------

    async def get(self, decision_id: str) -> Decision:
        """The decision, from memory or, when it has left the cache, read back from the ledger;
        with other replicas, as of the ledger's head when the call came."""
        await self.sync()
        d = self.decisions.get(decision_id)
        if d is not None:
            self.decisions.move_to_end(decision_id)
            return d
        d = await self._read_back(decision_id)
        if d is None:
            raise DecisionNotFoundError(f"no decision {decision_id!r}")
        self._remember(d)
        return d

    async def read(self, decision_id: str, reader: str) -> Decision:
        """:meth:`get` for a caller: an engine may read only the decisions it proposed (the
        refusal is recorded)."""
        d = await self.get(decision_id)
        if self.roles is not None:
            try:
                self.roles.check_read(reader, decision_id, d.requester)
            except AccessDeniedError as err:
                await self._refused(err)
                raise
        return d

    async def _read_back(self, decision_id: str) -> Decision | None:
        if not decision_id or len(decision_id) > _MAX_REQUEST_ID:
            return None
        try:
            records = await self.ledger.store.query(
                RecordQuery(decision_id=decision_id, limit=100_000)
            )
        except LedgerError as err:
            raise LedgerUnavailableError(f"the ledger cannot be read: {err}") from err
        replay = Replay()
        for rec in records:
            replay.feed(rec)
        found = replay.result().decisions.get(decision_id)
        if found is not None and decision_id in self.decisions:  # a sync brought it meanwhile
            return self.decisions[decision_id]
        return found

    def _remember(self, d: Decision) -> None:
        self.decisions[d.decision_id] = d
        self.decisions.move_to_end(d.decision_id)
        self._trim()

    async def _recall(self, request_id: str) -> bool:
        """Put back the decision a request id was used for, from the record that claimed it
        (the in-memory index keeps only the most recent ``requests``); False if none did."""
        try:
            index = await self.ledger.store.claimant(f"request:{request_id}")
            records = [] if index is None else await self.ledger.store.query(
                RecordQuery(start=index, end=index + 1, limit=1)
            )  # fmt: skip
        except LedgerError as err:
            raise LedgerUnavailableError(f"the ledger cannot be read: {err}") from err
        for rec in records:
            digest = rec.body.get("digest")
            if rec.kind == "decision" and isinstance(digest, str) and rec.decision_id:
                with contextlib.suppress(ValueError):
                    self._by_request[request_id] = (rec.decision_id, bytes.fromhex(digest))
                    return True
        return False

    def _trim_requests(self) -> None:
        while len(self._by_request) > self.requests:
            self._by_request.popitem(last=False)

    def _trim(self) -> None:
        """Forget the oldest final decisions beyond ``cache``; live ones always stay."""
        spared = 0
        while len(self.decisions) > self.cache and spared < len(self.decisions):
            oldest_id, oldest = next(iter(self.decisions.items()))
            if oldest.final and oldest_id not in self._pending:
                del self.decisions[oldest_id]
            else:
                self.decisions.move_to_end(oldest_id)
                spared += 1
        self._trim_requests()

    def pending(self) -> list[Decision]:
        """Decisions waiting for approval, as far as this replica knows (see :meth:`sync`).

        Safe from other threads too (the metrics reader's): it walks a copy of the ids,
        taken in one step, while the event loop may be adding and removing them."""
        found = (self.decisions.get(i) for i in list(self._pending))
        return [d for d in found if d is not None and d.state == "PENDING_APPROVAL"]

    async def review(
        self,
        decision_id: str,
        reviewer: str,
        approve: bool,
        reason: str,
        digest: bytes,
        *,
        now: dt.datetime | None = None,
    ) -> Decision:
        """An overseer's approval or denial; the review is recorded before it takes effect."""
        with self._span("govgate.review") as span:
            span.set_attributes({"govgate.decision.id": decision_id,
                                 "govgate.review.approve": approve})  # fmt: skip
            _check_text(reason, "reason")
            # A review record written for a cancelled call must still take effect here (and
            # an action it lets run must get its outcome), as a proposal's does.
            d = await self._to_the_end(
                self._reviews(decision_id, reviewer, approve, reason, digest, now)
            )
            _annotate(span, d)
            return d

    async def _reviews(
        self, decision_id: str, reviewer: str, approve: bool, reason: str, digest: bytes,
        now: dt.datetime | None,
    ) -> Decision:  # fmt: skip
        for _ in range(_CLAIM_TRIES):
            try:
                return await self._review(decision_id, reviewer, approve, reason, digest,
                                          now or dt.datetime.now(dt.UTC))  # fmt: skip
            except ClaimedError:  # another replica reviewed it, or halted, first
                continue  # _review syncs before it looks again
        raise LedgerUnavailableError("other replicas kept changing the state; retry")

    async def _review(
        self, decision_id: str, reviewer: str, approve: bool, reason: str, digest: bytes,
        now: dt.datetime,
    ) -> Decision:  # fmt: skip
        d = await self.get(decision_id)  # with other replicas: after catching up with them
        p = self._pending.get(decision_id)
        if p is None or d.state != "PENDING_APPROVAL":
            raise ReviewRefusedError("not-pending", f"decision {decision_id} is {d.state}")
        if p.expired(now):
            await self._expire(d, p)
            raise ReviewRefusedError("expired", f"decision {decision_id} expired")
        # The step this review takes, as known now: a step another replica records while
        # this one plans makes the claim clash (the review is then tried again, knowing it).
        step = self._step(d)
        trial = Pending(p.decision_id, p.requester, p.digest, p.required, p.deadline,
                        p.reason_required, list(p.reviews))  # fmt: skip
        try:
            result = trial.review(reviewer, approve, reason, digest, now)
        except ApprovalError as err:
            raise ReviewRefusedError(err.code, str(err)) from err
        seen = self._state.halt_version  # before the halts are read (see _decide)
        if result is ReviewOutcome.READY:  # it would run now: the stop switch has the last word
            halt = await self._halt_covering(d.action.target)
            if halt is not None:
                raise ReviewRefusedError(
                    "halted",
                    f"the stop switch for {halt.describe()} is on; approve after it is resumed",
                )
        kind = "approval" if approve else "denial"
        body: dict[str, Any] = {"reviewer": reviewer, "reason": reason, "digest": digest.hex()}
        ready = result is ReviewOutcome.READY
        if ready:  # this review lets it run: record the plan with it
            await self._plan(d)
            if d.plan is not None:
                body["plan"] = _plan_record(d.plan)
            if self.replica:
                body["replica"] = self.replica
        # The halt check and the plan may have taken a while: the deadline holds when the
        # review is recorded, not only when it arrived.
        if p.expired(max(now, dt.datetime.now(dt.UTC))):
            await self._expire(d, p)
            raise ReviewRefusedError("expired", f"decision {decision_id} expired")
        # of=d: a sync on this replica that meets the record while it is being written
        # waits for this call to reflect it (_record), and does not apply it again.
        rec = await self._record(
            Draft(kind, body, actor=reviewer, target=str(d.action.target),
                  decision_id=decision_id, trace_id=d.trace_id,
                  claims=(step,), unclaimed=(f"halt:{seen + 1}",) if ready else ()), of=d,
        )  # fmt: skip
        if ready:
            d.executor = self.replica
        p.review(reviewer, approve, reason, digest, now)  # recorded: now it counts
        d.reviews.append({"reviewer": reviewer, "approved": approve, "reason": reason,
                          "ledger_index": rec.index, "time": _utc(now)})  # fmt: skip
        if self.metrics is not None and result is not ReviewOutcome.WAITING:
            self.metrics.reviewed((now - d.created).total_seconds())
        if result is ReviewOutcome.DENIED:
            d.state = "DENIED"
            d.reasons.append(f"denied by {reviewer}: {reason}")
            self._pending.pop(decision_id, None)
        elif result is ReviewOutcome.READY:
            self._pending.pop(decision_id, None)
            d.state = "EXECUTING"
            d.changed.set()
            await self._execute(d)
        d.changed.set()
        return d

    @staticmethod
    def _step(d: Decision) -> str:
        """The claim of a pending decision's next step (a review or its expiry): one
        replica's step at a time, each made knowing the ones before it."""
        return f"step:{d.decision_id}:{len(d.reviews) + 1}"

    def _halted(self, target: Target, labels: Mapping[str, str] | None) -> Halt | None:
        """The first halt in force that covers ``target`` (``labels`` None: not yet known)."""
        return next((h for h in self._halts if h.covers(target, labels)), None)

    async def _halt_covering(self, target: Target) -> Halt | None:
        halt = self._halted(target, None)
        if halt is None and any(h.selector for h in self._halts):
            try:
                labels = (await self.adapters[target.runtime].describe(target)).labels
            except AdapterError as err:  # fail closed: it may be in a halted scope
                raise ReviewRefusedError(
                    "halted", f"cannot read {target}'s labels to check the stop switch: {err}"
                ) from err
            halt = self._halted(target, labels)
        return halt

    async def rollback(self, decision_id: str, reason: str, actor: str) -> Decision:
        """Revert an executed, reversible decision through its adapter; recorded first."""
        with self._span("govgate.rollback") as span:
            span.set_attribute("govgate.decision.id", decision_id)
            _check_text(reason, "reason")
            d = await self._rollback(decision_id, reason, actor)
            _annotate(span, d)
            return d

    async def _rollback(self, decision_id: str, reason: str, actor: str) -> Decision:
        d = await self.get(decision_id)
        outcome = d.result
        if d.state != "EXECUTED" or outcome is None:
            raise ReviewRefusedError("not-executed", f"decision {decision_id} is {d.state}")
        if outcome.plan.reversibility is not Reversibility.REVERSIBLE:
            raise ReviewRefusedError(
                "irreversible", f"{d.action.verb} on {d.action.target} cannot be rolled back"
            )
        if outcome.status is OutcomeStatus.ALREADY:
            # Nothing changed: "undoing" it would change what was there before (a start
            # that found the domain running would power it off).
            raise ReviewRefusedError(
                "nothing-changed",
                f"{d.action.target} was already as {d.action.verb} wanted it: there is nothing "
                "to roll back",
            )
        if not reason.strip():
            raise InvalidRequestError("a rollback needs a reason", field="reason")
        if d.ledger_index in self._rolling_back or self._replay.rolling(decision_id):
            # One at a time: a rollback under way (here, or recorded through another
            # replica, without its outcome yet) would otherwise be run a second time.
            raise ReviewRefusedError(
                "not-executed", f"decision {decision_id} is being rolled back already"
            )
        body: dict[str, Any] = {"reason": reason, "plan_id": outcome.plan.id}
        if self.replica:
            body["replica"] = self.replica
        # Held (for the replay floor) from before its record: a call cancelled during the
        # append may leave the record written, unknown here. The decision's own record
        # comes before any rollback of it.
        self._rolling_back[d.ledger_index] += 1
        try:
            await self._record(
                Draft("rollback", body, actor=actor, target=str(d.action.target),
                      decision_id=decision_id, trace_id=d.trace_id,
                      claims=(f"rollback:{decision_id}:{d.rollbacks + 1}",)), of=d,
            )  # fmt: skip
        except ClaimedError:
            self._rolling_back -= Counter([d.ledger_index])  # refused: nothing was written
            raise ReviewRefusedError(
                "not-executed",
                f"decision {decision_id} is being rolled back through another replica",
            ) from None
        d.rollbacks += 1
        try:
            with self._span("govgate.revert", current=False):
                reverted = await self.adapters[d.action.target.runtime].revert(outcome)
        except AdapterError as err:
            body = {"status": "failed", "detail": str(err), "rollback": True}
        else:
            body = {"status": reverted.status.value, "detail": reverted.detail,
                    "after": reverted.after.to_record(), "rollback": True}  # fmt: skip
            d.state = "ROLLED_BACK"
            d.result = None
        await self._record(
            Draft("outcome", body, target=str(d.action.target), decision_id=decision_id,
                  trace_id=d.trace_id), of=d,
        )  # fmt: skip
        self._rolling_back -= Counter([d.ledger_index])
        d.reasons.append(f"rolled back by {actor}: {reason}" if d.state == "ROLLED_BACK"
                         else f"rollback by {actor} failed: {body['detail']}")  # fmt: skip
        d.changed.set()
        return d

    async def report_incident(
        self, decision_id: str, harmful: bool, severity: str, description: str, actor: str
    ) -> int:
        """Label a past decision's outcome (post-market monitoring); returns the record index."""
        _check_text(description, "description")
        d = await self.get(decision_id)
        if severity not in ("", "minor", "major", "critical", "serious"):
            raise InvalidRequestError("must be minor, major, critical or serious", field="severity")
        rec = await self._record(
            Draft("incident", {"harmful": harmful, "severity": severity or "minor",
                               "description": description}, actor=actor,
                  target=str(d.action.target), decision_id=decision_id, trace_id=d.trace_id)
        )  # fmt: skip
        return int(rec.index)

    async def _expire(self, d: Decision, p: Pending) -> None:
        with self._span("govgate.expire") as span:
            try:
                await self._record(
                    Draft("expiry", {"deadline": _utc(p.deadline), "approvals": len(p.approvers)},
                          target=str(d.action.target), decision_id=d.decision_id,
                          trace_id=d.trace_id, claims=(self._step(d),)), of=d,
                )  # fmt: skip
            except ClaimedError:  # another replica expired or reviewed it: take its word
                await self.sync()
                return
            self._pending.pop(d.decision_id, None)
            d.state = "EXPIRED"
            d.changed.set()
            _annotate(span, d)

    async def expire_overdue(self, now: dt.datetime | None = None) -> int:
        """Record EXPIRED for every pending decision past its deadline; returns how many."""
        now = now or dt.datetime.now(dt.UTC)
        await self.sync()
        overdue = [i for i, p in self._pending.items() if p.expired(now)]
        expired = 0
        for decision_id in overdue:
            d, p = self.decisions.get(decision_id), self._pending.get(decision_id)
            if d is None:  # pending decisions stay in the cache: this one was never recorded
                self._pending.pop(decision_id, None)
                continue
            if p is None:  # reviewed meanwhile
                continue
            await self._expire(d, p)
            expired += d.state == "EXPIRED"
        return expired

    async def halt(self, scope: Halt, reason: str, actor: str) -> Switched:
        with self._span("govgate.halt") as span:
            span.set_attribute("govgate.halt.scope", scope.describe())
            if not reason.strip():
                raise InvalidRequestError("a halt needs a reason", field="reason")
            _check_text(reason, "reason")
            if scope.runtime and scope.runtime not in self.adapters:
                # A misspelt runtime would halt nothing while looking like a halt. (Resume
                # takes any scope: a halt recorded before, or by another replica, must lift.)
                known = ", ".join(sorted(self.adapters)) or "none"
                raise InvalidRequestError(
                    f"no runtime {scope.runtime!r} here (this gateway's runtimes: {known})",
                    field="scope.runtime",
                )
            return await self._switch("halt", scope, reason, actor)

    async def resume(self, scope: Halt, reason: str, actor: str) -> Switched:
        with self._span("govgate.resume") as span:
            span.set_attribute("govgate.halt.scope", scope.describe())
            if not reason.strip():
                raise InvalidRequestError("a resume needs a reason", field="reason")
            _check_text(reason, "reason")
            return await self._switch("resume", scope, reason, actor)

    async def _switch(self, kind: str, scope: Halt, reason: str, actor: str) -> Switched:
        """Record a halt or a resume as the next halt version (claimed: one per version,
        across replicas), then apply it."""
        for _ in range(_CLAIM_TRIES):
            await self.sync()
            if kind == "resume" and scope not in self._halts:
                raise ReviewRefusedError(
                    "not-halted", f"no halt for {scope.describe()} is in force"
                )
            version = self._state.halt_version + 1
            body = {"scope": scope.to_json(), "reason": reason, "version": version}
            try:
                rec = await self._record(
                    Draft(kind, body, actor=actor, claims=(f"halt:{version}",))
                )
            except ClaimedError:
                continue
            self._state.halt_version = max(self._state.halt_version, version)
            if kind == "halt" and scope not in self._halts:
                self._halts.append(scope)
            elif kind == "resume":
                self._halts[:] = [h for h in self._halts if h != scope]
            return Switched(int(rec.index), version)
        raise LedgerUnavailableError("other replicas kept changing the halts; retry")
