"""Evidence from ledger records: one streaming pass, bounded memory, no I/O.

:class:`Evidence` is fed every record of a ledger in index order
(:meth:`Evidence.feed`) and every checkpoint line (:meth:`Evidence.checkpoint`),
and aggregates as it goes: counters, fixed histograms and small per-actor
tables. It never keeps a list of records, so memory depends on the number of
distinct verbs, reviewers, days and *open* approvals, not on the ledger's size.

Events are counted by their own record time in the period ``[start, end)``;
a record before the period still updates what later records need (the policy
in force, the decision an approval completes). This module holds the reading:
one handler per record kind, and the joining of parts read apart
(:meth:`Evidence.merge`). Its accumulators are in :mod:`compliance.tally`, the
sections that :meth:`Evidence.result` builds in :mod:`compliance.sections`; the
names other modules import from here are re-exported from those two. Invariant:
parts of a ledger read apart and merged in order give the result of one reading.

Example::

    ev = Evidence(Period.parse("2026-11-01", "2026-12-01"))
    for rec in records:
        ev.feed(rec)
    sections = ev.result()
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from compliance.sections import (
    APPROVAL_EDGES,
    ART73_DEADLINES,
    GAP_SECONDS,
    RETENTION_MINIMUM_DAYS,
    RISK_BINS,
    incident_event,
    model_event,
    policy_event,
    scope_event,
    sections,
)
from compliance.tally import (
    BATCH,
    MAP,
    Batches,
    Entry,
    Listed,
    ModelCard,
    Open,
    Period,
    PolicyText,
    Stats,
    number,
    rounded,
)
from ledger.record import format_time, parse_time

__all__ = [
    "ART73_DEADLINES",
    "RETENTION_MINIMUM_DAYS",
    "Entry",
    "Evidence",
    "ModelCard",
    "Period",
    "PolicyText",
]

# What Evidence.merge adds up, field by field.
_SUMMED = ("records", "in_period", "unreadable", "checkpoints_in_period", "decisions",
           "without_request_id", "dry_runs", "fallbacks", "explained", "shap_rows",
           "approvals", "denials", "completed", "expiries", "halted_decisions",
           "access_refusals", "recovered", "_drift_errors")  # fmt: skip
_COUNTED = ("kinds", "verdicts", "verbs", "runtimes", "fallback_verdicts", "by_model",
            "by_policy", "rollbacks", "outcomes", "rollback_outcomes", "severities",
            "_drift_n")  # fmt: skip
_TABLES = ("by_day", "reviewers")
_LISTED = ("policy_activations", "halts", "resumes", "incidents", "models")  # gaps: apart
_STATS = ("risk", "auto_executed_risk", "approved_risk", "time_to_approval")
_LOCAL = ("_policy_text", "_model_card", "_drift_rows", "_drift_recorded", "_shap",
          "_handlers", "_cards")  # fmt: skip


class Evidence:
    """Feed records in index order; :meth:`result` returns the evidence sections.

    A long ledger can be read in parts, each by its own evidence
    (:meth:`starting_at`), perhaps in another process, and the parts joined in order
    (:meth:`merge`)."""

    def __init__(
        self,
        period: Period,
        *,
        policy_text: Callable[[str, str], PolicyText | None] | None = None,
        model_card: Callable[[str], ModelCard | None] | None = None,
        drift: bool = True,
        as_of: dt.datetime | None = None,
    ) -> None:
        """``as_of``: when the report is made; a period not over by then is measured up to
        it, not to its end (None: the period is taken to be over)."""
        self.period = period
        self.as_of = as_of
        self._lo, self._hi = period.start_text, period.end_text
        self._policy_text = policy_text
        self._model_card = model_card
        self.drift = drift
        # completeness
        self.records = 0
        self.in_period = 0
        self.first_time = ""
        self.last_time = ""
        self.first_index: int | None = None
        self.last_index: int | None = None
        self.unreadable = 0
        self.kinds: Counter[str] = Counter()
        self._prev_time = ""  # the time of the last record in the period, as written
        self._prev_day = ""
        self.gaps = Listed()
        self.checkpoints_in_period = 0
        self.covering: dict[str, Any] | None = None
        self._before_end = 0  # records with time < end: a prefix of the log
        # what merge() needs of a part that starts after the log's first record
        self._first_in_period = ""  # the time of the first record in the period
        self._start_gap: dict[str, Any] | None = None  # in a later part: its gap from the start
        self._closed_first = False  # whether the first record fed was past the period
        self._orphans: list[tuple[str, str, str, bool]] = []  # reviews of unknown decisions
        self._from = 0  # the index of the first record this evidence is of
        self._last_checkpoint_size = 0
        # decisions
        self.decisions = 0
        self.verdicts: Counter[str] = Counter()
        self.verbs: Counter[str] = Counter()
        self.runtimes: Counter[str] = Counter()
        self.by_day: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.without_request_id = 0
        self.dry_runs = 0
        self.fallbacks = 0
        self.fallback_verdicts: Counter[str] = Counter()
        self.explained = 0
        self.by_model: Counter[str] = Counter()
        self.by_policy: Counter[str] = Counter()
        # risk
        self.risk_bins = [0] * RISK_BINS
        self.risk = Stats()
        self.auto_executed_risk = Stats()
        self.approved_risk = Stats()
        self.abs_shap: dict[str, float] = {}
        self.shap_rows = 0
        # policy
        self.policy_in_force: dict[str, Any] | None = None
        self.policy_activations = Listed()
        # oversight
        self._open: dict[str, Open] = {}
        self.reviewers: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.approvals = 0
        self.denials = 0
        self.completed = 0
        self.time_to_approval = Stats()
        self.approval_bins = [0] * (len(APPROVAL_EDGES) + 1)
        self.expiries = 0
        self.halts = Listed()
        self.resumes = Listed()
        self.halted_decisions = 0
        self.rollbacks: Counter[str] = Counter()
        self.access_refusals = 0
        # outcomes
        self.outcomes: Counter[str] = Counter()
        self.rollback_outcomes: Counter[str] = Counter()
        self.recovered = 0
        # incidents and models
        self.incidents = Listed()
        self.severities: Counter[str] = Counter()
        self.models = Listed()
        self.model_in_force: str | None = None
        # drift: per model id, per feature, bin counts laid out as the card's profile
        self._drift_counts: dict[str, list[npt.NDArray[np.float64]]] = {}
        self._drift_n: Counter[str] = Counter()
        self._drift_errors = 0
        self._local()

    def _local(self) -> None:
        """What stays in the process that made it (see :meth:`__getstate__`)."""
        self._drift_rows: dict[str, list[Any]] = defaultdict(list)  # derived vectors
        self._drift_recorded: dict[str, Batches] = {}  # recorded vectors
        self._shap = Batches()  # contributions waiting to be summed
        # one handler per record kind: _on_decision for "decision", ...
        self._handlers: dict[str, Callable[[Entry], None]] = {
            name.removeprefix("_on_"): getattr(self, name)
            for name in dir(type(self)) if name.startswith("_on_")
        }  # fmt: skip
        self._cards: dict[str, ModelCard | None] = {}

    # -- feeding -----------------------------------------------------------------------

    def unreadable_record(self) -> None:
        """A line that is not a readable record (the integrity section names it)."""
        self.unreadable += 1

    def checkpoint(self, size: int, root_b64: str, note: str) -> None:
        """A signed checkpoint line, seen right after the record that brings the log to size.

        The covering checkpoint is the first one whose tree holds every record before
        the period's end (those records are a prefix of the log: times never go back).
        """
        cp = {"size": size, "root": root_b64, "note": note}
        if self.covering is None:
            if self._closed:
                self.covering = cp
            elif size == self._before_end:
                self._candidate = cp  # covers the period if the next record is past its end
        if self._in_period_checkpoint:
            self.checkpoints_in_period += 1

    _closed = False  # True once a record at or after the period's end has been seen
    _in_period_checkpoint = False
    _candidate: dict[str, Any] | None = None

    def starting_at(self, index: int) -> Evidence:
        """This evidence is of the records from ``index`` on, to be merged (:meth:`merge`)
        after the evidence of the records before (records' times never go back)."""
        self._before_end = index  # if the period has not closed before: merge() checks
        self._from = index
        return self

    def feed(self, rec: Entry) -> None:
        self.records += 1
        t = rec.time
        if rec.index == 0 or not self.first_time:
            self.first_time = t
        self.last_time = t
        if t >= self._hi:
            if not self._closed:
                self._closed = True
                self._closed_first = self.records == 1
                if self._candidate is not None and self._candidate["size"] == self._before_end:
                    self.covering = self._candidate
            self._in_period_checkpoint = False
            self._before_state(rec)
            return
        self._before_end += 1
        if t < self._lo:
            self._in_period_checkpoint = False
            self._before_state(rec)
            return
        self._in_period_checkpoint = True
        self.in_period += 1
        self.kinds[rec.kind] += 1
        if self.first_index is None:
            self.first_index = rec.index
        self.last_index = rec.index
        if t[:10] != self._prev_day:  # a gap of more than a day crosses a date
            gap = self._gap(parse_time(t), t)
            if not self._first_in_period:
                self._first_in_period = t
                if self._from:  # a gap from the start only if no earlier part has a record
                    self._start_gap, gap = gap, None
            if gap is not None:
                self.gaps.add(gap)
            self._prev_day = t[:10]
        self._prev_time = t
        handler = self._handlers.get(rec.kind)
        if handler is not None:
            handler(rec)

    def _gap(self, when: dt.datetime, text: str) -> dict[str, Any] | None:
        """The gap before ``when`` if nothing was written for more than a day before it."""
        prev = parse_time(self._prev_time) if self._prev_time else self.period.start
        if (when - prev).total_seconds() <= GAP_SECONDS:
            return None
        return {"from": format_time(prev), "to": text,
                "hours": rounded((when - prev).total_seconds() / 3600, 2)}  # fmt: skip

    def finish(self) -> None:
        """Call after the last record: closes the trailing gap and the covering checkpoint."""
        # Up to the period's end, or to now if it is not over: a ledger that went silent
        # before the end has a gap there, whether or not it wrote anything after.
        end = self.period.end if self.as_of is None else min(self.period.end, self.as_of)
        if (gap := self._gap(end, format_time(end))) is not None:
            self.gaps.add(gap)
        candidate = self._candidate
        if self.covering is None and candidate and candidate["size"] == self._before_end:
            self.covering = candidate
        self._closed = True

    # -- parts of a ledger, read apart and joined --------------------------------------

    def merge(self, later: Evidence) -> None:
        """Fold in ``later``: the evidence of the records right after this evidence's
        (made with :meth:`starting_at`), as if one evidence had been fed them all. Called
        before :meth:`finish`; joining the same parts in the same order always gives the
        same result, whatever process read each part. Counts, lists and what is in force
        are exactly those of one reading; sums of floats (mean risk, mean |SHAP|, drift
        bins) are added in another order, so they may differ from one reading's in the
        last bits, which can, rarely, move a figure rounded to six places.
        """
        later.flush()
        self.flush()
        # The checkpoint that covers the period, from the state where the parts meet.
        if self.covering is None:
            candidate = self._candidate
            if (not self._closed and later._closed_first and candidate is not None
                    and candidate["size"] == self._before_end):  # fmt: skip
                self.covering = candidate
            else:
                self.covering = later.covering
        if later.records:
            if not self.records:
                self.first_time = later.first_time
            self.last_time = later.last_time
            if not self._closed:
                self._before_end = later._before_end
            self._candidate = later._candidate
            self._closed = self._closed or later._closed
            self._in_period_checkpoint = later._in_period_checkpoint
        # Gaps: the one before later's first record in the period is from this one's last.
        if later._first_in_period:
            first = later._first_in_period
            gap = later._start_gap
            if self._prev_time:
                gap = self._gap(parse_time(first), first)
            else:
                self._first_in_period = first
                if self._from:  # still a later part: the gap from the start waits too
                    self._start_gap, gap = gap, None
            if gap is not None:
                self.gaps.add(gap)
            self.gaps.merge(later.gaps)
            self._prev_time, self._prev_day = later._prev_time, later._prev_day
        if self.first_index is None:
            self.first_index = later.first_index
        if later.last_index is not None:
            self.last_index = later.last_index
        # Reviews of decisions made before later's records, in their order.
        for kind, decision_id, time, count in later._orphans:
            if decision_id in self._open:
                self._settle(kind, decision_id, time, count)
            elif self._from:
                self._orphans.append((kind, decision_id, time, count))
        self._open.update(later._open)
        self.policy_in_force = later.policy_in_force or self.policy_in_force
        self.model_in_force = later.model_in_force or self.model_in_force
        for name in _SUMMED:
            setattr(self, name, getattr(self, name) + getattr(later, name))
        for name in _COUNTED:
            getattr(self, name).update(getattr(later, name))
        for name in _TABLES:
            mine = getattr(self, name)
            for key, counts in getattr(later, name).items():
                mine[key].update(counts)
        for name in _LISTED:
            getattr(self, name).merge(getattr(later, name))
        for name in _STATS:
            getattr(self, name).merge(getattr(later, name))
        self.risk_bins = [a + b for a, b in zip(self.risk_bins, later.risk_bins, strict=True)]
        pairs = zip(self.approval_bins, later.approval_bins, strict=True)
        self.approval_bins = [a + b for a, b in pairs]
        for name, total in later.abs_shap.items():
            self.abs_shap[name] = self.abs_shap.get(name, 0.0) + total
        for model_id, counts in later._drift_counts.items():
            mine_counts = self._drift_counts.get(model_id)
            if mine_counts is None:
                self._drift_counts[model_id] = [c.copy() for c in counts]
            else:
                for a, b in zip(mine_counts, counts, strict=True):
                    a += b

    def flush(self) -> None:
        """Convert the numbers still gathered (SHAP sums, drift bins)."""
        self._sum_shap()
        for model_id in {*self._drift_rows, *self._drift_recorded}:
            self._flush_drift(model_id)

    def __getstate__(self) -> dict[str, Any]:
        """For a worker process's part: the figures, without the lookups it was made with."""
        self.flush()
        state = dict(self.__dict__)
        for name in _LOCAL:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._policy_text = None
        self._model_card = None
        self._local()

    def _before_state(self, rec: Entry) -> None:
        """Outside the period: keep only what records inside it depend on."""
        b = rec.body
        if rec.time < self._lo:
            if rec.kind == "policy":
                self.policy_in_force = policy_event(rec)
            elif rec.kind == "model" and b.get("event", "activate") == "activate":
                self.model_in_force = str(b.get("model_id", ""))
            elif rec.kind == "decision" and b.get("verdict") == "PENDING_APPROVAL":
                self._open[rec.decision_id] = Open(
                    parse_time(rec.time),
                    max(int(number(b.get("approvals_required")) or 1), 1),
                    number(b.get("risk")),
                )
            elif rec.kind in ("approval", "denial", "expiry"):
                self._review_state(rec, count=False)

    # -- one handler per kind ----------------------------------------------------------

    def _on_decision(self, rec: Entry) -> None:
        b = rec.body
        self.decisions += 1
        verdict = str(b.get("verdict", "") or "UNKNOWN")
        self.verdicts[verdict] += 1
        action = b.get("action")
        action = action if isinstance(action, MAP) else {}
        self.verbs[str(action.get("verb", "") or "unknown")] += 1
        target = action.get("target")
        target = target if isinstance(target, MAP) else {}
        self.runtimes[str(target.get("runtime", "") or "unknown")] += 1
        self.by_day[rec.time[:10]][verdict] += 1
        if "request_id" not in b:
            self.without_request_id += 1
        if b.get("dry_run"):
            self.dry_runs += 1
        if b.get("fallback") is True:
            self.fallbacks += 1
            self.fallback_verdicts[verdict] += 1
        if verdict == "HALTED":
            self.halted_decisions += 1
        self.by_policy[str(b.get("policy_id", "") or "not recorded")] += 1
        risk = number(b.get("risk"))
        if risk is not None:
            self.risk.add(risk)
            self.risk_bins[min(int(risk * RISK_BINS), RISK_BINS - 1) if risk >= 0 else 0] += 1
            if verdict in ("EXECUTED", "EXECUTING"):
                self.auto_executed_risk.add(risk)
        contributions = b.get("contributions")
        if isinstance(contributions, MAP):
            self.explained += 1
            self.shap_rows += 1
            if self._shap.add(contributions):
                self._sum_shap()
        model_id = b.get("model_id")
        if isinstance(model_id, str) and model_id:
            self.by_model[model_id] += 1
            if self.drift:
                self._drift_row(model_id, b, rec)
        if verdict == "PENDING_APPROVAL":
            required = max(int(number(b.get("approvals_required")) or 1), 1)
            self._open[rec.decision_id] = Open(parse_time(rec.time), required, risk)

    def _review_state(self, rec: Entry, *, count: bool) -> None:
        if count:
            reviewer = rec.actor or str(rec.body.get("reviewer", "")) or "unknown"
            if rec.kind == "expiry":
                self.expiries += 1
            elif rec.kind == "denial":
                self.denials += 1
                self.reviewers[reviewer]["denied"] += 1
            else:
                self.approvals += 1
                self.reviewers[reviewer]["approved"] += 1
        if rec.decision_id in self._open:
            self._settle(rec.kind, rec.decision_id, rec.time, count)
        elif self._from:  # decided before these records, if at all: see merge()
            self._orphans.append((rec.kind, rec.decision_id, rec.time, count))

    def _settle(self, kind: str, decision_id: str, time: str, count: bool) -> None:
        """What a review does to the decision waiting for it, if one is."""
        if kind != "approval":
            self._open.pop(decision_id, None)
            return
        pending = self._open.get(decision_id)
        if pending is None:
            return
        pending.approvals += 1
        if pending.approvals >= pending.required:
            del self._open[decision_id]
            if count:
                self.completed += 1
                seconds = max((parse_time(time) - pending.time).total_seconds(), 0.0)
                self.time_to_approval.add(seconds)
                k = next(
                    (i for i, e in enumerate(APPROVAL_EDGES) if seconds < e), len(APPROVAL_EDGES)
                )
                self.approval_bins[k] += 1
                if pending.risk is not None:
                    self.approved_risk.add(pending.risk)

    def _on_approval(self, rec: Entry) -> None:
        self._review_state(rec, count=True)

    _on_denial = _on_approval
    _on_expiry = _on_approval

    def _on_halt(self, rec: Entry) -> None:
        self.halts.add(scope_event(rec))

    def _on_resume(self, rec: Entry) -> None:
        self.resumes.add(scope_event(rec))

    def _on_rollback(self, rec: Entry) -> None:
        self.rollbacks[rec.actor or "unknown"] += 1

    def _on_outcome(self, rec: Entry) -> None:
        b = rec.body
        status = str(b.get("status", "") or "unknown")
        if b.get("rollback"):
            self.rollback_outcomes[status] += 1
        else:
            self.outcomes[status] += 1
        if b.get("recovered"):
            self.recovered += 1

    def _on_access(self, rec: Entry) -> None:
        self.access_refusals += 1

    def _on_policy(self, rec: Entry) -> None:
        self.policy_activations.add({**policy_event(rec), "index": rec.index})

    def _on_model(self, rec: Entry) -> None:
        self.models.add(model_event(rec))

    def _on_incident(self, rec: Entry) -> None:
        item = incident_event(rec, self.period.end)
        self.severities[item["severity"]] += 1
        self.incidents.add(item)

    # -- drift -------------------------------------------------------------------------

    def _card(self, model_id: str) -> ModelCard | None:
        if model_id not in self._cards:
            self._cards[model_id] = self._model_card(model_id) if self._model_card else None
        return self._cards[model_id]

    def _sum_shap(self) -> None:
        """Add the gathered contributions' absolute values to the per-feature sums (a value
        that is not a finite number is left out)."""
        for names, x, _ in self._shap.take():
            sums = np.where(np.isfinite(x), np.abs(x), 0.0).sum(axis=0)
            for name, total in zip(names, sums.tolist(), strict=True):
                self.abs_shap[name] = self.abs_shap.get(name, 0.0) + total

    def _drift_row(self, model_id: str, b: Mapping[str, Any], rec: Entry) -> None:
        card = self._card(model_id)
        if card is None or card.profile is None:
            return
        from explain.features import SCHEMA_VERSION

        features = b.get("features")
        if isinstance(features, MAP) and b.get("schema_version") == SCHEMA_VERSION:
            # The vector the model scored, as the gateway recorded it.
            full = self._drift_recorded.setdefault(model_id, Batches()).add(features)
        else:  # a record from before features were recorded: derive them again
            from adapters.action import Action, RuntimeState
            from explain.features import Context, featurize

            try:
                action = Action.from_json(b["action"], "action")
                state = RuntimeState.from_json(b.get("state", {}), "state")
                at = parse_time(str(b.get("scored_at") or rec.time))
                row = featurize(action, state, Context(now=at))
            except (KeyError, TypeError, ValueError):
                self._drift_errors += 1
                return
            rows = self._drift_rows[model_id]
            rows.append(row)
            full = len(rows) >= BATCH
        if full:
            self._flush_drift(model_id)

    def _flush_drift(self, model_id: str) -> None:
        from explain.features import FEATURE_NAMES

        card = self._cards.get(model_id)
        if card is None or card.profile is None:
            return
        matrices = []
        if rows := self._drift_rows.pop(model_id, []):
            matrices.append(np.array(rows, dtype=np.float64))
        if recorded := self._drift_recorded.get(model_id):
            for names, x, bad in recorded.take():
                try:
                    columns = [names.index(n) for n in FEATURE_NAMES]
                except ValueError:  # a feature is missing from these records
                    self._drift_errors += len(x)
                    continue
                self._drift_errors += int(bad.sum())
                matrices.append(x[~bad][:, columns])
        for x in matrices:
            counts = self._drift_counts.setdefault(
                model_id,
                [np.zeros(len(card.profile.features[n].fractions)) for n in FEATURE_NAMES],
            )
            for i, name in enumerate(FEATURE_NAMES):
                counts[i] += card.profile.features[name].histogram(x[:, i]) * len(x)
            self._drift_n[model_id] += len(x)

    # -- result ------------------------------------------------------------------------

    def result(self) -> dict[str, Any]:
        """The evidence sections (:func:`compliance.sections.sections`)."""
        return sections(self)
