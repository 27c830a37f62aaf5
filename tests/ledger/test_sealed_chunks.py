"""The ledger's pipeline: appends sealed in chunks ahead of the store's transaction, and
chunks that chain written together, under claims, cancellations, key rotation and store
failures. Whatever happens, the log stays one contiguous chain that verifies."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from ledger import Draft, LedgerConfig, SQLiteStore
from ledger.errors import ClaimedError, StoreConflictError, StoreError
from ledger.export import export_ledger
from ledger.log import Ledger
from ledger.note import NoteSigner
from ledger.record import Record, open_record
from ledger.store import Batch, BuildFn
from ledger.verify import VerifyResult, verify_export

QUIET = LedgerConfig(checkpoint_interval=0, checkpoint_every=0)
WAVE = 64  # drafts per group in the tests below (about one sealed chunk)


class RecordingStore(SQLiteStore):
    """A real SQLite store that notes how many records each transaction wrote, and how
    many chunks were sealed ahead for it (a chunk is sealed at one time, so the distinct
    times of a prebuilt batch count its chunks). Transaction number ``hold`` (1 is the
    first) waits for ``gate``: chunks sealed meanwhile pile up for the committer."""

    def __init__(self, path: Path, hold: int = 0) -> None:
        super().__init__(path)
        self.hold = hold
        self.gate = asyncio.Event()
        self.calls = 0
        self.sizes: list[int] = []
        self.prebuilt_chunks: list[int] = []

    async def sequence(self, build: BuildFn, *, prebuilt: Batch | None = None) -> Batch:
        self.calls += 1
        if self.calls == self.hold:
            await self.gate.wait()
        self.prebuilt_chunks.append(len({r.time for r in prebuilt.records} if prebuilt else ()))
        batch = await super().sequence(build, prebuilt=prebuilt)
        self.sizes.append(len(batch.records))
        return batch


async def until(cond: Callable[[], bool], what: str) -> None:
    for _ in range(2500):
        if cond():
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"timed out waiting until {what}")


async def append_in_waves(log: Ledger, store: RecordingStore, waves: list[list[Draft]]) -> Any:
    """Append ``waves`` so that each is sealed ahead as (about) one chunk while the store
    holds the first wave's transaction, then let the store go: the committer then finds
    all the chunks sealed and joins what it may. The results, in order."""
    assert store.calls == 1  # genesis
    store.hold = 2
    tasks = [asyncio.create_task(log.append(d)) for d in waves[0]]
    await until(lambda: store.calls == 2, "the first wave's transaction started")
    sealed = 0

    def all_sealed() -> bool:
        return log._sealed_records >= sealed

    for wave in waves[1:]:
        tasks += [asyncio.create_task(log.append(d)) for d in wave]
        sealed += len(wave)
        await until(all_sealed, f"{sealed} appends were sealed")
    store.gate.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate("test.example/log")


async def stored(log: Ledger) -> list[Record]:
    """Every record in the log, checked to be one contiguous chain from index 0."""
    head, _ = await log.store.snapshot()
    envs = await log.store.envelopes(0, head.size)
    records = [open_record(e).record for e in envs]
    prev = bytes(32)
    for i, rec in enumerate(records):
        assert rec.index == i
        assert rec.prev == prev
        prev = rec.leaf_hash
    assert head.size == len(records)
    assert head.last_leaf == prev
    return records


async def export_and_verify(log: Ledger, out: Path, trusted: NoteSigner) -> VerifyResult:
    await export_ledger(log, out)
    result = verify_export(out, trusted.verifier)
    assert result.size == (await log.store.snapshot())[0].size
    return result


def stored_claims(path: Path) -> set[tuple[str, int]]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT key, idx FROM claims").fetchall()
    db.close()
    return {(str(k), int(i)) for k, i in rows}


# -- claims --------------------------------------------------------------------------


def claim_drafts(rng: random.Random, count: int) -> list[Draft]:
    drafts = []
    for i in range(count):
        roll = rng.random()
        claims: tuple[str, ...] = ()
        unclaimed: tuple[str, ...] = ()
        if roll < 0.45:  # contested keys: about seven claimers each
            claims = (f"k{rng.randrange(60)}",)
        elif roll < 0.60:  # a guard on a contested key
            unclaimed = (f"k{rng.randrange(60)}",)
        elif roll < 0.68:  # a guard on a key nobody claims
            unclaimed = (f"free{i}",)
        elif roll < 0.80:  # takes its own key, if a contested one is still free
            claims = (f"c{rng.randrange(30)}",)
            unclaimed = (f"k{rng.randrange(60)}",)
        elif roll < 0.82:  # the same key twice: never written
            claims = (f"dup{i}", f"dup{i}")
        drafts.append(Draft("decision", {"id": i}, claims=claims, unclaimed=unclaimed))
    return drafts


async def test_each_claim_key_is_taken_once_under_heavy_concurrency(
    tmp_path: Path, signer: NoteSigner
) -> None:
    rng = random.Random(1)
    drafts = claim_drafts(rng, 900)
    path = tmp_path / "l.db"
    waves, rest = [], drafts
    while rest:
        n = rng.randrange(1, 90)
        waves.append(rest[:n])
        rest = rest[n:]
    store = RecordingStore(path)
    async with Ledger(store, signer, config=QUIET) as log:
        results: list[Any] = await append_in_waves(log, store, waves)
        records = await stored(log)

        # Afterwards, one at a time: a guard on a key a committed record took fails,
        # and so does claiming it again; a guard on a free key passes.
        taken = sorted({k for d in drafts for k in d.claims if k.startswith("k")})
        for key in taken[:10]:
            with pytest.raises(ClaimedError) as excinfo:
                await log.append(Draft("decision", {"late": key}, unclaimed=(key,)))
            assert excinfo.value.key == key
            with pytest.raises(ClaimedError):
                await log.append(Draft("decision", {"late": key}, claims=(key,)))
        rec = await log.append(Draft("decision", {"late": 0}, unclaimed=("never-taken",)))
        assert rec.index == len(records)
        await export_and_verify(log, tmp_path / "x.jsonl", signer)

    for result in results:
        assert isinstance(result, Record | ClaimedError), repr(result)
    won = {i: r for i, r in enumerate(results) if isinstance(r, Record)}
    lost = {i: r for i, r in enumerate(results) if isinstance(r, ClaimedError)}
    assert won
    assert lost

    # The log holds exactly the winners, each as returned to its caller, and in the order
    # they were appended.
    assert records[0].kind == "key"
    logged = [r.body["id"] for r in records[1:]]
    assert logged == sorted(won)
    for rec in won.values():
        assert records[rec.index] == rec

    # Replaying the log in order, no record needed a key an earlier one took.
    claimed: dict[str, int] = {"genesis": 0}
    for rec in records[1:]:
        d = drafts[rec.body["id"]]
        for key in d.unclaimed:
            assert key not in claimed, (rec.index, key, claimed.get(key))
        for key in d.claims:
            assert key not in claimed, (rec.index, key, claimed.get(key))
            claimed[key] = rec.index
    assert stored_claims(path) == set(claimed.items())

    # Every loser lost on one of its own keys, taken by a record of the log.
    for i, err in lost.items():
        d = drafts[i]
        assert err.key in (*d.claims, *d.unclaimed)
        assert err.key in claimed or len(set(d.claims)) < len(d.claims), (i, err.key)

    for key in {k for d in drafts for k in d.claims}:
        winners = [i for i in won if key in drafts[i].claims]
        if key.startswith("k"):  # claimed and nothing else asked: exactly one takes it
            assert len(winners) == 1, key
        else:
            assert len(winners) <= 1, key
    for i, d in enumerate(drafts):
        if d.unclaimed and d.unclaimed[0].startswith("free"):
            assert i in won
        if d.claims and d.claims[0].startswith("dup"):
            assert i in lost


@pytest.mark.parametrize(
    ("style", "gap"), [("guards", 0), ("claims", 0), ("mixed", 0), ("guards", 1), ("mixed", 2)]
)
async def test_a_chunk_is_not_joined_to_one_that_takes_a_key_it_assumed_free(
    tmp_path: Path, signer: NoteSigner, style: str, gap: int
) -> None:
    """Chunks that fight over keys: the first of each pair claims keys, the other (``gap``
    chunks later; sealed ahead, it cannot know) needs them free or claims them too.
    Nothing they need is in the store yet, so only the committer keeping them in separate
    transactions stops a failed guard being written, or a key being claimed twice."""
    waves = [[Draft("note", {"filler": j}) for j in range(WAVE)]]  # held up in the store
    for w in range(6):
        waves.append([Draft("halt", {"w": w, "j": j}, claims=(f"w{w}:{j}",)) for j in range(WAVE)])
        for g in range(gap):
            waves.append([Draft("note", {"w": w, "g": g, "n": j}) for j in range(WAVE)])
        fighters = []
        for j in range(WAVE):
            key = f"w{w}:{j}"
            if style == "guards" or (style == "mixed" and j % 2 == 1):
                fighters.append(Draft("decision", {"w": w, "j": j}, unclaimed=(key,)))
            else:
                fighters.append(Draft("decision", {"w": w, "j": j}, claims=(key,)))
        waves.append(fighters)
    drafts = [d for wave in waves for d in wave]
    path = tmp_path / "l.db"
    store = RecordingStore(path)
    async with Ledger(store, signer, config=QUIET) as log:
        results: list[Any] = await append_in_waves(log, store, waves)
        records = await stored(log)
        await export_and_verify(log, tmp_path / "x.jsonl", signer)
    assert max(store.prebuilt_chunks) > 1  # chunks were joined
    for d, result in zip(drafts, results, strict=True):
        if d.kind == "decision":
            assert isinstance(result, ClaimedError), repr(result)
            assert result.key == (*d.claims, *d.unclaimed)[0]
        else:
            assert isinstance(result, Record), repr(result)
    assert len(records) == 1 + (7 + 6 * gap) * WAVE
    assert stored_claims(path) == {("genesis", 0)} | {
        (f"w{r.body['w']}:{r.body['j']}", r.index) for r in records if r.kind == "halt"
    }


@pytest.mark.parametrize("max_batch", [1024, 100, 10])
async def test_chunks_are_written_together_within_max_batch(
    tmp_path: Path, signer: NoteSigner, max_batch: int
) -> None:
    config = LedgerConfig(checkpoint_interval=0, checkpoint_every=0, max_batch=max_batch)
    store = RecordingStore(tmp_path / "l.db")
    drafts = [Draft("note", {"i": i}) for i in range(1000)]
    async with Ledger(store, signer, config=config) as log:
        if max_batch > 500:  # many chunks ready at once: the committer joins them
            waves = [drafts[i : i + 40] for i in range(0, 1000, 40)]
            recs = await append_in_waves(log, store, waves)
        else:
            recs = await log.append_many(drafts)
        records = await stored(log)
        await export_and_verify(log, tmp_path / "x.jsonl", signer)
    assert [r.index for r in recs] == list(range(1, 1001))  # in the order appended
    assert records[1:] == recs
    assert sum(store.sizes) == 1001
    assert max(store.sizes) <= max_batch
    if max_batch > 500:
        # The chunks sealed while a transaction was held went into the next one together.
        assert max(store.prebuilt_chunks) > 10, store.prebuilt_chunks
        assert max(store.sizes) > 500, store.sizes


# -- cancellation --------------------------------------------------------------------


async def test_cancelled_callers_leave_a_whole_chain(tmp_path: Path, signer: NoteSigner) -> None:
    # A small queue, so that some callers are cancelled while waiting for room.
    config = LedgerConfig(checkpoint_interval=0, checkpoint_every=0, max_pending=50)
    path = tmp_path / "l.db"
    log = Ledger(SQLiteStore(path), signer, config=config)
    await log.start()
    rng = random.Random(4)
    count = 900
    tasks = [
        asyncio.create_task(
            log.append(Draft("note", {"i": i}, claims=(f"c{i}",) if i % 4 == 0 else ()))
        )
        for i in range(count)
    ]
    victims = rng.sample(range(count), 300)
    for n, i in enumerate(victims):  # cancel at many moments of the pipeline
        tasks[i].cancel()
        if n % 7 == 0:
            await asyncio.sleep(0)
        if n % 50 == 0:
            await asyncio.sleep(0.002)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    later = await log.append_many([Draft("note", {"later": j}) for j in range(40)])
    records = await stored(log)
    await export_and_verify(log, tmp_path / "x.jsonl", signer)
    await asyncio.wait_for(log.close(), 10)

    spared = set(range(count)) - set(victims)
    for i in spared:
        assert isinstance(results[i], Record), (i, results[i])
    cancelled = [i for i in victims if isinstance(results[i], asyncio.CancelledError)]
    assert cancelled  # most were still waiting
    for i in victims:
        assert isinstance(results[i], Record | asyncio.CancelledError), repr(results[i])

    ids = [r.body["i"] for r in records if "i" in r.body]
    assert len(ids) == len(set(ids))
    assert spared <= set(ids)  # a cancelled append may or may not have been written
    for result in results:
        if isinstance(result, Record):
            assert records[result.index] == result
    assert [r.index for r in later] == list(range(len(records) - 40, len(records)))
    assert stored_claims(path) == {("genesis", 0)} | {
        (f"c{r.body['i']}", r.index) for r in records if r.body.get("i", 1) % 4 == 0
    }

    # The file is fine for the next process too.
    async with Ledger(SQLiteStore(path), signer, config=QUIET) as again:
        rec = await again.append(Draft("note", {}))
    assert rec.index == len(records)


async def test_cancelling_everything_in_flight_then_closing(
    tmp_path: Path, signer: NoteSigner
) -> None:
    log = Ledger(SQLiteStore(tmp_path / "l.db"), signer, config=QUIET)
    await log.start()
    for round_ in range(5):
        tasks = [
            asyncio.create_task(log.append(Draft("note", {"r": round_, "i": i})))
            for i in range(200)
        ]
        for _ in range(round_):
            await asyncio.sleep(0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    rec = await log.append(Draft("note", {"last": True}))
    records = await stored(log)
    assert records[-1] == rec
    await export_and_verify(log, tmp_path / "x.jsonl", signer)
    await asyncio.wait_for(log.close(), 10)


# -- key rotation ------------------------------------------------------------------


async def test_rotation_amid_concurrent_appends_switches_keys_at_the_key_record(
    tmp_path: Path, signer: NoteSigner
) -> None:
    new = NoteSigner.generate(signer.name)
    newer = NoteSigner.generate(signer.name)
    path = tmp_path / "l.db"
    async with Ledger(SQLiteStore(path), signer, config=QUIET) as log:
        calls: list[Any] = []
        for part in range(3):
            calls += [log.append(Draft("note", {"p": part, "i": i})) for i in range(330)]
            if part == 0:
                calls.append(log.rotate_key(new, "first"))
            elif part == 1:
                calls.append(log.rotate_key(newer, "second"))
        results: list[Record] = await asyncio.gather(*calls)
        assert log.signer.key_id == newer.key_id
        records = await stored(log)
        result = await export_and_verify(log, tmp_path / "x.jsonl", signer)

    assert result.key_ids == [signer.key_id, new.key_id, newer.key_id]
    keys = [r for r in records if r.kind == "key"]
    assert [k.body["key_id"] for k in keys] == [signer.key_id, new.key_id, newer.key_id]
    first, second = keys[1].index, keys[2].index
    assert [results[330].index, results[661].index] == [first, second]
    for rec in records:
        if rec.index <= first:
            assert rec.key_id == signer.key_id, rec.index
        elif rec.index <= second:
            assert rec.key_id == new.key_id, rec.index
        else:
            assert rec.key_id == newer.key_id, rec.index
    # Appends queued before a rotation come before its key record, those after it after.
    for rec in results:
        if rec.kind == "note":
            part = rec.body["p"]
            assert (first, second, len(records))[part] > rec.index
            assert (0, first, second)[part] < rec.index
    # Only the newest key may write on.
    with pytest.raises(StoreConflictError, match="active key"):
        async with Ledger(SQLiteStore(path), new, config=QUIET):
            pass
    async with Ledger(SQLiteStore(path), newer, config=QUIET) as log:
        rec = await log.append(Draft("note", {}))
    assert (rec.index, rec.key_id) == (len(records), newer.key_id)


# -- store failures ----------------------------------------------------------------


@pytest.mark.parametrize("failing_call", [1, 3, 6])
async def test_a_failed_transaction_fails_exactly_its_appends(
    tmp_path: Path, signer: NoteSigner, failing_call: int
) -> None:
    store = SQLiteStore(tmp_path / "l.db")
    # Transactions of at most 128 records: several of them, each of several appends.
    config = LedgerConfig(checkpoint_interval=0, checkpoint_every=0, max_batch=128)
    log = Ledger(store, signer, config=config)
    await log.start()
    real = store.sequence
    calls = 0
    doomed: list[int] = []

    async def flaky(build: BuildFn, *, prebuilt: Batch | None = None) -> Batch:
        nonlocal calls
        calls += 1
        if calls == failing_call:
            # What this transaction would have written: the batch sealed ahead if it
            # starts at the head, else what build seals on the head.
            head, frontier = await store.snapshot()
            if prebuilt is not None and prebuilt.starts_at(head):
                batch = prebuilt
            else:
                batch = build(head, frontier, frozenset())
            doomed.extend(r.body["i"] for r in batch.records)
            raise StoreError("injected: disk I/O error")
        return await real(build, prebuilt=prebuilt)

    def draft(i: int) -> Draft:
        return Draft("note", {"i": i}, claims=(f"key{i}",) if i % 3 == 0 else ())

    store.sequence = flaky  # type: ignore[method-assign]
    results: Sequence[Any] = await asyncio.gather(
        *(log.append(draft(i)) for i in range(800)), return_exceptions=True
    )
    failed = [i for i, r in enumerate(results) if not isinstance(r, Record)]
    assert failed == doomed
    assert doomed
    for i in failed:
        assert isinstance(results[i], StoreError)
        assert "injected" in str(results[i])
    # The appends after the failed transaction follow the last good record.
    written = [r for r in results if isinstance(r, Record)]
    assert [r.index for r in written] == list(range(1, len(written) + 1))
    # Nothing of the failed transaction was kept: its claims are free again.
    retried = await log.append_many([draft(i) for i in doomed])
    n = len(written) + 1
    assert [r.index for r in retried] == list(range(n, n + len(doomed)))
    later = await log.append_many([Draft("note", {"later": j}) for j in range(100)])
    n += len(doomed)
    assert [r.index for r in later] == list(range(n, n + 100))
    records = await stored(log)
    assert records[1:] == [*written, *retried, *later]
    assert stored_claims(tmp_path / "l.db") == {("genesis", 0)} | {
        (f"key{r.body['i']}", r.index) for r in records if r.body.get("i", 1) % 3 == 0
    }
    await export_and_verify(log, tmp_path / "x.jsonl", signer)
    await log.close()
