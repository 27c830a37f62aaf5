"""The gateway's value types: a :class:`Decision` and what became of it, and a :class:`Halt`.

They hold no I/O. :mod:`gateway.pipeline` makes and changes them, :mod:`gateway.recovery`
rebuilds them from the ledger, and :mod:`gateway.convert` puts them on the wire.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.action import Action, Target
from adapters.runtime import Outcome, Plan
from explain.explanation import Explanation
from gateway.selector import Selector, canonical, parse_selector, selector_matches

__all__ = ["Decision", "Halt"]


@dataclass(frozen=True)
class Halt:
    """A stop switch in force: everything, one runtime, or a label selector."""

    all: bool = False
    runtime: str = ""
    selector: Selector = ()

    def __post_init__(self) -> None:  # "environment=prod,tier=web" is "tier=web,env=prod"
        object.__setattr__(self, "selector", canonical(self.selector))

    def covers(self, target: Target, labels: Mapping[str, str] | None) -> bool:
        if self.all:
            return True
        if self.runtime:
            return target.runtime == self.runtime
        if labels is None:
            return False
        return selector_matches(self.selector, labels)

    def describe(self) -> str:
        if self.all:
            return "everything"
        if self.runtime:
            return f"runtime {self.runtime}"
        return ",".join(f"{k}={v}" for k, v in self.selector)

    def to_json(self) -> dict[str, Any]:
        return {"all": self.all, "runtime": self.runtime,
                "selector": ",".join(f"{k}={v}" for k, v in self.selector)}  # fmt: skip

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Halt:
        """The scope as :meth:`to_json` wrote it in a ``halt`` or ``resume`` record."""
        selector = str(obj.get("selector") or "")
        return cls(all=bool(obj.get("all")), runtime=str(obj.get("runtime") or ""),
                   selector=parse_selector(selector) if selector else ())  # fmt: skip


class Changes:
    """A decision's "it changed" signal, for any number of watchers. Each waits on the
    round it saw (:meth:`current`); :meth:`set` wakes every one of them and starts the
    next round, so no watcher clears what another has not seen yet."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.count = 0  # changes signalled so far

    def current(self) -> asyncio.Event:
        """Set at the next change (take it before reading the state it is about)."""
        return self._event

    def set(self) -> None:
        self.count += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    def is_set(self) -> bool:
        """Whether any change was signalled."""
        return self.count > 0


@dataclass
class Decision:
    """What the gateway decided about one proposal, and what became of it."""

    decision_id: str
    request_id: str
    requester: str
    action: Action
    digest: bytes
    state: str  # a DecisionState name: EXECUTED, PENDING_APPROVAL, DENIED, ...
    created: dt.datetime
    trace_id: str = ""
    dry_run: bool = False
    risk: float | None = None
    explanation: Explanation | None = None
    fallback: bool = False
    policy_id: str = ""
    reasons: list[str] = field(default_factory=list)
    approvals_required: int = 0
    ledger_index: int = -1
    leaf_hash: bytes = b""
    outcome: dict[str, Any] | None = None
    reviews: list[dict[str, Any]] = field(default_factory=list)
    plan: Plan | None = None  # recorded before it runs, so a restart can reconcile it
    respond_by: float | None = field(default=None, repr=False)  # the caller's deadline (loop time)
    approval_deadline: dt.datetime | None = None  # pending: EXPIRED after this
    result: Outcome | None = None  # what a rollback needs, once executed
    applied: int = -1  # the last ledger index reflected here (replicas: see gateway.replay)
    executor: str = ""  # the replica that runs it, once allowed to ("": the only one)
    rollbacks: int = 0  # rollback records so far
    changed: Changes = field(default_factory=lambda: Changes(), repr=False)

    @property
    def final(self) -> bool:
        return self.state not in ("PENDING_APPROVAL", "EXECUTING")
