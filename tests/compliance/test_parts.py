"""A ledger read in parts and merged gives the evidence of one reading.

The report reads long exports in parts of a fixed number of records, in worker
processes, and merges each part's evidence in order (``Evidence.merge``). What
crosses a cut must come out as if nothing was cut: a gap between the last record
of one part and the first of the next, an approval of a decision made in an
earlier part, the checkpoint that covers the period when the period ends at a
cut, the policy and model in force before the period.

The first tests feed made-up records (pure logic: every cut of a small sequence,
for several periods); the last reads the real gateway's ledger from the other
tests in parts as small as one record, in worker processes and in this one.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import pickle
from dataclasses import dataclass, field
from typing import Any

import pytest
from compliance_scenario import Built

import compliance.report
import compliance.tally
from compliance.evidence import Evidence, Period
from compliance.report import build_report, report_bytes
from ledger.record import format_time

T0 = dt.datetime(2026, 3, 1, 8, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Rec:
    index: int
    time: str
    kind: str
    actor: str = ""
    target: str = ""
    decision_id: str = ""
    body: dict[str, Any] = field(default_factory=dict)


def at(hours: float) -> str:
    return format_time(T0 + dt.timedelta(hours=hours))


def ledger() -> list[Rec | tuple[int, str]]:
    """Records and checkpoint lines ((size, root)), in log order, over six days: gaps of
    more than a day, decisions waiting for one or two approvals across later records,
    a denial, an expiry, policies and models activated, halts and incidents."""
    steps: list[tuple[float, str, str, dict[str, Any], str]] = [
        (0, "policy", "", {"policy_id": "p1", "source": "a.toml"}, "alice"),
        (0.5, "model", "", {"event": "activate", "model_id": "m1"}, "alice"),
        (
            1,
            "decision",
            "d1",
            {
                "verdict": "PENDING_APPROVAL",
                "approvals_required": "2",
                "risk": "0.5",
                "action": {"verb": "reboot"},
            },
            "engine",
        ),
        (2, "approval", "d1", {"reviewer": "alice"}, "alice"),
        (
            3,
            "decision",
            "d2",
            {
                "verdict": "EXECUTED",
                "risk": "0.25",
                "contributions": {"a": "0.5", "b": "-0.25"},
                "action": {"verb": "resize", "target": {"runtime": "lv"}},
            },
            "engine",
        ),
        (30, "approval", "d1", {"reviewer": "bob"}, "bob"),  # a gap of 27 hours before
        (31, "outcome", "d1", {"status": "applied"}, ""),
        (32, "decision", "d3", {"verdict": "PENDING_APPROVAL", "risk": "0.75"}, "engine"),
        (33, "policy", "", {"policy_id": "p2", "source": "b.toml"}, "alice"),
        (60, "denial", "d3", {"reason": "no"}, "carol"),
        (
            61,
            "decision",
            "d4",
            {"verdict": "PENDING_APPROVAL", "risk": "0.125", "approvals_required": "1"},
            "engine",
        ),
        (62, "halt", "", {"scope": {"all": True}, "reason": "drill"}, "bob"),
        (63, "expiry", "d4", {}, ""),
        (64, "resume", "", {"scope": {"all": True}, "reason": "over"}, "bob"),
        (100, "decision", "d5", {"verdict": "PENDING_APPROVAL", "risk": "0.5"}, "engine"),
        (101, "incident", "d2", {"harmful": True, "severity": "serious"}, "bob"),
        (102, "approval", "d5", {"reviewer": "alice"}, "alice"),
        (103, "model", "", {"event": "activate", "model_id": "m2"}, "alice"),
        (104, "rollback", "d2", {}, "alice"),
        (
            140,
            "decision",
            "d6",
            {"verdict": "DENIED", "risk": "0.875", "contributions": {"a": "-0.125", "b": "0.5"}},
            "engine",
        ),
    ]
    out: list[Rec | tuple[int, str]] = []
    for i, (hours, kind, decision_id, body, actor) in enumerate(steps):
        out.append(Rec(i, at(hours), kind, actor, "lv/web-1", decision_id, body))
        if i in (1, 6, 9, 13, 16, 19):
            out.append((i + 1, f"root{i + 1}"))
    return out


def feed(ev: Evidence, lines: list[Rec | tuple[int, str]]) -> Evidence:
    for line in lines:
        if isinstance(line, Rec):
            ev.feed(line)
        else:
            ev.checkpoint(line[0], line[1], f"note {line[0]}")
    return ev


def cuts(lines: list[Rec | tuple[int, str]]) -> list[int]:
    """Positions a part may start at: before a record, never before a checkpoint line."""
    return [i for i, line in enumerate(lines) if i and isinstance(line, Rec)]


def first_index(part: list[Rec | tuple[int, str]]) -> int:
    return next(line.index for line in part if isinstance(line, Rec))


def one_reading(period: Period) -> dict[str, Any]:
    """The evidence of the made-up ledger read in one go."""
    whole = feed(Evidence(period, drift=False), ledger())
    whole.finish()
    return whole.result()


def joined(period: Period, parts: list[list[Rec | tuple[int, str]]]) -> dict[str, Any]:
    total = Evidence(period, drift=False)
    for part in parts:
        total.merge(feed(Evidence(period, drift=False).starting_at(first_index(part)), part))
    total.finish()
    return total.result()


PERIODS = [
    ("2026-01-01", "2027-01-01"),  # everything
    (at(2.5), at(80)),  # starts after a pending decision, ends after the denial
    (at(31), at(62)),  # starts and ends between records
    (at(3), at(140)),  # ends at the last record's time: it is outside
    ("2026-04-01", "2026-05-01"),  # after everything
    ("2026-01-01", "2026-02-01"),  # before everything
]


@pytest.mark.parametrize(("start", "end"), PERIODS)
def test_every_single_cut_gives_the_evidence_of_one_reading(start: str, end: str):
    period = Period.parse(start, end)
    lines = ledger()
    expected = one_reading(period)
    assert expected["completeness"]["records_in_ledger"] == 20
    for cut in cuts(lines):
        assert joined(period, [lines[:cut], lines[cut:]]) == expected, f"cut before {cut}"


@pytest.mark.parametrize(("start", "end"), PERIODS)
def test_a_part_for_every_record_gives_the_evidence_of_one_reading(start: str, end: str):
    period = Period.parse(start, end)
    lines = ledger()
    starts = [0, *cuts(lines), len(lines)]
    parts = [lines[a:b] for a, b in itertools.pairwise(starts)]
    assert joined(period, parts) == one_reading(period)


def test_listed_gaps_are_the_first_ones_whatever_the_cuts(monkeypatch: pytest.MonkeyPatch):
    """Only the first gaps are listed (MAX_LISTED, here 2): a part's gap from the period's
    start, which merging drops, must not have taken a listed place from a later gap."""
    monkeypatch.setattr(compliance.tally, "MAX_LISTED", 2)
    lines: list[Rec | tuple[int, str]] = [Rec(0, at(12), "outcome")]
    lines += [Rec(i, at(34 + 48 * (i - 1)), "outcome") for i in range(1, 6)]
    period = Period.parse("2026-03-01", at(34 + 48 * 4 + 1))
    expected = feed(Evidence(period, drift=False), lines)
    expected.finish()
    gaps = expected.result()["completeness"]["gaps"]
    # Four gaps of 48 h; none from the start (12 h). A part from record 1 on sees one
    # from the start (34 h), which merging replaces with "none since record 0".
    assert (gaps["count"], len(gaps["items"])) == (4, 2)
    for cut in range(1, len(lines)):
        got = joined(period, [lines[:cut], lines[cut:]])["completeness"]["gaps"]
        assert got == gaps, f"cut before {cut}"


def test_the_made_up_ledger_crosses_cuts_with_what_matters():
    """The cases above are only worth something if the ledger has them: check it does."""
    ev = one_reading(Period.parse(*PERIODS[0]))
    # four, one from the period's start and one to its end
    assert ev["completeness"]["gaps"]["count"] == 6
    oversight = ev["oversight"]
    assert (oversight["approvals"], oversight["denials"], oversight["expiries"]) == (3, 1, 1)
    assert oversight["time_to_approval_seconds"]["count"] == 2  # d1 (two approvals) and d5
    assert ev["completeness"]["covering_checkpoint"]["size"] == 20
    windowed = one_reading(Period.parse(*PERIODS[1]))
    # the records before the period's end (80 h) are the first 14: a checkpoint at 14 covers
    assert windowed["completeness"]["covering_checkpoint"]["size"] == 14


@pytest.mark.parametrize("part", [1, 2, 3, 7])
@pytest.mark.parametrize("cpus", [1, 2])
def test_the_gateways_ledger_read_in_parts_gives_the_same_report(
    built: Built, monkeypatch: pytest.MonkeyPatch, part: int, cpus: int
):
    period = ("2020-01-01", "2100-01-01")
    expected = report_bytes(build_report(built.export, "eu-ai-act", *period, key=built.key))
    monkeypatch.setattr(compliance.report, "_PART", part)
    monkeypatch.setattr(compliance.report.os, "cpu_count", lambda: cpus)
    got = report_bytes(build_report(built.export, "eu-ai-act", *period, key=built.key))
    assert json.loads(got)["evidence"] == json.loads(expected)["evidence"]
    assert got == expected


def test_a_part_read_in_a_worker_is_the_same_as_one_read_here(built: Built):
    """Evidence crosses a process boundary by pickle: nothing it needs is lost."""
    period = Period.parse("2020-01-01", "2100-01-01")
    size = built.export.stat().st_size
    header = len(built.export.read_bytes().split(b"\n", 1)[0]) + 1

    def read() -> Evidence:
        return compliance.report.read_part(str(built.export), period, "", True, header,
                                           size - header, 0)  # fmt: skip

    results = []
    for part in (read(), pickle.loads(pickle.dumps(read()))):
        total = Evidence(period, model_card=compliance.report._card_finder(None))
        total.merge(part)
        total.finish()
        results.append(total.result())
    here, there = results
    assert there == here
    assert here["drift"]["models"]  # drift was computed: the part carried its bins
    assert all(m["available"] for m in here["drift"]["models"].values())


def test_a_ledger_silent_until_the_period_ends_has_a_gap_there_whatever_comes_after():
    """The same records in the period give the same gaps whether or not the ledger wrote
    anything after the period: silence to the period's end is a gap."""
    period = Period.parse("2026-03-01", "2026-03-08")
    early = [Rec(0, at(1), "policy", body={"policy_id": "p1"}), Rec(1, at(2), "note")]
    after = Rec(2, format_time(dt.datetime(2026, 3, 20, tzinfo=dt.UTC)), "note")
    for lines in (early, [*early, after]):
        ev = feed(Evidence(period, drift=False), lines)
        ev.finish()
        gaps = ev.result()["completeness"]["gaps"]
        assert gaps["count"] == 1, lines
        assert (gaps["items"][0]["from"], gaps["items"][0]["to"]) == (
            at(2),
            "2026-03-08T00:00:00.000000Z",
        )
    # A period not over yet is measured up to when the report is made.
    ongoing = feed(Evidence(period, drift=False, as_of=T0 + dt.timedelta(hours=20)), early)
    ongoing.finish()
    assert ongoing.result()["completeness"]["gaps"]["count"] == 0
    # And a period with no record at all is one gap.
    empty = Evidence(Period.parse("2026-05-01", "2026-05-03"), drift=False)
    empty.finish()
    assert empty.result()["completeness"]["gaps"]["count"] == 1


def test_retention_before_the_oldest_record_is_no_time_at_all():
    ev = feed(Evidence(Period.parse("2001-01-01", "2001-02-01"), drift=False), ledger())
    ev.finish()
    assert ev.result()["retention"]["held_days"] == 0


def test_a_bound_finer_than_a_microsecond_is_rounded_up():
    """Records have microseconds: a bound 100 ns after a record's time is after it, so
    that record is before the period's start (and counts before its end)."""
    start = Period.parse("2026-03-01T09:00:00.0000001Z", "2026-03-02")
    assert start.start_text == "2026-03-01T09:00:00.000001Z"
    end = Period.parse("2026-03-01", "2026-03-01T09:00:00.0000001Z")
    assert end.end_text == "2026-03-01T09:00:00.000001Z"
    assert Period.parse("2026-03-01T09:00:00.000000900Z", "2026-03-02").start_text == (
        "2026-03-01T09:00:00.000001Z"
    )
    with pytest.raises(ValueError, match="out of range"):
        Period.parse("0001-01-01T00:30:00+01:00", "2026-03-02")
