"""Record times and the query bounds compared with them (as strings)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from ledger import DataDir, Draft, LedgerConfig
from ledger.record import format_time, parse_time, time_bound
from ledger.store import RecordQuery


def test_times_have_four_digit_years_and_six_fraction_digits() -> None:
    assert format_time(dt.datetime(999, 1, 2, 3, 4, 5, tzinfo=dt.UTC)) == (
        "0999-01-02T03:04:05.000000Z"
    )
    assert format_time(dt.datetime(2026, 11, 26, 17, 0, 0, 17, tzinfo=dt.UTC)) == (
        "2026-11-26T17:00:00.000017Z"
    )
    later = dt.datetime(2026, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert format_time(later) == "2025-12-31T23:00:00.000000Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(dt.datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("given", "bound"),
    [
        ("2026-11-26T17:18:37Z", "2026-11-26T17:18:37.000000Z"),
        ("2026-11-26T17:18:37.017568Z", "2026-11-26T17:18:37.017568Z"),
        ("2026-11-26T17:18:37.017568000Z", "2026-11-26T17:18:37.017568Z"),
        # Finer than the records: rounded up, so a record of that microsecond is before it.
        ("2026-11-26T17:18:37.017568500Z", "2026-11-26T17:18:37.017569Z"),
        ("2026-11-26T17:18:37.999999001+00:00", "2026-11-26T17:18:38.000000Z"),
        ("0999-01-01T00:00:00Z", "0999-01-01T00:00:00.000000Z"),
        ("9999-12-31T23:59:59.999999999Z", "9999-12-31T23:59:59.999999Z"),  # the last one
        ("2026-11-26t19:18:37.5+02:00", "2026-11-26T17:18:37.500000Z"),
    ],
)
def test_query_bounds_in_the_records_form(given: str, bound: str) -> None:
    assert time_bound(given) == bound


def test_bad_bounds_are_refused() -> None:
    for bad, why in (
        ("yesterday", "not an RFC 3339 time"),
        ("2026-11-26T17:18:37", "no time zone"),
        ("9999-12-31T23:59:59-01:00", "out of range"),
    ):
        with pytest.raises(ValueError, match=why):
            time_bound(bad)


async def test_bounds_select_the_records_an_auditor_means(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "data")
    data.generate_key("test.example/log")
    config = LedgerConfig(checkpoint_interval=0, checkpoint_every=0)
    async with data.open_ledger(config) as log:
        rec = await log.append(Draft("note", {"n": 1}))
        t = parse_time(rec.time)

        async def indexes(since: str | None = None, until: str | None = None) -> list[int]:
            q = RecordQuery(since=since and time_bound(since), until=until and time_bound(until))
            return [r.index for r in await log.store.query(q)]

        half = format_time(t)[:-1] + "500Z"  # half a microsecond after the record
        assert await indexes(since=half) == []  # it is before the bound
        assert rec.index in await indexes(until=half)  # and so before the end
        assert rec.index in await indexes(since="0999-01-01T00:00:00Z")
        assert await indexes(until="0999-01-01T00:00:00Z") == []
