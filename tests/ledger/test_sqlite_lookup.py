"""SQLiteStore's query index kept behind the head, in its own file (``lookup``, ``indexed_upto``).

Every query is checked against a brute-force filter over all records, on ledgers whose
``lookup`` is full, part-way, empty, or filling while the queries run, and the results
must be the same whatever ``index_every`` was. The ledgers are built through
:class:`Ledger` with a fake clock, so that one plan of appends gives byte-identical
ledgers under every setting (Ed25519 signatures are deterministic).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import random
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ledger._lookup
import ledger.log
import ledger.sqlite
from ledger import Draft, LedgerConfig, SQLiteStore
from ledger._lookup import lookup_path
from ledger.errors import StoreError
from ledger.export import export_ledger
from ledger.log import Ledger
from ledger.merkle import Frontier
from ledger.note import NoteSigner
from ledger.record import Record, format_time, open_record, parse_time
from ledger.store import Batch, Head, RecordQuery
from ledger.verify import verify_export

QUIET = LedgerConfig(checkpoint_interval=0, checkpoint_every=0)
COLUMNS = ("kind", "actor", "target", "decision_id", "trace_id")
OLD_INDEXES = (
    "records_time",
    "records_kind",
    "records_actor",
    "records_target",
    "records_decision",
    "records_trace",
)

TRACES = ("0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210", "a" * 32)
# Values are shared between columns on purpose: a lookup that mixed up its fields
# would answer ``actor="p1"`` with records whose target is "p1".
KINDS = ("note", "decision", "approval", "p0", "p1")
SHARED = ("p0", "p1", "p2", "vm-1", "ünï", "a'b%_", TRACES[0])
NOWHERE = ("nope", "P1", "p1 ", "%", "key2")


class FakeClock:
    """``utc_now`` for the ledger: moves only when the test says so."""

    def __init__(self) -> None:
        self.now = dt.datetime(2031, 5, 17, 12, 0, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def tick(self, us: int) -> None:
        self.now += dt.timedelta(microseconds=us)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(ledger.log, "utc_now", c)
    return c


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner.generate("test.example/log")


Plan = list[tuple[int, list[Draft]]]  # (microseconds to move the clock, drafts appended together)


def make_plan(seed: int, total: int) -> Plan:
    rng = random.Random(seed)
    plan: Plan = []
    n = 0
    while n < total:
        size = rng.choice((1, 1, 2, 3, 7, 16, 40, 70, 130))
        size = min(size, total - n)
        drafts = []
        for _ in range(size):
            drafts.append(
                Draft(
                    rng.choice(KINDS),
                    {"n": n},
                    actor=rng.choice(("", "", *SHARED)),
                    target=rng.choice(("", "", "", *SHARED)),
                    decision_id=rng.choice(("", "", f"d-{n % 23}", *SHARED[:3])),
                    trace_id=rng.choice(("", "", *TRACES)),
                )
            )
            n += 1
        # 0: two batches share a time; 1: adjacent microseconds; else a gap.
        plan.append((rng.choice((0, 1, 1, 2, 50, 1000, 250_000)), drafts))
    return plan


async def settle(store: SQLiteStore) -> None:
    """Wait until no catch-up task of ``store`` is running."""
    for _ in range(4000):
        task = store._indexer
        if task is None or task.done():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the indexer never finished")


def read_meta(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT key, value FROM meta").fetchall()
    db.close()
    return {str(k): str(v) for k, v in rows}


def indexed_upto(path: Path) -> int:
    """How far the query index (its own file, next to the ledger) has got."""
    with sqlite3.connect(lookup_path(path)) as db:
        (upto,) = db.execute("SELECT indexed_upto FROM state").fetchone()
    db.close()
    return int(upto)


def read_all(path: Path) -> list[Record]:
    """Every record, straight from the file, with its columns checked against its envelope."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT idx, time, kind, actor, target, decision_id, trace_id, envelope "
            "FROM records ORDER BY idx"
        ).fetchall()
    db.close()
    out = []
    for i, row in enumerate(rows):
        rec = open_record(bytes(row[7])).record
        assert row[0] == rec.index == i
        assert tuple(row[1:7]) == (
            rec.time,
            rec.kind,
            rec.actor,
            rec.target,
            rec.decision_id,
            rec.trace_id,
        )
        out.append(rec)
    return out


def lookup_rows(path: Path) -> set[tuple[int, str, int]]:
    with sqlite3.connect(lookup_path(path)) as db:
        rows = db.execute("SELECT field, value, idx FROM lookup").fetchall()
    db.close()
    return {(int(f), str(v), int(i)) for f, v, i in rows}


def expected_lookup(records: list[Record], upto: int) -> set[tuple[int, str, int]]:
    return {
        (field, getattr(r, col), r.index)
        for r in records[:upto]
        for field, col in enumerate(COLUMNS)
        if getattr(r, col) != ""
    }


def brute(records: list[Record], q: RecordQuery, after: int | None = None) -> list[Record]:
    out = []
    for r in records:
        if r.index < q.start or (q.end is not None and r.index >= q.end):
            continue
        if after is not None and r.index <= after:
            continue
        if q.since is not None and r.time < q.since:
            continue
        if q.until is not None and r.time >= q.until:
            continue
        if any(getattr(q, c) is not None and getattr(q, c) != getattr(r, c) for c in COLUMNS):
            continue
        out.append(r)
        if len(out) == q.limit:
            break
    return out


def shifted(t: str, us: int) -> str:
    return format_time(parse_time(t) + dt.timedelta(microseconds=us))


def random_queries(
    records: list[Record], seed: int, count: int
) -> Iterator[tuple[RecordQuery, int | None]]:
    rng = random.Random(seed)
    size = len(records)
    times = sorted({r.time for r in records})
    moments = [*times, shifted(times[0], -1), shifted(times[-1], 1), "2000-01-01T00:00:00.000000Z"]
    moments += [shifted(rng.choice(times), rng.choice((-1, 1, 3))) for _ in range(20)]
    values: dict[str, tuple[str, ...]] = {
        "kind": (*KINDS, "key"),
        "actor": SHARED,
        "target": SHARED,
        "decision_id": (*SHARED, "d-0", "d-5", "d-22"),
        "trace_id": TRACES,
    }
    for _ in range(count):
        fields: dict[str, Any] = {}
        for col in COLUMNS:
            roll = rng.random()
            if roll < 0.12:
                fields[col] = rng.choice(values[col])
            elif roll < 0.17:
                fields[col] = ""
            elif roll < 0.19:
                fields[col] = rng.choice(NOWHERE)
        if rng.random() < 0.4:
            fields["start"] = rng.randrange(size + 5)
        if rng.random() < 0.4:
            lo = fields.get("start", 0)
            fields["end"] = rng.randrange(lo, size + 10)
        if rng.random() < 0.35:
            fields["since"] = rng.choice(moments)
        if rng.random() < 0.35:
            fields["until"] = rng.choice(moments)
        fields["limit"] = rng.choice((1, 2, 3, 10, 64, 200, 100_000))
        after = None
        if rng.random() < 0.3:
            after = rng.randrange(-1, size + 3)
        yield RecordQuery(**fields), after


Expected = dict[tuple[RecordQuery, int | None], list[Record]]


async def check_queries(
    store: SQLiteStore,
    records: list[Record],
    seed: int,
    count: int,
    expected: Expected | None = None,
) -> list[list[bytes]]:
    """Run random queries and pages on ``store``; each must equal the brute force
    (computed once per query into ``expected``, for stores holding the same records)."""
    cache: Expected = {} if expected is None else expected

    def want_for(q: RecordQuery, after: int | None) -> list[Record]:
        if (q, after) not in cache:
            cache[q, after] = brute(records, q, after)
        return cache[q, after]

    seen: list[list[bytes]] = []
    for q, after in random_queries(records, seed, count):
        got = await store.query(q, after=after)
        want = want_for(q, after)
        assert [r.index for r in got] == [r.index for r in want], (q, after)
        assert got == want, (q, after)
        seen.append([r.envelope for r in got])
        full = dataclasses.replace(q, limit=100_000)
        everything = want_for(full, after)
        if len(everything) <= 25 * q.limit:  # page through everything the query matches
            pages: list[Record] = []
            cursor = after
            for _ in range(len(records) + 2):
                page = await store.query(q, after=cursor)
                assert len(page) <= q.limit
                if not page:
                    break
                pages.extend(page)
                cursor = page[-1].index
            assert [r.index for r in pages] == [r.index for r in everything]
            seen.append([r.envelope for r in pages])
    return seen


async def build(
    path: Path, signer: NoteSigner, clock: FakeClock, index_every: int, plan: Plan
) -> None:
    store = SQLiteStore(path, index_every=index_every)
    async with Ledger(store, signer, config=QUIET) as log:
        for tick, drafts in plan:
            clock.tick(tick)
            recs = await log.append_many(drafts)
            assert [r.body["n"] for r in recs] == [d.body["n"] for d in drafts]
        await settle(store)


async def noop_append(store: SQLiteStore) -> None:
    """An append transaction that writes no record (what a chunk whose every draft lost
    its claim writes): it is still an append, so it may start the indexer."""

    def nothing(head: Head, frontier: Frontier, taken: frozenset[str]) -> Batch:
        return Batch([], [], head, frontier)

    await store.sequence(nothing)


# -- tests -------------------------------------------------------------------------


async def test_queries_match_brute_force_whatever_the_index_state(
    tmp_path: Path, signer: NoteSigner, clock: FakeClock
) -> None:
    plan = make_plan(seed=7, total=1500)
    settings = (1, 3, 50, 1000, 10**9)
    paths = {n: tmp_path / f"every-{n}.db" for n in settings}
    start = clock.now
    for n, path in paths.items():
        clock.now = start  # the same times for every ledger
        await build(path, signer, clock, n, plan)

    records = read_all(paths[1])
    size = len(records)
    assert size == 1501
    assert len({r.time for r in records}) > 20  # many batches, some sharing a time
    assert [r.time for r in records] == sorted(r.time for r in records)
    for path in paths.values():  # one plan, one ledger: the precondition for comparing
        assert read_all(path) == records

    uptos = {n: indexed_upto(p) for n, p in paths.items()}
    assert uptos[1] == size  # indexed up to the last append
    assert 0 < uptos[1000] < size  # part-way: a tail of records is scanned
    assert uptos[10**9] == 0  # never indexed: everything is scanned
    for n, path in paths.items():
        assert 0 <= uptos[n] <= size
        assert size - uptos[n] < n  # behind by less than index_every
        assert read_meta(path)["schema_version"] == "3"
        # Every non-empty column value below indexed_upto, and nothing else.
        assert lookup_rows(path) == expected_lookup(records, uptos[n]), n

    results = {}
    expected: Expected = {}
    for n, path in paths.items():
        store = SQLiteStore(path, index_every=n)
        async with store:
            everything = await store.query(RecordQuery(limit=100_000))
            assert everything == records
            assert await store.query(RecordQuery(kind="")) == []  # every record has a kind
            results[n] = await check_queries(store, records, 11, 250, expected)
        assert indexed_upto(path) == uptos[n]  # queries and opening change nothing
    first = results[1]
    for n in settings:
        assert results[n] == first, n


async def test_fixed_queries_on_a_part_way_index(
    tmp_path: Path, signer: NoteSigner, clock: FakeClock
) -> None:
    """Hand-picked queries around the indexed_upto boundary and on time ties."""
    plan = make_plan(seed=3, total=400)
    path = tmp_path / "l.db"
    await build(path, signer, clock, 300, plan)
    records = read_all(path)
    upto = indexed_upto(path)
    assert 0 < upto < len(records)
    store = SQLiteStore(path, index_every=300)
    async with store:
        for col in COLUMNS:
            for value in {getattr(r, col) for r in records} | {"", "nope"}:
                for start, end in ((0, None), (upto - 1, upto + 1), (upto, None), (0, upto)):
                    for limit in (1, 3, 100_000):
                        q = RecordQuery(start=start, end=end, limit=limit, **{col: value})
                        assert await store.query(q) == brute(records, q), q
                        assert await store.query(q, after=upto - 1) == brute(records, q, upto - 1)
        # Time bounds at every distinct time, and either side of it.
        for t in sorted({r.time for r in records}):
            for since in (t, shifted(t, -1), shifted(t, 1)):
                q = RecordQuery(since=since, limit=100_000)
                assert await store.query(q) == brute(records, q)
                q = RecordQuery(until=since, limit=100_000)
                assert await store.query(q) == brute(records, q)
                q = RecordQuery(since=t, until=since, limit=5)
                assert await store.query(q) == brute(records, q)


async def test_queries_stay_right_while_the_indexer_fills_lookup(
    tmp_path: Path, signer: NoteSigner, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "l.db"
    await build(path, signer, clock, 10**9, make_plan(seed=5, total=900))
    records = read_all(path)
    assert indexed_upto(path) == 0
    monkeypatch.setattr(ledger._lookup, "INDEX_STEP", 7)  # many small catch-up transactions
    seen_upto = set()
    store = SQLiteStore(path, index_every=1)
    async with store:
        await noop_append(store)
        task = store._indexer
        assert task is not None
        queries = iter(random_queries(records, seed=9, count=100_000))
        rounds = 0
        while not task.done():
            seen_upto.add(indexed_upto(path))
            q, after = next(queries)
            assert await store.query(q, after=after) == brute(records, q, after), (q, after)
            rounds += 1
        await settle(store)
        assert indexed_upto(path) == len(records)
        assert lookup_rows(path) == expected_lookup(records, len(records))
        await check_queries(store, records, seed=13, count=100)
    between = {u for u in seen_upto if 0 < u < len(records)}
    assert len(between) >= 3, (rounds, sorted(seen_upto))


async def test_closing_while_the_indexer_runs_leaves_lookup_consistent(
    tmp_path: Path, signer: NoteSigner, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "l.db"
    await build(path, signer, clock, 10**9, make_plan(seed=17, total=900))
    records = read_all(path)
    monkeypatch.setattr(ledger._lookup, "INDEX_STEP", 3)
    store = SQLiteStore(path, index_every=1)
    async with store:
        await noop_append(store)
        for _ in range(2000):
            if indexed_upto(path) >= 50:
                break
            await asyncio.sleep(0.002)
        task = store._indexer
        assert task is not None
        assert not task.done()
    # close() stopped the indexer between or inside its steps: each step is one
    # transaction, so lookup holds exactly the records below indexed_upto.
    upto = indexed_upto(path)
    assert 50 <= upto < len(records)
    assert lookup_rows(path) == expected_lookup(records, upto)
    store = SQLiteStore(path, index_every=1)
    async with store:
        await check_queries(store, records, seed=19, count=80)
        await noop_append(store)  # the next append picks up where it stopped
        await settle(store)
        assert indexed_upto(path) == len(records)
        assert lookup_rows(path) == expected_lookup(records, len(records))
        await check_queries(store, records, seed=19, count=80)


async def test_two_writers_on_one_file_keep_lookup_right(
    tmp_path: Path, signer: NoteSigner
) -> None:
    """Two processes' stores on one file: one indexes often, the other never; the meta row,
    not either store's memory, says what is indexed."""
    path = tmp_path / "l.db"
    eager, lazy = SQLiteStore(path, index_every=3), SQLiteStore(path, index_every=10**9)
    rng = random.Random(31)
    async with Ledger(eager, signer, config=QUIET) as a, Ledger(lazy, signer, config=QUIET) as b:
        for _ in range(12):
            await asyncio.gather(
                *(
                    (a if rng.random() < 0.5 else b).append(
                        Draft(
                            rng.choice(KINDS),
                            {"r": rng.random()},
                            actor=rng.choice(("", *SHARED)),
                            target=rng.choice(("", *SHARED)),
                        )
                    )
                    for _ in range(25)
                )
            )
        await settle(eager)
        records = read_all(path)
        upto = indexed_upto(path)
        assert 0 < upto <= len(records) == 301
        assert lookup_rows(path) == expected_lookup(records, upto)
        await check_queries(eager, records, seed=37, count=80)
        await check_queries(lazy, records, seed=37, count=80)


async def test_the_indexer_starts_only_when_index_every_records_are_behind(
    tmp_path: Path, signer: NoteSigner, clock: FakeClock
) -> None:
    path = tmp_path / "l.db"
    store = SQLiteStore(path, index_every=10)
    async with Ledger(store, signer, config=QUIET) as log:
        for i in range(8):  # genesis + 8 = 9 records: one short
            await log.append(Draft("note", {"i": i}, actor="x"))
        await settle(store)
        assert indexed_upto(path) == 0
        await log.append(Draft("note", {}, actor="x"))
        await settle(store)
        assert indexed_upto(path) == 10
        assert lookup_rows(path) == expected_lookup(read_all(path), 10)
        for i in range(9):
            await log.append(Draft("note", {"i": i}))
        await settle(store)
        assert indexed_upto(path) == 10
        assert len(await store.query(RecordQuery(actor="x"))) == 9
    with pytest.raises(ValueError, match="index_every"):
        SQLiteStore(path, index_every=0)


def downgrade(path: Path, version: str) -> None:
    """Turn a current file into what govgate with schema ``version`` left behind."""
    for suffix in ("", "-wal", "-shm"):  # older versions had no index file
        Path(f"{lookup_path(path)}{suffix}").unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE INDEX records_time ON records (time)")
        db.execute("CREATE INDEX records_kind ON records (kind, idx)")
        db.execute("CREATE INDEX records_actor ON records (actor, idx)")
        db.execute("CREATE INDEX records_target ON records (target, idx)")
        db.execute("CREATE INDEX records_decision ON records (decision_id, idx)")
        db.execute("CREATE INDEX records_trace ON records (trace_id, idx)")
        if version == "1":  # version 1 had no claims
            db.execute("DROP TABLE claims")
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    db.close()


def schema_objects(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name, type FROM sqlite_master").fetchall()
    db.close()
    return {str(n): str(t) for n, t in rows}


@pytest.mark.parametrize("version", ["2", "1"])
async def test_an_older_file_is_upgraded_on_open(
    tmp_path: Path, signer: NoteSigner, clock: FakeClock, version: str
) -> None:
    path = tmp_path / "l.db"
    await build(path, signer, clock, 20, make_plan(seed=21, total=300))
    assert indexed_upto(path) > 0
    downgrade(path, version)
    objects = schema_objects(path)
    assert set(OLD_INDEXES) <= set(objects)
    assert "lookup" not in objects
    assert "indexed_upto" not in read_meta(path)
    before = read_all(path)

    store = SQLiteStore(path, index_every=50)
    async with store:
        objects = schema_objects(path)
        assert not set(OLD_INDEXES) & set(objects)
        assert schema_objects(lookup_path(path))["lookup"] == "table"
        assert objects["claims"] == "table"
        assert read_meta(path)["schema_version"] == "3"
        # Records from before the claims table have no claims: the store says up to where.
        assert store.claims_from == (len(before) if version == "1" else 0)
        assert indexed_upto(path) == 0
        assert lookup_rows(path) == set()
        # Nothing is indexed yet: every query scans, and is right.
        assert await store.query(RecordQuery(limit=100_000)) == before
        await check_queries(store, before, seed=23, count=120)
    assert read_all(path) == before

    store = SQLiteStore(path, index_every=50)
    async with Ledger(store, signer, config=QUIET) as log:
        for i in range(3):
            clock.tick(10)
            await log.append_many(
                [Draft("note", {"i": i, "j": j}, actor=f"up{j % 3}") for j in range(20)]
            )
        await settle(store)
        records = read_all(path)
        upto = indexed_upto(path)
        assert upto >= len(before)  # the first append caught up everything behind
        assert lookup_rows(path) == expected_lookup(records, upto)
        await check_queries(store, records, seed=29, count=150)
        out = tmp_path / "export.jsonl"
        await export_ledger(log, out)
    assert records[: len(before)] == before
    result = verify_export(out, signer.verifier)
    assert result.size == len(records) == len(before) + 60
    # Opening again upgrades nothing more and keeps what was indexed.
    store = SQLiteStore(path, index_every=50)
    async with store:
        assert read_meta(path)["schema_version"] == "3"
        assert store.claims_from == (len(before) if version == "1" else 0)  # not moved on
        assert indexed_upto(path) == upto
        assert await store.query(RecordQuery(actor="up1", limit=100_000)) == [
            r for r in records if r.actor == "up1"
        ]


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    async with SQLiteStore(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(StoreError, match=r"schema version 4, newer than .*\(3\)"):
        async with SQLiteStore(path):
            pass
    assert read_meta(path)["schema_version"] == "4"
    # The refused store is closed: it does not hold the file.
    with sqlite3.connect(path) as db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
    db.close()


async def test_a_newer_schema_file_is_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    async with SQLiteStore(path):
        pass
    # What a future version 4 might look like: its own index named like an old one.
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
        db.execute("CREATE INDEX records_kind ON records (kind, idx)")
    db.close()
    objects, meta = schema_objects(path), read_meta(path)
    with pytest.raises(StoreError, match="newer"):
        async with SQLiteStore(path):
            pass
    assert read_meta(path) == meta
    assert schema_objects(path) == objects


async def test_lookup_skips_empty_strings_and_is_used_below_indexed_upto(
    tmp_path: Path, signer: NoteSigner, clock: FakeClock
) -> None:
    """White-box: below indexed_upto a filtered query reads ``lookup``, above it the records."""
    path = tmp_path / "l.db"
    store = SQLiteStore(path, index_every=5)
    async with Ledger(store, signer, config=QUIET) as log:
        for i in range(12):
            await log.append(Draft("note", {"i": i}, actor="" if i % 2 else "alice"))
        await settle(store)
    upto = indexed_upto(path)
    records = read_all(path)
    assert 0 < upto <= len(records)
    with sqlite3.connect(lookup_path(path)) as db:
        assert db.execute("SELECT count(*) FROM lookup WHERE value = ''").fetchone() == (0,)
        # Remove alice from lookup: the indexed part no longer finds her.
        db.execute("DELETE FROM lookup WHERE value = 'alice'")
    db.close()
    s = SQLiteStore(path, index_every=5)
    async with s:
        found = [r.index for r in await s.query(RecordQuery(actor="alice"))]
        scanned = [r.index for r in records if r.actor == "alice" and r.index >= upto]
        assert found == scanned
        # An empty-string filter never goes through lookup.
        assert await s.query(RecordQuery(actor="", limit=100_000)) == [
            r for r in records if r.actor == ""
        ]


async def test_a_schema_version_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    async with SQLiteStore(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 'abc' WHERE key = 'schema_version'")
    db.close()
    with pytest.raises(StoreError, match="not a number"):
        async with SQLiteStore(path):
            pass
    with sqlite3.connect(path) as db:  # the same for the mark of where claims begin
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        db.execute("INSERT INTO meta VALUES ('claims_from', 'x')")
    db.close()
    with pytest.raises(StoreError, match="claims_from 'x' is not a number"):
        async with SQLiteStore(path):
            pass


async def test_an_index_of_another_ledger_is_started_again(
    tmp_path: Path, signer: NoteSigner
) -> None:
    """A restored backup of the ledger next to a newer index (or any other index file):
    the index names the last record it covers, and one the ledger lacks is not used."""
    paths = {name: tmp_path / name / "ledger.db" for name in ("a", "b")}
    for name, path in paths.items():
        path.parent.mkdir()
        store = SQLiteStore(path, index_every=1 if name == "a" else 10**9)
        async with Ledger(store, signer, config=QUIET) as log:
            await log.append_many([Draft("note", {"i": i}, actor=name) for i in range(30)])
            await settle(store)
    assert indexed_upto(paths["a"]) == 31
    assert indexed_upto(paths["b"]) == 0
    for suffix in ("", "-wal", "-shm"):
        Path(f"{lookup_path(paths['b'])}{suffix}").unlink(missing_ok=True)
    shutil.copy(lookup_path(paths["a"]), lookup_path(paths["b"]))
    assert indexed_upto(paths["b"]) == 31  # a's index, now beside b's ledger

    async with SQLiteStore(paths["b"], index_every=10**9) as store:
        assert indexed_upto(paths["b"]) == 0
        assert lookup_rows(paths["b"]) == set()
        assert await store.query(RecordQuery(actor="a")) == []
        assert [r.index for r in await store.query(RecordQuery(actor="b"))] == list(range(1, 31))


@pytest.mark.parametrize("trouble", ["not a file", "locked"])
async def test_an_index_file_that_cannot_be_used_leaves_queries_to_scans(
    tmp_path: Path, signer: NoteSigner, trouble: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The ledger opens, appends and answers every query right without its index file
    (one left unwritable by another user, say), and says so once."""
    path = tmp_path / "ledger.db"
    async with Ledger(SQLiteStore(path), signer, config=QUIET) as log:
        await log.append_many([Draft("note", {"i": i}, actor=f"a{i % 3}") for i in range(20)])
    index = lookup_path(path)
    holder = None
    if trouble == "not a file":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{index}{suffix}").unlink(missing_ok=True)
        index.mkdir()
    else:  # another process holds its write lock for longer than the busy timeout
        holder = sqlite3.connect(index, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    try:
        store = SQLiteStore(path, busy_timeout_ms=200, index_every=1)
        async with Ledger(store, signer, config=QUIET) as log:
            assert "cannot be used" in caplog.text
            assert str(index) in caplog.text
            await log.append_many([Draft("note", {"i": i}, actor="late") for i in range(10)])
            await settle(store)
            a1 = await store.query(RecordQuery(actor="a1"))
            assert [r.body["i"] for r in a1] == [i for i in range(20) if i % 3 == 1]
            assert len(await store.query(RecordQuery(actor="late"))) == 10
            assert len(await store.query(RecordQuery(kind="note", limit=25))) == 25
    finally:
        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()
    if trouble == "not a file":
        assert index.is_dir()  # left as it was
    else:  # free again: the next open uses and fills it
        store = SQLiteStore(path, index_every=1)
        async with Ledger(store, signer, config=QUIET) as log:
            await log.append(Draft("note", {"i": 99}, actor="after"))
            await settle(store)
            assert [r.body["i"] for r in await store.query(RecordQuery(actor="after"))] == [99]
        assert indexed_upto(path) == 32  # the key record, 30 notes, this one


async def test_an_index_damaged_inside_is_rebuilt_and_queries_stay_right(tmp_path: Path) -> None:
    """A page in the middle of the index file (its header intact, which open checks) is
    found damaged by a query: the file is rebuilt from the ledger, and the query answered
    by scanning, right, meanwhile."""
    path = tmp_path / "ledger.db"
    signer = NoteSigner.generate("t.example/log")
    config = LedgerConfig(checkpoint_interval=0, checkpoint_every=0)
    store = SQLiteStore(path, index_every=100)
    async with Ledger(store, signer, config=config) as log:
        await log.append_many(
            [Draft("note", {"i": i}, actor=f"a{i % 5}", target=f"vm-{i}") for i in range(3000)]
        )
        await settle(store)
    index = lookup_path(path)
    data = bytearray(index.read_bytes())
    page = len(data) // 4096 // 2
    data[page * 4096 : (page + 1) * 4096] = bytes(4096)  # one page zeroed
    index.write_bytes(bytes(data))
    raw = sqlite3.connect(path)
    async with Ledger(SQLiteStore(path, index_every=100), signer, config=config) as log:
        for column, values in (("actor", [f"a{i}" for i in range(5)]),
                               ("target", [f"vm-{i}" for i in range(0, 3000, 97)])):  # fmt: skip
            for value in values:
                want = [i for (i,) in raw.execute(
                    f"SELECT idx FROM records WHERE {column} = ? ORDER BY idx", (value,)
                )]  # fmt: skip
                query = RecordQuery(**{column: value}, limit=100_000)  # type: ignore[arg-type]
                assert [r.index for r in await log.store.query(query)] == want
        await log.append(Draft("note", {}))  # appends start catch-ups
        await settle(log.store)
        assert log.store._lookup is not None
        assert log.store._lookup.indexed_upto == 3002  # the new file caught up
    raw.close()
