"""Real labelled history: a file of past actions, or the ledger's own decisions and incidents.

Two sources feed :func:`explain.train.train` besides the bootstrap set:

**A history file** (JSON lines), one past action per line::

    {"action": {...}, "state": {...}, "time": "2026-03-01T02:10:00Z", "label": 1}

``action`` and ``state`` use the action-file schema (``docs/explain.md``),
``time`` is when it was decided (RFC 3339), ``label`` is 1 (or ``true``) if it
led to an incident and 0 (or ``false``) if not. Blank lines are skipped; any
other malformed line stops the load with its line number.

**The ledger** (the post-market monitoring loop): :func:`label_ledger` joins
``decision`` records with later ``incident`` records by decision id. Records
arrive in the form ``govgate ledger query`` prints. A decision's body holds
the ``action`` and ``state`` it was scored on, and ``scored_at`` (RFC 3339),
the time its features were computed (default: the record's time). An incident's body may say
``"harmful": false`` to clear a decision (a false alarm); otherwise it marks
the decision harmful. A decision is labelled

* 1 if its latest incident says harmful, 0 if its latest incident says not;
* 0 if it was executed (an ``outcome`` record exists) at least ``horizon``
  before the newest record and no incident names it;
* not at all otherwise: a denied or pending decision never ran, and a recent
  one may still draw an incident.

Example::

    examples = read_history(Path("past-actions.jsonl"))
    examples, stats = label_ledger(records, horizon=dt.timedelta(days=7))
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.action import Action, RuntimeState
from adapters.errors import InvalidActionError
from explain.bootstrap import Example
from explain.errors import TrainingDataError

__all__ = ["LedgerStats", "label_ledger", "parse_time", "read_history", "read_proposal"]

MAX_LINE = 1 << 20


def parse_time(text: Any, where: str) -> dt.datetime:
    if not isinstance(text, str):
        raise TrainingDataError(f"{where}: time must be an RFC 3339 string")
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TrainingDataError(f"{where}: {text!r} is not an RFC 3339 time") from None
    if t.tzinfo is None:
        raise TrainingDataError(f"{where}: time {text!r} has no UTC offset")
    return t


def _label(value: Any, where: str) -> int:
    if value in (0, 1) and not isinstance(value, float):
        return int(value)
    raise TrainingDataError(f"{where}: label must be 0, 1, true or false, not {value!r}")


def read_proposal(obj: Any, where: str) -> tuple[Action, RuntimeState, dt.datetime | None]:
    """An action file's content: ``{"action": ..., "state": ..., "time": ...}``.

    ``state`` defaults to all-unknown and ``time`` to None (the caller's now).
    Raises :class:`~adapters.errors.InvalidActionError` naming the field.
    """
    if not isinstance(obj, Mapping):
        raise InvalidActionError(f"{where}: expected a JSON object with action and state")
    unknown = sorted(set(obj) - {"action", "state", "time", "label"})
    if unknown:
        raise InvalidActionError(
            f"{where}: unknown field {unknown[0]!r} (allowed: action, state, time)"
        )
    if "action" not in obj:
        raise InvalidActionError(f"{where}: no action")
    action = Action.from_json(obj["action"])
    state = RuntimeState.from_json(obj.get("state", {}))
    when = None
    if obj.get("time") is not None:
        try:
            when = parse_time(obj["time"], "time")
        except TrainingDataError as err:
            raise InvalidActionError(str(err)) from None
    return action, state, when


def _example(obj: Any, where: str, label: int | None = None) -> Example:
    try:
        action, state, when = read_proposal(obj, where)
    except InvalidActionError as err:
        raise TrainingDataError(f"{where}: {err}") from err
    if when is None:
        raise TrainingDataError(f"{where}: no time")
    return Example(action, state, when, _label(obj.get("label"), where) if label is None else label)


def read_history(path: Path) -> list[Example]:
    """Load a history file; raises :class:`TrainingDataError` naming the bad line."""
    out = []
    try:
        with path.open("rb") as f:
            for n, line in enumerate(f, 1):
                where = f"{path.name} line {n}"
                if len(line) > MAX_LINE:
                    raise TrainingDataError(f"{where}: longer than {MAX_LINE} bytes")
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as err:
                    raise TrainingDataError(f"{where}: not JSON ({err})") from None
                out.append(_example(obj, where))
    except OSError as err:
        raise TrainingDataError(f"cannot read {path}: {err.strerror or err}") from err
    if not out:
        raise TrainingDataError(f"{path} holds no examples")
    return out


@dataclass(frozen=True)
class LedgerStats:
    decisions: int
    harmful: int  # labelled 1 by an incident
    cleared: int  # labelled 0 by an incident that says harmful: false
    quiet: int  # labelled 0: executed, older than the horizon, no incident
    unlabelled: int  # never executed, or too recent to tell
    skipped: int  # decision bodies without a usable action and state


def label_ledger(
    records: Iterable[Mapping[str, Any]],
    *,
    horizon: dt.timedelta = dt.timedelta(days=7),
) -> tuple[list[Example], LedgerStats]:
    """Labelled examples from ledger records (see the module docstring for the rules)."""
    decisions: dict[str, Mapping[str, Any]] = {}
    executed: set[str] = set()
    verdict: dict[str, bool] = {}
    newest: dt.datetime | None = None
    for rec in records:
        kind, did = rec.get("kind"), rec.get("decision_id") or ""
        where = f"ledger record {rec.get('index')}"
        when = parse_time(rec.get("time"), where)
        newest = when if newest is None or when > newest else newest
        body = rec.get("body")
        if not did or not isinstance(body, Mapping):
            continue
        if kind == "decision":
            decisions.setdefault(did, rec)
        elif kind == "outcome":
            executed.add(did)
        elif kind == "incident":
            verdict[did] = body.get("harmful", True) is not False  # the latest one counts
    out: list[Example] = []
    counts = {"harmful": 0, "cleared": 0, "quiet": 0, "unlabelled": 0, "skipped": 0}
    for did, rec in decisions.items():
        where = f"ledger record {rec.get('index')} (decision {did})"
        if did in verdict:
            label, why = (1, "harmful") if verdict[did] else (0, "cleared")
        elif (
            did in executed
            and newest is not None
            and (newest - parse_time(rec["time"], where) >= horizon)
        ):
            label, why = 0, "quiet"
        else:
            counts["unlabelled"] += 1
            continue
        body = rec["body"]
        try:
            out.append(
                _example(
                    {"action": body.get("action"), "state": body.get("state", {}),
                     "time": body.get("scored_at", rec["time"])},
                    where,
                    label,
                )
            )  # fmt: skip
        except TrainingDataError:
            why = "skipped"
        counts[why] += 1
    return out, LedgerStats(decisions=len(decisions), **counts)
