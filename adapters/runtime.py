"""The runtime adapter seam: one async interface over libvirt, Kata and whatever comes next.

:class:`RuntimeAdapter` is what the gateway holds for each runtime. Its public
methods are fixed here; a concrete adapter implements the ``_``-prefixed
hooks. The public methods add what every adapter must do the same way:

* every call is bounded by a deadline (:class:`Deadlines`); a hook that runs
  over it raises :class:`~adapters.errors.AdapterTimeoutError` (the runtime
  call itself may still finish in its worker thread, which is why
  :meth:`reconcile` exists);
* :meth:`execute` is idempotent twice over: the hooks check the target's state
  before acting (starting a running domain does nothing), and a plan already
  executed by this adapter returns its first outcome, marked ``already``,
  without touching the runtime again (a second reboot is not a no-op);
* :meth:`revert` refuses verbs declared irreversible in :data:`~adapters.action.VERBS`.

The flow the gateway follows::

    state = await adapter.describe(target)          # facts for the risk model
    plan = await adapter.plan(action, state)        # validated, undo captured
    ...record the decision in the ledger...
    outcome = await adapter.execute(plan)           # applied or already so
    ...record the outcome...
    later: await adapter.revert(outcome)            # where reversible
    after a crash: await adapter.reconcile(plan)    # did it take effect?
"""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import enum
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from adapters.action import VERBS, Action, PowerState, Reversibility, RuntimeState, Target, Verb
from adapters.errors import (
    AdapterTimeoutError,
    InvalidActionError,
    NotFoundError,
    UnsupportedError,
)

__all__ = [
    "Deadlines",
    "LifecycleEvent",
    "Outcome",
    "OutcomeStatus",
    "Plan",
    "Reconciliation",
    "RuntimeAdapter",
    "new_id",
]

T = TypeVar("T")


class _Ids:
    """Random 128-bit ids as hex, like ``uuid.uuid4().hex`` but from one ``os.urandom`` call
    per 256 ids: the system call costs tens of microseconds on busy hosts."""

    _BATCH = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool = b""

    def __call__(self) -> str:
        with self._lock:
            if not self._pool:
                self._pool = os.urandom(self._BATCH)
            chunk, self._pool = self._pool[:16], self._pool[16:]
        return chunk.hex()


new_id = _Ids()  # plan and decision ids


@dataclass(frozen=True)
class Deadlines:
    """Seconds each kind of call may take, by default. A caller may pass a shorter one."""

    describe: float = 2.0
    plan: float = 5.0
    execute: float = 120.0  # a graceful shutdown waits for the guest
    revert: float = 120.0
    reconcile: float = 10.0


@dataclass(frozen=True)
class Plan:
    """A validated action on one target, with what is needed to undo it."""

    id: str
    action: Action
    before: RuntimeState
    desired: Mapping[str, Any]  # what execute achieves, for reconcile (verb-specific)
    undo: Mapping[str, Any]  # what revert needs (verb-specific), captured before acting
    reversibility: Reversibility

    @property
    def target(self) -> Target:
        return self.action.target

    def to_json(self) -> dict[str, Any]:
        return {
            "plan_id": self.id,
            "action": self.action.to_record(),
            "before": self.before.to_record(),
            "desired": dict(self.desired),
            "undo": dict(self.undo),
            "reversibility": self.reversibility.value,
        }


class OutcomeStatus(enum.StrEnum):
    APPLIED = "applied"  # the runtime changed
    ALREADY = "already"  # the target was already as desired (or the plan ran before)
    REVERTED = "reverted"  # a revert restored the prior state


@dataclass(frozen=True)
class Outcome:
    plan: Plan
    status: OutcomeStatus
    after: RuntimeState
    detail: str = ""
    finished: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def to_json(self) -> dict[str, Any]:
        return {
            "plan_id": self.plan.id,
            "verb": self.plan.action.verb.value,
            "target": str(self.plan.target),
            "status": self.status.value,
            "after": self.after.to_record(),
            "detail": self.detail,
            "finished": self.finished.isoformat().replace("+00:00", "Z"),
        }


@dataclass(frozen=True)
class Reconciliation:
    """What the runtime's real state says about a plan after a crash."""

    plan: Plan
    took_effect: bool | None  # None: the runtime cannot tell (a reboot leaves no trace)
    state: RuntimeState
    detail: str


@dataclass(frozen=True)
class LifecycleEvent:
    """A change the runtime reports, whoever caused it (the gateway records the others)."""

    target: Target
    event: str  # started, stopped, suspended, resumed, defined, undefined, ...
    detail: str  # the runtime's reason (booted, shutdown, destroyed, migrated, ...)
    time: dt.datetime


# Executed plans remembered, so that a plan executed twice returns its first outcome. Each
# is a dozen objects the garbage collector walks in every full collection: 10,000 made
# those collections 40-60 ms pauses of the gateway's event loop.
_REMEMBERED_PLANS = 1_000


class RuntimeAdapter(abc.ABC):
    """One runtime. Subclasses implement the hooks; callers use the public methods."""

    runtime: str  # "libvirt", "kata"

    def __init__(self, deadlines: Deadlines | None = None) -> None:
        self.deadlines = deadlines or Deadlines()
        self._executed: OrderedDict[str, Outcome] = OrderedDict()

    async def __aenter__(self) -> RuntimeAdapter:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @staticmethod
    def _limit(timeout: float | None, default: float) -> float:
        """A call's bound: the caller's, if shorter than the adapter's own deadline."""
        return default if timeout is None else min(timeout, default)

    # -- public interface ---------------------------------------------------------------

    async def open(self) -> None:
        """Connect (adapters also connect lazily on first use)."""
        await self._bounded(self._open(), self.deadlines.describe, "connect")

    async def close(self) -> None:
        await self._close()

    async def describe(self, target: Target, *, timeout: float | None = None) -> RuntimeState:
        """The target's current state. Raises NotFoundError for an unknown target."""
        self._check_runtime(target)
        return await self._bounded(
            self._describe(target),
            self._limit(timeout, self.deadlines.describe),
            f"describe {target}",
        )

    async def plan(
        self, action: Action, state: RuntimeState | None = None, *, timeout: float | None = None
    ) -> Plan:
        """Validate ``action`` against the target and capture what undoing it needs."""
        self._check_runtime(action.target)
        limit = self._limit(timeout, self.deadlines.plan)

        async def build() -> Plan:
            before = state if state is not None else await self._describe_for_plan(action)
            desired, undo = await self._plan(action, before)
            return Plan(
                id=new_id(),
                action=action,
                before=before,
                desired=desired,
                undo=undo,
                reversibility=self._reversibility(action, before),
            )

        return await self._bounded(build(), limit, f"plan {action.verb} {action.target}")

    async def execute(self, plan: Plan, *, timeout: float | None = None) -> Outcome:
        """Apply a plan; a plan already executed here returns its first outcome as ``already``."""
        done = self._executed.get(plan.id)
        if done is not None:
            return Outcome(plan, OutcomeStatus.ALREADY, done.after, "this plan was executed before")
        outcome = await self._bounded(
            self._execute(plan),
            self._limit(timeout, self.deadlines.execute),
            f"{plan.action.verb} {plan.target}",
        )
        self._executed[plan.id] = outcome
        while len(self._executed) > _REMEMBERED_PLANS:
            self._executed.popitem(last=False)
        return outcome

    async def revert(self, outcome: Outcome, *, timeout: float | None = None) -> Outcome:
        """Restore the state captured before ``outcome``'s plan ran, where the verb allows."""
        plan = outcome.plan
        if plan.reversibility is Reversibility.IRREVERSIBLE:
            raise UnsupportedError(f"{plan.action.verb} on {plan.target} cannot be undone")
        if plan.reversibility is Reversibility.NOTHING_TO_UNDO:
            raise UnsupportedError(
                f"{plan.action.verb} on {plan.target} left it where it began: nothing to undo"
            )
        if outcome.status is OutcomeStatus.ALREADY:
            # It changed nothing: "undoing" it would undo what someone else did (delete a
            # sandbox created meanwhile by another client, stop a domain that was running).
            raise UnsupportedError(
                f"{plan.target} was already as {plan.action.verb} wanted it: nothing to undo"
            )
        return await self._bounded(
            self._revert(outcome),
            self._limit(timeout, self.deadlines.revert),
            f"revert {plan.action.verb} {plan.target}",
        )

    async def reconcile(self, plan: Plan, *, timeout: float | None = None) -> Reconciliation:
        """After a crash: did ``plan`` take effect? Read from the runtime's real state."""
        return await self._bounded(
            self._reconcile(plan),
            self._limit(timeout, self.deadlines.reconcile),
            f"reconcile {plan.action.verb} {plan.target}",
        )

    def events(self) -> AsyncIterator[LifecycleEvent]:
        """Lifecycle events from the runtime, as they happen (one consumer)."""
        return self._events()

    # -- hooks -------------------------------------------------------------------------

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...

    @abc.abstractmethod
    async def _describe(self, target: Target) -> RuntimeState: ...

    @abc.abstractmethod
    async def _plan(
        self, action: Action, before: RuntimeState
    ) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        """(desired, undo) for the plan, or raise InvalidActionError/ConflictError/..."""

    @abc.abstractmethod
    async def _execute(self, plan: Plan) -> Outcome: ...

    @abc.abstractmethod
    async def _revert(self, outcome: Outcome) -> Outcome: ...

    async def _reconcile(self, plan: Plan) -> Reconciliation:
        """Judge from the target's power state and size; :meth:`_judge` for the rest."""
        state = await self._describe_or_absent(plan.target)
        verb, desired = plan.action.verb, plan.desired
        took: bool | None
        match verb:
            case Verb.CREATE:
                took = state.power is not PowerState.ABSENT
            case Verb.DELETE:
                took = state.power is PowerState.ABSENT
            case Verb.START | Verb.RESUME:
                took = state.power is PowerState.RUNNING
            case Verb.SHUTDOWN | Verb.DESTROY | Verb.SAVE:
                # A transient domain is gone once it stops: absent is off, for it.
                gone = state.power is PowerState.ABSENT and plan.before.persistent is False
                took = state.power is PowerState.SHUTOFF or gone
            case Verb.SUSPEND:
                took = state.power is PowerState.PAUSED
            case Verb.RESIZE:
                now = (
                    state.vcpus if desired["vcpus"] else None,
                    state.memory_mib if desired["memory_mib"] else None,
                )
                want = (desired["vcpus"], desired["memory_mib"])
                # 0 in an undo: no limit (a sandbox's), which a state shows as unknown (None).
                was = tuple(w or None for w in (plan.undo["vcpus"], plan.undo["memory_mib"]))
                took = True if now == want else False if now == was else None
            case _:
                took = await self._judge(plan, state)
        if took is None:
            detail = f"the runtime's state does not show whether {verb} took effect"
        else:
            detail = "took effect" if took else "did not take effect"
        return Reconciliation(plan, took, state, detail)

    async def _judge(self, plan: Plan, state: RuntimeState) -> bool | None:
        """Reconcile verbs whose effect is not in the power state or size (None: unknowable)."""
        return None

    async def _describe_or_absent(self, target: Target) -> RuntimeState:
        """The target's state, or ``absent`` where it does not exist (after a delete)."""
        try:
            return await self._describe(target)
        except NotFoundError:
            return RuntimeState(power=PowerState.ABSENT)

    @abc.abstractmethod
    def _events(self) -> AsyncIterator[LifecycleEvent]:
        """Start listening now (events after this call are kept) and return the stream."""

    async def _describe_for_plan(self, action: Action) -> RuntimeState:
        try:
            return await self._describe(action.target)
        except NotFoundError:
            if action.verb is Verb.CREATE:  # creating is the one verb for an absent target
                return RuntimeState(power=PowerState.ABSENT)
            raise

    def _check_shutdown_wait(self, action: Action, after_wait: float) -> None:
        """Refuse a shutdown's ``timeout_s`` that leaves no room, within the execute
        deadline, for what comes after the wait (``after_wait`` seconds: a forced stop):
        past the deadline the outcome would be unknown and the force would never come."""
        wait = action.param("timeout_s") if action.verb is Verb.SHUTDOWN else None
        most = self.deadlines.execute - after_wait
        if wait is not None and not 0 <= float(wait) <= most:
            raise InvalidActionError(
                f"must be 0 to {most:g} seconds (actions have {self.deadlines.execute:g})",
                field="action.parameters.timeout_s",
            )

    def _reversibility(self, action: Action, before: RuntimeState) -> Reversibility:
        declared = VERBS[action.verb].reversibility
        if action.verb is Verb.DESTROY and before.persistent is False:
            return Reversibility.IRREVERSIBLE  # a transient domain is gone once destroyed
        return declared

    # -- helpers -----------------------------------------------------------------------

    def _check_runtime(self, target: Target) -> None:
        if target.runtime != self.runtime:
            raise InvalidActionError(
                f"this is the {self.runtime} adapter, not {target.runtime}",
                field="action.target.runtime",
            )

    @staticmethod
    async def _bounded(work: Awaitable[T], seconds: float, what: str) -> T:
        try:
            async with asyncio.timeout(seconds):
                return await work
        except TimeoutError:
            raise AdapterTimeoutError(f"{what} did not finish within {seconds:g} s") from None
