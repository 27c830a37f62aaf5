"""Review: stress of the pipeline with two Ledgers on one SQLite file (so predictions
keep failing), large chunks (worker-process sealing), contested claims across both,
and waves of cancelled callers. Every acknowledged record must be stored once, at its
index, with Record fields equal to its envelope; the chain must be whole; each claim key
taken once. (Passes on the code under review: evidence of no loss or duplication.)"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

from ledger import Draft, LedgerConfig, SQLiteStore
from ledger.errors import ClaimedError
from ledger.log import Ledger
from ledger.note import NoteSigner
from ledger.record import Record, open_record


async def test_two_ledgers_one_file_no_loss_no_dup(tmp_path: Path) -> None:
    signer = NoteSigner.generate("test.example/log")
    path = tmp_path / "l.db"
    config = LedgerConfig(checkpoint_interval=0, checkpoint_every=0, max_batch=256)
    rng = random.Random(5)
    acked: list[Record] = []
    claimed_ok: dict[str, int] = {}
    async with (
        Ledger(SQLiteStore(path, index_every=50), signer, config=config) as a,
        Ledger(SQLiteStore(path, index_every=50), signer, config=config) as b,
    ):

        async def one(log: Ledger, i: int) -> None:
            claims: tuple[str, ...] = ()
            unclaimed: tuple[str, ...] = ()
            roll = rng.random()
            if roll < 0.3:
                claims = (f"k{rng.randrange(200)}",)
            elif roll < 0.4:
                unclaimed = (f"k{rng.randrange(200)}",)
            d = Draft("note", {"i": i}, actor=f"a{i % 7}", claims=claims, unclaimed=unclaimed)
            try:
                rec = await log.append(d)
            except ClaimedError:
                return
            acked.append(rec)
            for k in claims:
                assert k not in claimed_ok, f"claim {k} acknowledged twice"
                claimed_ok[k] = rec.index

        for wave in range(12):
            tasks = [
                asyncio.create_task(one(a if rng.random() < 0.5 else b, wave * 1000 + j))
                for j in range(300)
            ]
            if wave % 3 == 2:  # some callers give up part-way
                await asyncio.sleep(0)
                for t in rng.sample(tasks, 40):
                    t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT idx, envelope FROM records ORDER BY idx").fetchall()
        head = db.execute("SELECT size, last_leaf FROM log_head").fetchone()
        claims = dict(db.execute("SELECT key, idx FROM claims").fetchall())
    db.close()
    envs = [bytes(e) for _, e in rows]
    assert [i for i, _ in rows] == list(range(len(rows)))
    assert head[0] == len(rows)
    prev = bytes(32)
    for i, env in enumerate(envs):
        r = open_record(env).record
        assert (r.index, r.prev) == (i, prev)
        prev = r.leaf_hash
    assert bytes(head[1]) == prev
    seen: set[int] = set()
    for rec in acked:
        assert rec.index not in seen
        seen.add(rec.index)
        stored = open_record(envs[rec.index]).record
        assert stored == rec, f"record {rec.index} differs from its envelope"
    for k, idx in claimed_ok.items():
        assert claims[k] == idx
