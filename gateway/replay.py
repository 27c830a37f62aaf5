"""The gateway's state as a fold over its ledger: :class:`Replay`.

Everything the gateway keeps in process (the decisions and their request ids,
pending approvals with the reviews they have, halts in force, what a rollback
needs, the recent-activity counts) is a function of the records in the ledger.
:class:`Replay` computes it from records fed in index order. It serves twice:

* at start-up, over the whole ledger (:func:`gateway.recovery.recover`);
* while running, over the records other replicas append to a shared store
  (``live``): it then updates the gateway's own containers in place, and a
  record already reflected in a decision (its index is at most the decision's
  ``applied``) is not applied again, so the gateway's own records can pass
  through it too.

A record this module cannot read (a body written by hand with
``govgate ledger append``, say) is skipped and named in :attr:`Replayed.skipped`.
"""

from __future__ import annotations

import datetime as dt
from array import array
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.action import Action, Reversibility, RuntimeState
from adapters.errors import AdapterError
from adapters.runtime import Outcome, OutcomeStatus, Plan
from explain.explanation import Explanation
from explain.features import FEATURE_NAMES, Context, featurize
from gateway.approvals import ApprovalError, Pending, ReviewOutcome
from gateway.decision import Decision, Halt
from ledger.record import Record, parse_time

__all__ = ["Replay", "Replayed", "Times"]

RECENT = dt.timedelta(hours=1)  # the featurizer's "recent actions" window


class Times:
    """The times (POSIX seconds) of a target's recent actions, oldest first as they come:
    8 bytes each in an array, where a deque of floats takes 32. Every action of the last
    hour is kept, since the risk model counts them exactly."""

    __slots__ = ("_at", "_first")

    def __init__(self) -> None:
        self._at = array("d")
        self._first = 0  # the times before this one are dropped

    def append(self, t: float) -> None:
        self._at.append(t)

    def count_since(self, cutoff: float) -> int:
        """Drop the leading times before ``cutoff``; how many are left."""
        at, first = self._at, self._first
        while first < len(at) and at[first] < cutoff:
            first += 1
        if first > 1024 and first * 2 > len(at):  # now and then, give the space back
            del at[:first]
            first = 0
        self._first = first
        return len(at) - first

    def __len__(self) -> int:
        return len(self._at) - self._first

    def __iter__(self) -> Iterator[float]:
        return iter(self._at[self._first :])


@dataclass
class Replayed:
    """The gateway's state as its ledger records it."""

    # The live decisions and the most recent final ones (older ones are read back on demand).
    decisions: OrderedDict[str, Decision] = field(default_factory=OrderedDict)
    # request id: (decision id, digest), the most recent ones (the rest: the ledger's claims)
    by_request: OrderedDict[str, tuple[str, bytes]] = field(default_factory=OrderedDict)
    # ... and every one of those recorded before the store kept claims (never let go)
    unclaimed: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)
    halts: list[Halt] = field(default_factory=list)
    recent: defaultdict[str, Times] = field(default_factory=lambda: defaultdict(Times))
    unfinished: list[Decision] = field(default_factory=list)  # allowed to run, no outcome yet
    rollbacks: list[str] = field(default_factory=list)  # decision ids: a rollback, no outcome
    policy_id: str = ""  # of the last ``policy`` record
    halt_version: int = 0  # halt and resume records so far (their claims: halt:N)
    last_index: int = -1  # of the last record fed
    records: int = 0
    foreign: int = 0  # decision records no gateway wrote (no request id): left alone
    skipped: list[str] = field(default_factory=list)  # "record 12 (decision): why"


class _Unreadable(Exception):
    pass


def _text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key, "")
    if not isinstance(value, str):
        raise _Unreadable(f"{key} is not a string")
    return value


def _plan(action: Action, before: RuntimeState, obj: Any) -> Plan:
    if not isinstance(obj, Mapping):
        raise _Unreadable("plan is not an object")
    try:
        return Plan(
            id=str(obj["plan_id"]),
            action=action,
            before=before,
            desired=dict(obj["desired"]),
            undo=dict(obj["undo"]),
            reversibility=Reversibility(obj["reversibility"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise _Unreadable(f"plan: {err}") from None


def _explanation(
    body: Mapping[str, Any], action: Action, state: RuntimeState, at: dt.datetime
) -> Explanation | None:
    if "risk" not in body:
        return None
    try:
        contributions = {n: float(body["contributions"][n]) for n in FEATURE_NAMES}
        vector = featurize(action, state, Context(now=at))
        return Explanation(
            risk=float(body["risk"]),
            base_value=float(body["base_value"]),
            contributions=contributions,
            values={n: float(v) for n, v in zip(FEATURE_NAMES, vector, strict=True)},
            model_id=_text(body, "model_id"),
            schema_version=_text(body, "schema_version"),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise _Unreadable(f"explanation: {err}") from None


def _scope(rec: Record) -> Halt:
    scope = rec.body.get("scope")
    if not isinstance(scope, Mapping):
        raise _Unreadable("scope is not an object")
    return Halt.from_json(scope)


class Replay:
    """Feed every record in index order; :meth:`result` is the state they add up to.

    ``replica``: the replica whose interrupted work :meth:`result` lists as unfinished
    (work recorded by no replica in particular counts as anyone's); "" lists all.
    """

    def __init__(
        self, now: dt.datetime | None = None, *, keep: int = 1_000, requests: int = 10_000,
        claims_from: int = 0, replica: str = "", floor: int = 0,
    ) -> None:  # fmt: skip
        self._now = now or dt.datetime.now(dt.UTC)
        self._keep = keep  # final decisions kept; the rest are only remembered by id
        self._requests = requests  # request ids kept; older ones are in the ledger's claims
        self._claims_from = claims_from  # decisions below this index may have no claim
        self._replica = replica
        # Records from here on are fed in full; below it only halts, resumes and policies
        # (gateway.recovery, "Replay floor"). A decision whose own record lies below it was
        # final there, so a later record of it is treated as one of a decision no longer kept.
        self._floor = floor
        self._gone: set[str] = set()  # ids of final decisions no longer kept
        self._state = Replayed()
        self._before: dict[str, RuntimeState] = {}  # the described state, for plans
        self._rolling: dict[str, str] = {}  # decision id: replica; a rollback, no outcome
        self._foreign: set[str] = set()  # decision ids of records no gateway wrote
        self.live = False  # following a running gateway's state (see the module's docs)
        self.touched: set[str] = set()  # decisions changed since the caller last cleared it

    @property
    def state(self) -> Replayed:
        return self._state

    def follow(self, state: Replayed) -> None:
        """From now on, update ``state`` (a running gateway's containers) in place."""
        self._state, self.live = state, True
        self._gone.clear()  # the gateway reads back what it does not hold

    def skip(self, index: int) -> None:
        """Pass over record ``index`` unread: one whose every effect is reflected already
        (a live gateway's own, :meth:`gateway.pipeline.Gateway.sync`)."""
        self._state.records += 1
        self._state.last_index = index

    def passes_over(self, decision_id: str) -> bool:
        """Whether :meth:`feed` would change nothing for an ``outcome`` record of
        ``decision_id`` (a live gateway's catch-up then leaves it unopened): the decision is
        not held here, and no rollback of it is waiting for its outcome."""
        return (self.live and decision_id != "" and decision_id not in self._state.decisions
                and decision_id not in self._rolling)  # fmt: skip

    def feed(self, rec: Record) -> None:
        self._state.records += 1
        self._state.last_index = rec.index
        handler = getattr(self, f"_on_{rec.kind}", None)
        if handler is None or (rec.decision_id and rec.decision_id in self._foreign):
            return
        held = self._state.decisions.get(rec.decision_id) if rec.decision_id else None
        if held is not None and rec.index <= held.applied:
            return  # already reflected: the gateway wrote it itself, or read it back
        if held is None and self.live and rec.decision_id and rec.kind != "decision":
            # Not held here (another replica's, or gone from the cache): read back from the
            # ledger, this record with it, if asked; but a rollback under way counts now.
            self._track_rollback(rec)
            return
        decided_below_floor = (held is None and self._floor > 0 and rec.index >= self._floor
                       and rec.decision_id != "" and rec.kind != "decision")  # fmt: skip
        if rec.decision_id in self._gone or decided_below_floor:  # final: read back if asked
            self._track_rollback(rec)
            return
        try:
            handler(rec)
        except (_Unreadable, AdapterError, ValueError, TypeError, KeyError, AttributeError) as err:
            # Whatever a record holds, it never stops the gateway from starting.
            self._state.skipped.append(f"record {rec.index} ({rec.kind}): {err}")
            return
        d = self._state.decisions.get(rec.decision_id) if rec.decision_id else None
        if d is not None:
            d.applied = max(d.applied, rec.index)
            self.touched.add(rec.decision_id)

    def _track_rollback(self, rec: Record) -> None:
        """Keep :meth:`rolling` true from a rollback record to its outcome, for a decision
        that is not held."""
        if rec.kind == "rollback":
            self._rolling[rec.decision_id] = str(rec.body.get("replica", ""))
        elif rec.kind == "outcome" and rec.body.get("rollback"):
            self._rolling.pop(rec.decision_id, None)

    def rolling(self, decision_id: str) -> bool:
        """Whether a rollback of ``decision_id`` is recorded without its outcome yet."""
        return decision_id in self._rolling

    def rollback_finished(self, decision_id: str) -> None:
        """The gateway recorded the outcome of ``decision_id``'s interrupted rollback."""
        self._rolling.pop(decision_id, None)

    def _mine(self, replica: str) -> bool:
        return not self._replica or replica in ("", self._replica)

    def result(self) -> Replayed:
        s = self._state
        s.last_index = max(s.last_index, self._floor - 1)  # every record below was accounted for
        s.unfinished = [d for d in s.decisions.values()
                        if d.state == "EXECUTING" and self._mine(d.executor)]  # fmt: skip
        s.rollbacks = sorted(i for i, by in self._rolling.items() if self._mine(by))
        return s

    def _trim(self) -> None:
        if self.live:
            return  # the gateway trims its own cache
        decisions, spared = self._state.decisions, 0
        while len(decisions) > self._keep and spared < len(decisions):
            oldest_id, oldest = next(iter(decisions.items()))
            if oldest.final and oldest.state != "":
                del decisions[oldest_id]
                self._before.pop(oldest_id, None)
                self._gone.add(oldest_id)
            else:
                decisions.move_to_end(oldest_id)
                spared += 1

    def _decision(self, rec: Record) -> Decision:
        d = self._state.decisions.get(rec.decision_id)
        if d is None:
            raise _Unreadable(f"no decision {rec.decision_id!r} before it")
        return d

    # -- one handler per record kind -----------------------------------------------------

    def _on_decision(self, rec: Record) -> None:
        b = rec.body
        if "request_id" not in b:  # appended by hand or by a tool, not by a gateway
            if rec.decision_id:
                self._foreign.add(rec.decision_id)
            self._state.foreign += 1
            return
        at = parse_time(_text(b, "scored_at") or rec.time)
        verdict = _text(b, "verdict")
        if self.live and verdict != "PENDING_APPROVAL":
            # Another replica's decision (this gateway's own are reflected as it writes
            # them) that waits for nobody here: of it, this replica's decisions need only
            # the target's recent activity. The decision is read back from the ledger if
            # asked for, and its request id found by its claim (Gateway._recall).
            self._count_recent(rec.target, at)
            return
        action = Action.from_json(b.get("action"), "action")
        state = RuntimeState.from_json(b.get("state", {}), "state")
        digest = bytes.fromhex(_text(b, "digest"))
        reasons = b.get("reasons", [])
        d = Decision(
            decision_id=rec.decision_id,
            request_id=_text(b, "request_id"),
            requester=rec.actor,
            action=action,
            digest=digest,
            state=verdict,
            created=at,
            trace_id=rec.trace_id,
            dry_run=bool(b.get("dry_run")),
            fallback=bool(b.get("fallback")),
            policy_id=_text(b, "policy_id"),
            reasons=[str(r) for r in reasons] if isinstance(reasons, list) else [],
            approvals_required=int(b.get("approvals_required", 0)),
            ledger_index=rec.index,
            leaf_hash=rec.leaf_hash,
            executor=str(b.get("replica", "")),
        )
        d.explanation = _explanation(b, action, state, at)
        d.risk = None if d.explanation is None else d.explanation.risk
        if "plan" in b:
            d.plan = _plan(action, state, b["plan"])
        if verdict == "PENDING_APPROVAL":
            deadline = parse_time(_text(b, "deadline"))
            d.approval_deadline = deadline
            self._state.pending[d.decision_id] = Pending(
                d.decision_id, d.requester, digest, max(d.approvals_required, 1), deadline,
                bool(b.get("reason_required", True)),
            )  # fmt: skip
        s = self._state
        s.decisions[d.decision_id] = d
        s.by_request[d.request_id] = (d.decision_id, digest)
        if rec.index < self._claims_from:  # no claim to find it by later: keep it for good
            s.unclaimed[d.request_id] = (d.decision_id, digest)
        if not self.live and len(s.by_request) > 2 * self._requests:  # in bulk, as below
            while len(s.by_request) > self._requests:
                s.by_request.popitem(last=False)
        self._before[d.decision_id] = state
        if len(s.decisions) > 2 * self._keep:  # trimmed in bulk, not on every record
            self._trim()
        self._count_recent(str(action.target), at)

    def _count_recent(self, target: str, at: dt.datetime) -> None:
        """Count an action on ``target`` decided ``at`` among its recent ones, if it is."""
        if (dt.datetime.now(dt.UTC) if self.live else self._now) - at < RECENT:
            self._state.recent[target].append(at.timestamp())

    def _on_approval(self, rec: Record, approve: bool = True) -> None:
        d = self._decision(rec)
        p = self._state.pending.get(d.decision_id)
        if p is None:
            raise _Unreadable(f"decision {d.decision_id} was not pending")
        b = rec.body
        when = parse_time(rec.time)
        try:
            result = p.review(rec.actor, approve, _text(b, "reason"),
                              bytes.fromhex(_text(b, "digest")), when, recorded=True)  # fmt: skip
        except ApprovalError as err:
            raise _Unreadable(f"the review does not apply: {err}") from None
        d.reviews.append({"reviewer": rec.actor, "approved": approve, "reason": b.get("reason"),
                          "ledger_index": rec.index, "time": rec.time})  # fmt: skip
        if result is ReviewOutcome.DENIED:
            d.state = "DENIED"
            d.reasons.append(f"denied by {rec.actor}: {b.get('reason')}")
        elif result is ReviewOutcome.READY:
            d.state = "EXECUTING"
            d.executor = str(b.get("replica", ""))
            if "plan" in b:  # the state before: as the decision record had it
                before = self._before.get(d.decision_id)
                if before is None:  # a decision this replica wrote itself (never fed here)
                    before = d.plan.before if d.plan is not None else RuntimeState()
                d.plan = _plan(d.action, before, b["plan"])
        if result is not ReviewOutcome.WAITING:
            del self._state.pending[d.decision_id]

    def _on_denial(self, rec: Record) -> None:
        self._on_approval(rec, approve=False)

    def _on_expiry(self, rec: Record) -> None:
        d = self._decision(rec)
        self._state.pending.pop(d.decision_id, None)
        d.state = "EXPIRED"

    def _on_outcome(self, rec: Record) -> None:
        d = self._decision(rec)
        b = rec.body
        status = _text(b, "status")
        if b.get("rollback"):
            self._rolling.pop(d.decision_id, None)
            if status not in ("failed", "unknown"):
                d.state = "ROLLED_BACK"
                d.result = None
            return
        if status in ("failed", "unknown"):
            d.state = "FAILED"
        else:
            d.state = "EXECUTED"
            if d.plan is not None:
                after = RuntimeState.from_json(b.get("after", {}), "after")
                d.result = Outcome(
                    d.plan, OutcomeStatus(status), after, _text(b, "detail"), parse_time(rec.time)
                )
        d.outcome = dict(b) | {"ledger_index": rec.index}

    def _on_rollback(self, rec: Record) -> None:
        d = self._decision(rec)
        d.rollbacks += 1
        self._rolling[d.decision_id] = str(rec.body.get("replica", ""))

    def _new_halt_version(self, rec: Record) -> bool:
        """Count a halt or resume; False when it is already reflected. Each one claims the
        next version (``halt:N``), so a replica that wrote version N had seen every one
        before it: a version at most the current one is old news to a live gateway."""
        version = rec.body.get("version")  # absent from records before replicas shared a log
        if not isinstance(version, int) or isinstance(version, bool):
            version = self._state.halt_version + 1
        if self.live and version <= self._state.halt_version:
            return False
        self._state.halt_version = max(self._state.halt_version, version)
        return True

    def _on_halt(self, rec: Record) -> None:
        halt = _scope(rec)
        if self._new_halt_version(rec) and halt not in self._state.halts:
            self._state.halts.append(halt)

    def _on_resume(self, rec: Record) -> None:
        halt = _scope(rec)
        if self._new_halt_version(rec):
            self._state.halts[:] = [h for h in self._state.halts if h != halt]

    def _on_policy(self, rec: Record) -> None:
        self._state.policy_id = _text(rec.body, "policy_id")
