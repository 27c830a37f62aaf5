"""The building blocks of compliance evidence: values and small accumulators, no I/O.

Nothing here knows the record kinds (:mod:`compliance.evidence` does). This module
holds the :class:`Entry` protocol a record is read through, the :class:`Period`,
the :class:`PolicyText` and :class:`ModelCard` found outside the ledger, and the
accumulators an evidence keeps its figures in: :class:`Stats` (count, mean, range),
:class:`Listed` (the first events one by one, the rest only counted),
:class:`Batches` (a body's number maps, converted to matrices a batch at a time)
and :class:`Open` (a decision waiting for approvals). Invariants:

* memory stays bounded: a :class:`Listed` keeps at most :data:`MAX_LISTED` items,
  and :meth:`Batches.add` asks to be emptied once :data:`BATCH` rows of one key
  order are gathered;
* a figure is printed through :func:`rounded` (or as a decimal string, :func:`plain`),
  so that the same sums give the same bytes everywhere.

Example::

    risk = Stats()
    for x in (0.2, 0.4):
        risk.add(x)
    risk.to_json()  # {"count": 2, "mean": 0.3, "min": 0.2, "max": 0.4}
"""

from __future__ import annotations

import datetime as dt
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ledger.record import format_time, parse_time, time_bound

__all__ = [
    "BATCH",
    "MAP",
    "MAX_LISTED",
    "Batches",
    "Entry",
    "Listed",
    "ModelCard",
    "Open",
    "Period",
    "PolicyText",
    "Stats",
    "number",
    "plain",
    "rounded",
]

MAX_LISTED = 1000  # events listed one by one per section; beyond, only counted
MAP = (dict, Mapping)  # a JSON object: dict first, the cheap check that nearly always hits
BATCH = 4096  # rows of numbers (contributions, feature vectors) converted at a time


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
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or an RFC 3339 time") from None
    if t.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone; add Z or an offset")
    try:
        # Records have microseconds; a finer fraction is rounded up, as the ledger's
        # own query bounds are (ledger.record.time_bound): a record of that
        # microsecond is before the bound.
        return parse_time(time_bound(text))
    except ValueError:  # before the year 1 or after 9999 in UTC
        raise ValueError(f"{text!r} is out of range in UTC") from None


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
            overrides = {k: plain(rule[k]) for k in (*keys, "forbid") if k in rule}
            rules.append(
                {
                    "name": str(rule.get("name", "")),
                    "match": plain(rule.get("match", {})),
                    "overrides": overrides,
                }
            )
        return {
            "recorded": True,
            "how": "policy file whose SHA-256 equals the recorded policy id",
            "defaults": {k: plain(defaults[k]) for k in keys if k in defaults},
            "rules": rules,
        }


def plain(value: Any) -> Any:
    """TOML values as JSON-safe values; floats as decimal strings (reproducible bytes)."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, MAP):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


@dataclass
class ModelCard:
    """A model card from the registry, and (optionally) its drift reference."""

    model_id: str
    card: Mapping[str, Any]
    card_sha256: str
    profile: Any = None  # explain.drift.Profile, or None without a usable reference


def number(value: Any) -> float | None:
    """A body number (decimal string or JSON number), or None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class Batches:
    """Rows of a body's number maps (SHAP contributions, feature vectors: decimal strings,
    ``null`` for unknown), gathered by key order and converted to float64 matrices
    :data:`BATCH` rows at a time, far cheaper than one ``float()`` per value.

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
        return len(rows) >= BATCH

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
            f = math.nan if value is None else number(value)
            if f is None:
                bad[i] = not (isinstance(value, float) and math.isnan(value))
                f = math.nan
            x[i, j] = f
    return x, bad


def rounded(x: float, places: int = 6) -> float:
    """Rounded, so that sums in a fixed order print the same everywhere."""
    return round(x, places)


@dataclass
class Open:
    """A decision waiting for approvals: what the approval that completes it needs."""

    time: dt.datetime
    required: int
    risk: float | None
    approvals: int = 0


@dataclass
class Stats:
    n: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, x: float) -> None:
        self.n += 1
        self.total += x
        self.low = min(self.low, x)
        self.high = max(self.high, x)

    def merge(self, other: Stats) -> None:
        self.n += other.n
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)

    def to_json(self) -> dict[str, Any]:
        if not self.n:
            return {"count": 0, "mean": None, "min": None, "max": None}
        return {
            "count": self.n,
            "mean": rounded(self.total / self.n),
            "min": rounded(self.low),
            "max": rounded(self.high),
        }


@dataclass
class Listed:
    items: list[dict[str, Any]] = field(default_factory=list)
    total: int = 0

    def add(self, item: dict[str, Any]) -> None:
        self.total += 1
        if len(self.items) < MAX_LISTED:
            self.items.append(item)

    def merge(self, later: Listed) -> None:
        self.total += later.total
        self.items.extend(later.items[: MAX_LISTED - len(self.items)])

    def to_json(self) -> dict[str, Any]:
        return {"count": self.total, "items": self.items, "truncated": self.total > len(self.items)}
