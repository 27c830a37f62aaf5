"""Evidence from ledger records: one streaming pass, bounded memory, no I/O.

:class:`Evidence` is fed every record of a ledger in index order
(:meth:`Evidence.feed`) and every checkpoint line (:meth:`Evidence.checkpoint`),
and aggregates as it goes: counters, fixed histograms and small per-actor
tables. It never keeps a list of records, so memory depends on the number of
distinct verbs, reviewers, days and *open* approvals, not on the ledger's size.

Events are counted by their own record time in the period ``[start, end)``;
a record before the period still updates what later records need (the policy
in force, the decision an approval completes). Invariants:

* nothing is invented: a figure that the records cannot give (thresholds when
  the policy text is unavailable, drift without a model card) is reported as
  not recorded, with the reason;
* the result is a plain JSON value built only from the records (and the
  optional policy texts and model cards passed in), so the same ledger and
  period always give the same value.

Example::

    ev = Evidence(Period.parse("2026-11-01", "2026-12-01"))
    for rec in records:
        ev.feed(rec)
    sections = ev.result()
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import tomllib
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

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

RISK_BINS = 20  # risk histogram: [0, 0.05), [0.05, 0.1), ... [0.95, 1]
RETENTION_MINIMUM_DAYS = 183  # six months (Art. 19(1), 26(6)), counted generously as 183 days
GAP_SECONDS = 86_400.0  # a stretch without any record longer than this is reported as a gap
MAX_LISTED = 1000  # events listed one by one per section; beyond, only counted
# Seconds-to-approval histogram edges (upper bounds, exclusive); the last bin is open.
APPROVAL_EDGES = (10.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 86_400.0)
_MAP = (dict, Mapping)  # a JSON object: dict first, the cheap check that nearly always hits
_BATCH = 4096  # rows of numbers (contributions, feature vectors) converted at a time


class Entry(Protocol):
    """The payload fields of a record that evidence is drawn from: a :class:`ledger.Record`,
    or the lighter view the report reads from an export it has verified."""

    @property
    def index(self) -> int: ...
    @property
    def time(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def actor(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def decision_id(self) -> str: ...
    @property
    def body(self) -> Mapping[str, Any]: ...


#: Art. 73 reporting deadlines, in days from awareness (Regulation (EU) 2024/1689).
ART73_DEADLINES = {
    "general": (15, "Art. 73(2)"),
    "death": (10, "Art. 73(4)"),
    "widespread-or-critical-infrastructure": (2, "Art. 73(3)"),
}
# How the gateway's incident severity maps onto Art. 73 (docs/compliance.md).
_SEVERITY_CLASS = {
    "serious": "general",
    "critical": "widespread-or-critical-infrastructure",
}


@dataclass(frozen=True)
class Period:
    """The half-open period ``[start, end)`` in UTC."""

    start: dt.datetime
    end: dt.datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("period bounds must be timezone-aware")
        if self.end <= self.start:
            raise ValueError("the period must end after it starts")

    @classmethod
    def parse(cls, start: str, end: str) -> Period:
        """Dates (``2026-11-01``, midnight UTC) or RFC 3339 times."""
        return cls(_parse_bound(start), _parse_bound(end))

    @property
    def start_text(self) -> str:
        return format_time(self.start)

    @property
    def end_text(self) -> str:
        return format_time(self.end)

    def to_json(self) -> dict[str, Any]:
        return {"from": self.start_text, "to": self.end_text}


def _parse_bound(text: str) -> dt.datetime:
    try:
        if len(text) == 10:
            return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or an RFC 3339 time") from None
    if t.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone; add Z or an offset")
    return t.astimezone(dt.UTC)


@dataclass(frozen=True)
class PolicyText:
    """A policy file's bytes, found outside the ledger and checked against its recorded id."""

    policy_id: str
    raw: bytes

    def thresholds(self) -> dict[str, Any]:
        """The default thresholds and every rule's overrides, read from the TOML as written."""
        doc = tomllib.loads(self.raw.decode("utf-8"))
        defaults = doc.get("defaults", {})
        keys = (
            "execute_below",
            "approve_below",
            "above",
            "approvals",
            "approvals_above",
            "min_confidence",
            "fallback",
            "fallback_irreversible",
        )
        rules = []
        for rule in doc.get("rules", []):
            overrides = {k: _plain(rule[k]) for k in (*keys, "forbid") if k in rule}
            rules.append(
                {
                    "name": str(rule.get("name", "")),
                    "match": _plain(rule.get("match", {})),
                    "overrides": overrides,
                }
            )
        return {
            "recorded": True,
            "how": "policy file whose SHA-256 equals the recorded policy id",
            "defaults": {k: _plain(defaults[k]) for k in keys if k in defaults},
            "rules": rules,
        }


def _plain(value: Any) -> Any:
    """TOML values as JSON-safe values; floats as decimal strings (reproducible bytes)."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, _MAP):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass
class ModelCard:
    """A model card from the registry, and (optionally) its drift reference."""

    model_id: str
    card: Mapping[str, Any]
    card_sha256: str
    profile: Any = None  # explain.drift.Profile, or None without a usable reference


def _num(value: Any) -> float | None:
    """A body number (decimal string or JSON number), or None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class _Batches:
    """Rows of a body's number maps (SHAP contributions, feature vectors: decimal strings,
    ``null`` for unknown), gathered by key order and converted to float64 matrices
    :data:`_BATCH` rows at a time, far cheaper than one ``float()`` per value.

    A value that is not a number becomes NaN, and its row is marked bad. (A JSON ``true``
    in a batch converted in one go counts as 1; govgate never writes one.)
    """

    def __init__(self) -> None:
        self._rows: dict[tuple[str, ...], list[list[Any]]] = {}

    def add(self, values: Mapping[str, Any]) -> bool:
        """Gather one map; True when a batch is full (time to :meth:`take`)."""
        names = tuple(values)
        rows = self._rows.get(names)
        if rows is None:
            rows = self._rows[names] = []
        rows.append(list(values.values()))
        return len(rows) >= _BATCH

    def take(self) -> list[tuple[tuple[str, ...], npt.NDArray[np.float64], npt.NDArray[np.bool_]]]:
        """Every batch gathered so far: (names, a matrix with a column per name, the rows
        that held a value that is neither a number nor ``null``)."""
        out = [(names, *_matrix(rows)) for names, rows in self._rows.items()]
        self._rows.clear()
        return out


def _matrix(rows: list[list[Any]]) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    table = np.array(rows, dtype=object)
    table[np.equal(table, None)] = np.nan  # type: ignore[call-overload]
    try:
        return table.astype(np.float64), np.zeros(len(rows), dtype=bool)
    except (TypeError, ValueError):  # a value that is not a number: one at a time
        pass
    x = np.empty((len(rows), len(rows[0])), dtype=np.float64)
    bad = np.zeros(len(rows), dtype=bool)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            number = math.nan if value is None else _num(value)
            if number is None:
                bad[i] = not (isinstance(value, float) and math.isnan(value))
                number = math.nan
            x[i, j] = number
    return x, bad


def _r(x: float, places: int = 6) -> float:
    """Rounded, so that sums in a fixed order print the same everywhere."""
    return round(x, places)


@dataclass
class _Open:
    """A decision waiting for approvals: what the approval that completes it needs."""

    time: dt.datetime
    required: int
    risk: float | None
    approvals: int = 0


@dataclass
class _Stats:
    n: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, x: float) -> None:
        self.n += 1
        self.total += x
        self.low = min(self.low, x)
        self.high = max(self.high, x)

    def merge(self, other: _Stats) -> None:
        self.n += other.n
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)

    def to_json(self) -> dict[str, Any]:
        if not self.n:
            return {"count": 0, "mean": None, "min": None, "max": None}
        return {
            "count": self.n,
            "mean": _r(self.total / self.n),
            "min": _r(self.low),
            "max": _r(self.high),
        }


@dataclass
class _Listed:
    items: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0

    def add(self, item: dict[str, Any]) -> None:
        self.total += 1
        if len(self.items) < MAX_LISTED:
            self.items.append(item)

    def merge(self, later: _Listed) -> None:
        self.total += later.total
        self.items.extend(later.items[: MAX_LISTED - len(self.items)])

    def to_json(self) -> dict[str, Any]:
        return {"count": self.total, "items": self.items, "truncated": self.total > len(self.items)}


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
    ) -> None:
        self.period = period
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
        self.gaps = _Listed()
        self.checkpoints_in_period = 0
        self.covering: dict[str, Any] | None = None
        self._before_end = 0  # records with time < end: a prefix of the log
        # what merge() needs of a part that starts after the log's first record
        self._first_in_period = ""  # the time of the first record in the period
        self._gap_from_start = False  # whether that record's gap was counted from the start
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
        self.risk = _Stats()
        self.auto_executed_risk = _Stats()
        self.approved_risk = _Stats()
        self.abs_shap: dict[str, float] = {}
        self.shap_rows = 0
        # policy
        self.policy_in_force: dict[str, Any] | None = None
        self.policy_activations = _Listed()
        # oversight
        self._open: dict[str, _Open] = {}
        self.reviewers: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.approvals = 0
        self.denials = 0
        self.completed = 0
        self.time_to_approval = _Stats()
        self.approval_bins = [0] * (len(APPROVAL_EDGES) + 1)
        self.expiries = 0
        self.halts = _Listed()
        self.resumes = _Listed()
        self.halted_decisions = 0
        self.rollbacks: Counter[str] = Counter()
        self.access_refusals = 0
        # outcomes
        self.outcomes: Counter[str] = Counter()
        self.rollback_outcomes: Counter[str] = Counter()
        self.recovered = 0
        # incidents and models
        self.incidents = _Listed()
        self.severities: Counter[str] = Counter()
        self.models = _Listed()
        self.model_in_force: str | None = None
        # drift: per model id, per feature, bin counts laid out as the card's profile
        self._drift_counts: dict[str, list[npt.NDArray[np.float64]]] = {}
        self._drift_n: Counter[str] = Counter()
        self._drift_errors = 0
        self._local()

    def _local(self) -> None:
        """What stays in the process that made it (see :meth:`__getstate__`)."""
        self._drift_rows: dict[str, list[Any]] = defaultdict(list)  # derived vectors
        self._drift_recorded: dict[str, _Batches] = {}  # recorded vectors
        self._shap = _Batches()  # contributions waiting to be summed
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
            if not self._first_in_period:
                self._first_in_period = t
                self._gap_from_start = self._gap_to(parse_time(t), t)
            else:
                self._gap_to(parse_time(t), t)
            self._prev_day = t[:10]
        self._prev_time = t
        handler = self._handlers.get(rec.kind)
        if handler is not None:
            handler(rec)

    def _gap_to(self, when: dt.datetime, text: str) -> bool:
        """Record a gap if nothing was written for more than a day before ``when``."""
        prev = parse_time(self._prev_time) if self._prev_time else self.period.start
        if (when - prev).total_seconds() <= GAP_SECONDS:
            return False
        self.gaps.add(
            {"from": format_time(prev), "to": text,
             "hours": _r((when - prev).total_seconds() / 3600, 2)}
        )  # fmt: skip
        return True

    def finish(self) -> None:
        """Call after the last record: closes the trailing gap and the covering checkpoint."""
        prev = parse_time(self._prev_time) if self._prev_time else self.period.start
        end = min(self.period.end, parse_time(self.last_time)) if self.last_time else prev
        if self.last_time and self.last_time >= self._hi:
            end = self.period.end
        self._gap_to(end, format_time(end))
        candidate = self._candidate
        if self.covering is None and candidate and candidate["size"] == self._before_end:
            self.covering = candidate
        self._closed = True

    # -- parts of a ledger, read apart and joined --------------------------------------

    def merge(self, later: Evidence) -> None:
        """Fold in ``later``: the evidence of the records right after this evidence's
        (made with :meth:`starting_at`), as if one evidence had been fed them all. Called
        before :meth:`finish`; joining the same parts in the same order always gives the
        same result, whatever process read each part.
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
            gaps = later.gaps
            if self._prev_time:
                if later._gap_from_start:
                    gaps = _Listed(gaps.items[1:], gaps.total - 1)
                self._gap_to(parse_time(later._first_in_period), later._first_in_period)
            elif not self._first_in_period:
                self._first_in_period = later._first_in_period
                self._gap_from_start = later._gap_from_start
            self.gaps.merge(gaps)
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
                self.policy_in_force = {
                    "policy_id": str(b.get("policy_id", "")),
                    "source": str(b.get("source", "")),
                    "since": rec.time,
                    "actor": rec.actor,
                }
            elif rec.kind == "model" and b.get("event", "activate") == "activate":
                self.model_in_force = str(b.get("model_id", ""))
            elif rec.kind == "decision" and b.get("verdict") == "PENDING_APPROVAL":
                self._open[rec.decision_id] = _Open(
                    parse_time(rec.time),
                    max(int(_num(b.get("approvals_required")) or 1), 1),
                    _num(b.get("risk")),
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
        action = action if isinstance(action, _MAP) else {}
        self.verbs[str(action.get("verb", "") or "unknown")] += 1
        target = action.get("target")
        target = target if isinstance(target, _MAP) else {}
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
        risk = _num(b.get("risk"))
        if risk is not None:
            self.risk.add(risk)
            self.risk_bins[min(int(risk * RISK_BINS), RISK_BINS - 1) if risk >= 0 else 0] += 1
            if verdict in ("EXECUTED", "EXECUTING"):
                self.auto_executed_risk.add(risk)
        contributions = b.get("contributions")
        if isinstance(contributions, _MAP):
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
            required = max(int(_num(b.get("approvals_required")) or 1), 1)
            self._open[rec.decision_id] = _Open(parse_time(rec.time), required, risk)

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
        self.halts.add(_scope_event(rec))

    def _on_resume(self, rec: Entry) -> None:
        self.resumes.add(_scope_event(rec))

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
        b = rec.body
        item = {
            "policy_id": str(b.get("policy_id", "")),
            "source": str(b.get("source", "")),
            "since": rec.time,
            "actor": rec.actor,
        }
        self.policy_activations.add({**item, "index": rec.index})

    def _on_model(self, rec: Entry) -> None:
        b = rec.body
        self.models.add(
            {
                "time": rec.time,
                "index": rec.index,
                "event": str(b.get("event", "")),
                "model_id": str(b.get("model_id", "")),
                "previous_model_id": str(b.get("previous_model_id", "")),
                "card_sha256": str(b.get("card_sha256", "")),
                "roc_auc": str(b.get("roc_auc", "")),
                "reason": str(b.get("reason", "")),
                "actor": rec.actor,
            }
        )

    def _on_incident(self, rec: Entry) -> None:
        b = rec.body
        severity = str(b.get("severity", "") or "minor")
        harmful = b.get("harmful") is True
        self.severities[severity] += 1
        item: dict[str, Any] = {
            "time": rec.time,
            "index": rec.index,
            "decision_id": rec.decision_id,
            "target": rec.target,
            "actor": rec.actor,
            "harmful": harmful,
            "severity": severity,
            "description": str(b.get("description", "")),
        }
        item["art73"] = _art73(parse_time(rec.time), severity, harmful, self.period.end)
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
        if isinstance(features, _MAP) and b.get("schema_version") == SCHEMA_VERSION:
            # The vector the model scored, as the gateway recorded it.
            full = self._drift_recorded.setdefault(model_id, _Batches()).add(features)
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
            full = len(rows) >= _BATCH
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
        return {
            "completeness": self._completeness(),
            "decisions": self._decisions(),
            "risk": self._risk(),
            "oversight": self._oversight(),
            "outcomes": self._outcomes(),
            "incidents": self._incidents(),
            "models": self._models(),
            "explanations": self._explanations(),
            "drift": self._drift(),
            "retention": self._retention(),
        }

    def _completeness(self) -> dict[str, Any]:
        return {
            "records_in_ledger": self.records,
            "records_in_period": self.in_period,
            "first_index_in_period": self.first_index,
            "last_index_in_period": self.last_index,
            "records_by_kind": dict(sorted(self.kinds.items())),
            "unreadable_records": self.unreadable,
            "gap_threshold_hours": _r(GAP_SECONDS / 3600, 2),
            "gaps": self.gaps.to_json(),
            "checkpoints_in_period": self.checkpoints_in_period,
            "covering_checkpoint": self.covering,
            "logged_fields": [
                "index",
                "time",
                "kind",
                "prev",
                "key_id",
                "trace_id",
                "actor",
                "target",
                "decision_id",
                "body",
            ],
        }

    def _decisions(self) -> dict[str, Any]:
        return {
            "count": self.decisions,
            "by_verdict": dict(sorted(self.verdicts.items())),
            "by_verb": dict(sorted(self.verbs.items())),
            "by_runtime": dict(sorted(self.runtimes.items())),
            "by_policy": dict(sorted(self.by_policy.items())),
            "by_day": {d: dict(sorted(c.items())) for d, c in sorted(self.by_day.items())},
            "without_request_id": self.without_request_id,
            "dry_runs": self.dry_runs,
            "fallbacks": {
                "count": self.fallbacks,
                "by_verdict": dict(sorted(self.fallback_verdicts.items())),
            },
            "halted_by_stop_switch": self.halted_decisions,
        }

    def _thresholds(self, policy_id: str, source: str) -> dict[str, Any]:
        text = self._policy_text(policy_id, source) if self._policy_text else None
        if text is None or hashlib.sha256(text.raw).hexdigest() != policy_id:
            return {
                "recorded": False,
                "why": "the ledger records the policy's id (SHA-256) and source path, not its "
                "text, and no policy file with that SHA-256 was available",
            }
        try:
            return text.thresholds()
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, AttributeError, TypeError) as err:
            return {"recorded": False, "why": f"the policy file does not parse: {err}"}

    def _risk(self) -> dict[str, Any]:
        policies = []
        if self.policy_in_force is not None:
            policies.append({**self.policy_in_force, "in_force_at_start": True})
        policies += [{**p, "in_force_at_start": False} for p in self.policy_activations.items]
        for p in policies:
            p["thresholds"] = self._thresholds(p["policy_id"], p["source"])
        width = 1 / RISK_BINS
        return {
            "scored": self.risk.n,
            "unscored": self.decisions - self.risk.n,
            "summary": self.risk.to_json(),
            "histogram": [
                {"from": _r(i * width, 4), "to": _r((i + 1) * width, 4), "count": c}
                for i, c in enumerate(self.risk_bins)
            ],
            "policies": policies,
            "policy_activations_in_period": self.policy_activations.total,
            "residual_risk_accepted": {
                "auto_executed": self.auto_executed_risk.to_json(),
                "approved_by_people": self.approved_risk.to_json(),
            },
        }

    def _oversight(self) -> dict[str, Any]:
        reviewers = {}
        for name, c in sorted(self.reviewers.items()):
            n = c["approved"] + c["denied"]
            reviewers[name] = {
                "approved": c["approved"],
                "denied": c["denied"],
                "approval_rate": _r(c["approved"] / n, 4) if n else None,
            }
        labels = [f"<{int(e)}s" for e in APPROVAL_EDGES] + [f">={int(APPROVAL_EDGES[-1])}s"]
        return {
            "approvals": self.approvals,
            "denials": self.denials,
            "completed_by_approval": self.completed,
            "expiries": self.expiries,
            "still_pending_at_end": len(self._open),
            "reviewers": reviewers,
            "time_to_approval_seconds": {
                **self.time_to_approval.to_json(),
                "histogram": [
                    {"bin": lab, "count": n}
                    for lab, n in zip(labels, self.approval_bins, strict=True)
                ],
            },
            "overrides": {
                "denials": self.denials,
                "rollbacks": sum(self.rollbacks.values()),
                "rollbacks_by_actor": dict(sorted(self.rollbacks.items())),
            },
            "halts": self.halts.to_json(),
            "resumes": self.resumes.to_json(),
            "access_refusals": self.access_refusals,
        }

    def _outcomes(self) -> dict[str, Any]:
        return {
            "by_status": dict(sorted(self.outcomes.items())),
            "rollbacks": dict(sorted(self.rollback_outcomes.items())),
            "recovered_after_restart": self.recovered,
        }

    def _incidents(self) -> dict[str, Any]:
        return {
            **self.incidents.to_json(),
            "by_severity": dict(sorted(self.severities.items())),
            "severity_mapping": {
                "serious": "serious incident, general deadline (Art. 73(2), 15 days)",
                "critical": "serious incident affecting critical infrastructure or widespread "
                "(Art. 73(3), 2 days)",
                "major": "not a serious incident by its label; assess",
                "minor": "not a serious incident by its label",
            },
            "death_not_recorded": "incident records carry no field for a death; where one "
            "occurred, Art. 73(4) requires a report within 10 days",
        }

    def _models(self) -> dict[str, Any]:
        cards = {}
        for model_id in sorted(self.by_model):
            card = self._card(model_id)
            cards[model_id] = None if card is None else _card_summary(card)
        return {
            "in_force_at_start": self.model_in_force,
            "activations": self.models.to_json(),
            "decisions_by_model": dict(sorted(self.by_model.items())),
            "cards": cards,
        }

    def _explanations(self) -> dict[str, Any]:
        self._sum_shap()
        n = self.shap_rows
        means = sorted(((-_r(s / n), f) for f, s in self.abs_shap.items()) if n else [])
        importance = [{"feature": f, "mean_abs_shap": -m} for m, f in means]
        return {
            "decisions_explained": self.explained,
            "decisions_without_explanation": self.decisions - self.explained,
            "global_importance": importance,
        }

    def _drift(self) -> dict[str, Any]:
        from explain.drift import Thresholds, psi
        from explain.features import FEATURE_NAMES

        for model_id in {*self._drift_rows, *self._drift_recorded}:
            self._flush_drift(model_id)
        levels = Thresholds()
        models = {}
        for model_id in sorted(self.by_model):
            card = self._card(model_id)
            if card is None or card.profile is None:
                models[model_id] = {
                    "available": False,
                    "why": "no model card with a drift reference for this model",
                }
                continue
            n = self._drift_n[model_id]
            if not n:
                models[model_id] = {"available": False, "why": "no decisions could be featurized"}
                continue
            counts = self._drift_counts[model_id]
            features = []
            for i, name in enumerate(FEATURE_NAMES):
                value = psi(card.profile.features[name].fractions, (counts[i] / n).tolist())
                features.append({"feature": name, "psi": _r(value), "level": levels.level(value)})
            models[model_id] = {"available": True, "decisions": n, "features": features}
        return {
            "method": "population stability index against the model card's training "
            "profile (explain.drift), per feature",
            "thresholds": {"moderate": levels.moderate, "significant": levels.significant},
            "unreadable_decisions": self._drift_errors,
            "models": models,
        }

    def _retention(self) -> dict[str, Any]:
        if not self.first_time:
            return {
                "oldest_record": None,
                "held_days": 0,
                "minimum_days": RETENTION_MINIMUM_DAYS,
                "meets_minimum": False,
            }
        # Measured at the period's end, or at the newest record if the period ends later.
        at = min(self.period.end, parse_time(self.last_time))
        held = (at - parse_time(self.first_time)).total_seconds() / 86_400
        return {
            "oldest_record": self.first_time,
            "newest_record": self.last_time,
            "held_days": _r(held, 2),
            "minimum_days": RETENTION_MINIMUM_DAYS,
            "meets_minimum": held >= RETENTION_MINIMUM_DAYS,
            "measured_at": format_time(at),
        }


def _scope_event(rec: Entry) -> dict[str, Any]:
    b = rec.body
    scope = b.get("scope") if isinstance(b.get("scope"), Mapping) else {}
    assert isinstance(scope, _MAP)
    if scope.get("all"):
        text = "everything"
    elif scope.get("runtime"):
        text = f"runtime {scope.get('runtime')}"
    else:
        text = str(scope.get("selector", "")) or "unspecified"
    return {
        "time": rec.time,
        "index": rec.index,
        "scope": text,
        "actor": rec.actor,
        "reason": str(b.get("reason", "")),
    }


def _art73(aware: dt.datetime, severity: str, harmful: bool, end: dt.datetime) -> dict[str, Any]:
    """The Art. 73 reporting deadline for an incident, counted from the record's time."""
    klass = _SEVERITY_CLASS.get(severity) if harmful else None
    if klass is None:
        return {
            "serious_incident": False,
            "deadline": None,
            "basis": None,
            "why": "not labelled harmful with severity serious or critical",
        }
    days, basis = ART73_DEADLINES[klass]
    deadline = aware + dt.timedelta(days=days)
    return {
        "serious_incident": True,
        "class": klass,
        "aware": format_time(aware),
        "days": days,
        "basis": basis,
        "deadline": format_time(deadline),
        "deadline_passed_by_period_end": deadline <= end,
        "if_death": format_time(aware + dt.timedelta(days=ART73_DEADLINES["death"][0])),
    }


def _card_summary(card: ModelCard) -> dict[str, Any]:
    c = card.card
    metrics = c.get("metrics", {}) if isinstance(c.get("metrics"), Mapping) else {}
    keep = ("roc_auc", "pr_auc", "brier", "log_loss", "holdout_rows", "holdout_positive_rate")
    return {
        "card_sha256": card.card_sha256,
        "created": str(c.get("created", "")),
        "schema_version": str(c.get("schema_version", "")),
        "model_type": str(c.get("model_type", "")),
        "data": _plain(c.get("data", {})),
        "metrics": {k: _plain(metrics[k]) for k in keep if k in metrics},
        "intended_use": str(c.get("intended_use", "")),
        "limits": [str(x) for x in c.get("limits", [])]
        if isinstance(c.get("limits"), list)
        else [],
        "drift_reference": card.profile is not None,
    }
