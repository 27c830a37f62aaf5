"""Labelled history: the JSON-lines history file, action files, labels joined from the ledger."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from adapters.action import PowerState, Verb
from adapters.errors import InvalidActionError
from explain.errors import TrainingDataError
from explain.history import LedgerStats, label_ledger, parse_time, read_history, read_proposal

ACTION = {"verb": "reboot", "target": {"runtime": "libvirt", "resource": "web-1"}}
STATE = {"power": "running", "vcpus": 2, "labels": {"environment": "staging"}}


def line(**fields: Any) -> str:
    return json.dumps({"action": ACTION, "state": STATE, "time": "2026-03-01T02:10:00Z", **fields})


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "history.jsonl"
    path.write_text("".join(f"{text}\n" for text in lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- parse_time


def test_parse_time():
    assert parse_time("2026-03-01T02:10:00Z", "t") == dt.datetime(2026, 3, 1, 2, 10, tzinfo=dt.UTC)
    t = parse_time("2026-03-01T04:10:00+02:00", "t")
    assert t == dt.datetime(2026, 3, 1, 2, 10, tzinfo=dt.UTC)
    with pytest.raises(TrainingDataError, match="no UTC offset"):
        parse_time("2026-03-01T02:10:00", "t")
    with pytest.raises(TrainingDataError, match="not an RFC 3339 time"):
        parse_time("yesterday", "t")
    with pytest.raises(TrainingDataError, match="RFC 3339 string"):
        parse_time(1767225600, "t")


# --------------------------------------------------------------------------- read_history


def test_read_history_good_lines(tmp_path: Path):
    other = {"verb": "delete", "target": {"runtime": "kata", "resource": "sbx-2"}}
    path = write(
        tmp_path,
        line(label=0),
        line(label=1, time="2026-03-02T10:00:00+01:00"),
        "   ",
        json.dumps({"action": other, "time": "2026-03-03T00:00:00Z", "label": True}),
    )
    examples = read_history(path)
    assert [e.label for e in examples] == [0, 1, 1]
    assert all(type(e.label) is int for e in examples)
    first, second, third = examples
    assert first.action.verb is Verb.REBOOT
    assert first.state.power is PowerState.RUNNING
    assert first.state.label("environment") == "staging"
    assert first.time == dt.datetime(2026, 3, 1, 2, 10, tzinfo=dt.UTC)
    assert second.time == dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
    assert third.action.verb is Verb.DELETE
    assert third.state.power is PowerState.UNKNOWN  # no state: all unknown
    assert third.state.labels == {}


@pytest.mark.parametrize(
    ("bad", "in_message"),
    [
        pytest.param("{not json", "not JSON", id="not-json"),
        pytest.param(
            json.dumps(
                {"action": {**ACTION, "verb": "teleport"}, "time": "2026-03-01T00:00Z", "label": 0}
            ),
            "unknown verb",
            id="unknown-verb",
        ),
        pytest.param(line(label=2), "label must be", id="label-2"),
        pytest.param(line(label=0.5), "label must be", id="label-half"),
        pytest.param(line(label=1.0), "label must be", id="label-float-one"),
        pytest.param(line(label="1"), "label must be", id="label-text"),
        pytest.param(line(), "label must be", id="no-label"),
        pytest.param(
            json.dumps({"action": ACTION, "state": STATE, "label": 1}), "no time", id="no-time"
        ),
        pytest.param(line(label=1, time="2026-03-01T02:10:00"), "no UTC offset", id="naive-time"),
        pytest.param(line(label=1, time="soon"), "RFC 3339", id="bad-time"),
        pytest.param(line(label=1, state={"vcpus": -1}), "state.vcpus", id="bad-state"),
        pytest.param(line(label=1, extra=True), "unknown field 'extra'", id="unknown-field"),
        pytest.param("[1, 2]", "JSON object", id="not-an-object"),
    ],
)
def test_read_history_names_the_bad_line(tmp_path: Path, bad: str, in_message: str):
    # the bad line is line 4: two good lines and a blank one come first
    path = write(tmp_path, line(label=0), "", line(label=1), bad, line(label=0))
    with pytest.raises(TrainingDataError) as info:
        read_history(path)
    message = str(info.value)
    assert "history.jsonl line 4:" in message
    assert in_message in message


def test_bad_first_line(tmp_path: Path):
    with pytest.raises(TrainingDataError, match=r"history\.jsonl line 1: not JSON"):
        read_history(write(tmp_path, "nope", line(label=0)))


def test_overlong_line(tmp_path: Path):
    long = line(label=1, state={**STATE, "labels": {"note": "x" * (1 << 20)}})
    with pytest.raises(TrainingDataError, match="line 2: longer than"):
        read_history(write(tmp_path, line(label=0), long))


def test_empty_history(tmp_path: Path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(TrainingDataError, match="no examples"):
        read_history(empty)
    with pytest.raises(TrainingDataError, match="no examples"):
        read_history(write(tmp_path, "", "  ", "\t"))


def test_missing_history_file(tmp_path: Path):
    with pytest.raises(TrainingDataError, match="cannot read"):
        read_history(tmp_path / "absent.jsonl")


# --------------------------------------------------------------------------- read_proposal


def test_read_proposal():
    action, state, when = read_proposal({"action": ACTION, "state": STATE}, "f")
    assert action.verb is Verb.REBOOT
    assert state.vcpus == 2
    assert when is None
    _, _, when = read_proposal({"action": ACTION, "time": "2026-03-01T02:10:00Z"}, "f")
    assert when == dt.datetime(2026, 3, 1, 2, 10, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("obj", "in_message"),
    [
        ([ACTION], "expected a JSON object"),
        ("action", "expected a JSON object"),
        ({"action": ACTION, "extra": 1}, "unknown field 'extra'"),
        ({"state": STATE}, "no action"),
        ({"action": ACTION, "time": "2026-03-01T02:10:00"}, "no UTC offset"),
    ],
)
def test_read_proposal_refuses(obj: Any, in_message: str):
    with pytest.raises(InvalidActionError) as info:
        read_proposal(obj, "proposal.json")
    assert in_message in str(info.value)


def test_read_proposal_passes_on_the_field():
    with pytest.raises(InvalidActionError) as info:
        read_proposal({"action": {**ACTION, "parameters": {"force": True}}}, "f")
    assert info.value.field == "action.parameters.force"


# --------------------------------------------------------------------------- label_ledger

NEWEST = dt.datetime(2026, 3, 20, tzinfo=dt.UTC)
OLD = NEWEST - dt.timedelta(days=19)
RECENT = NEWEST - dt.timedelta(days=2)


class Ledger:
    """Builds records shaped like ``govgate ledger query`` output."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def add(self, kind: str, did: str | None, when: dt.datetime, body: Any) -> None:
        self.records.append(
            {
                "index": len(self.records),
                "time": when.isoformat().replace("+00:00", "Z"),
                "kind": kind,
                "decision_id": did,
                "body": body,
            }
        )

    def decision(self, did: str, when: dt.datetime = OLD, action: Any = None) -> None:
        if action is None:
            action = {"verb": "reboot", "target": {"runtime": "libvirt", "resource": did}}
        self.add("decision", did, when, {"action": action, "state": STATE, "score": 0.3})

    def outcome(self, did: str, when: dt.datetime) -> None:
        self.add("outcome", did, when, {"ok": True})

    def incident(self, did: str | None, when: dt.datetime, **body: Any) -> None:
        self.add("incident", did, when, {"summary": "page", **body})


def labels_by_resource(examples: list[Any]) -> dict[str, int]:
    return {e.action.target.resource: e.label for e in examples}


def test_label_ledger():
    led = Ledger()
    step = dt.timedelta(hours=1)
    for did in ("harm", "clear", "harm-then-clear", "clear-then-harm", "quiet", "never"):
        led.decision(did)
        if did != "never":
            led.outcome(did, OLD + step)
    led.decision("recent", RECENT)
    led.outcome("recent", RECENT + step)
    led.decision("bad", action={"verb": "teleport", "target": {"runtime": "libvirt"}})
    led.outcome("bad", OLD + step)
    led.incident("bad", OLD + 2 * step)

    led.incident("harm", OLD + 2 * step)
    led.incident("clear", OLD + 2 * step, harmful=False)
    led.incident("harm-then-clear", OLD + 2 * step, harmful=True)
    led.incident("harm-then-clear", OLD + 3 * step, harmful=False)
    led.incident("clear-then-harm", OLD + 2 * step, harmful=False)
    led.incident("clear-then-harm", OLD + 3 * step)
    # records without a decision id, and an incident for an unknown decision, are ignored
    led.add("decision", None, OLD, {"action": ACTION, "state": STATE})
    led.add("decision", "", OLD, {"action": ACTION, "state": STATE})
    led.incident(None, OLD + 4 * step)
    led.incident("no-such-decision", OLD + 4 * step)
    led.add("note", "quiet", NEWEST, "not an object")  # body not an object: ignored
    led.add("checkpoint", None, NEWEST, {})

    examples, stats = label_ledger(led.records, horizon=dt.timedelta(days=7))
    assert stats == LedgerStats(decisions=8, harmful=2, cleared=2, quiet=1, unlabelled=2, skipped=1)
    assert labels_by_resource(examples) == {
        "harm": 1,
        "clear": 0,
        "harm-then-clear": 0,
        "clear-then-harm": 1,
        "quiet": 0,
    }
    harm = next(e for e in examples if e.action.target.resource == "harm")
    assert harm.time == OLD  # the decision's time, not the incident's
    assert harm.state.vcpus == 2
    assert harm.action.verb is Verb.REBOOT


def test_incident_labels_even_without_outcome_or_age():
    # an incident settles the label however recent the decision, executed or not
    led = Ledger()
    led.decision("fresh", NEWEST)
    led.incident("fresh", NEWEST)
    examples, stats = label_ledger(led.records)
    assert labels_by_resource(examples) == {"fresh": 1}
    assert (stats.harmful, stats.unlabelled) == (1, 0)


def test_quiet_needs_the_full_horizon():
    horizon = dt.timedelta(days=7)
    led = Ledger()
    led.decision("exactly", NEWEST - horizon)
    led.outcome("exactly", NEWEST - horizon)
    led.decision("almost", NEWEST - horizon + dt.timedelta(seconds=1))
    led.outcome("almost", NEWEST - horizon + dt.timedelta(seconds=1))
    led.add("checkpoint", None, NEWEST, {})
    examples, stats = label_ledger(led.records, horizon=horizon)
    assert labels_by_resource(examples) == {"exactly": 0}
    assert stats == LedgerStats(decisions=2, harmful=0, cleared=0, quiet=1, unlabelled=1, skipped=0)
    # a shorter horizon lets the second one count as quiet too
    examples, stats = label_ledger(led.records, horizon=dt.timedelta(days=1))
    assert labels_by_resource(examples) == {"exactly": 0, "almost": 0}
    assert stats.quiet == 2


def test_empty_ledger():
    examples, stats = label_ledger([])
    assert examples == []
    assert stats == LedgerStats(decisions=0, harmful=0, cleared=0, quiet=0, unlabelled=0, skipped=0)


def test_ledger_record_without_time_is_refused():
    led = Ledger()
    led.decision("a")
    led.records[0]["time"] = None
    with pytest.raises(TrainingDataError, match="ledger record 0"):
        label_ledger(led.records)
