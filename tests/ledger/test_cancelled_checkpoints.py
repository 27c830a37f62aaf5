"""A caller that gives up on a checkpoint (a GetCheckpoint whose deadline passed, close()
stopping the ticker) leaves the ledger as it was: no open transaction holding SQLite's write
lock, appends go on, close() returns. And two processes on one file that both sign get the
larger checkpoint rather than an error."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from ledger import Draft, LedgerConfig, SQLiteStore
from ledger.log import Ledger
from ledger.note import NoteSigner

QUIET = LedgerConfig(checkpoint_every=0, checkpoint_interval=0)


async def test_a_cancelled_checkpoint_leaves_no_transaction_open(tmp_path: Path) -> None:
    log = Ledger(SQLiteStore(tmp_path / "l.db"), NoteSigner.generate("t.example/log"), config=QUIET)
    await log.start()
    try:
        for k in range(400):
            await log.append(Draft("note", {"k": k}))  # something new to sign each time
            attempt = asyncio.create_task(log.checkpoint())
            for _ in range(k % 40):  # give up at a different moment each time
                await asyncio.sleep(0)
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)
        await asyncio.sleep(0.1)  # whatever was queued on the connection has run
        other = sqlite3.connect(tmp_path / "l.db", timeout=1)
        other.execute("BEGIN IMMEDIATE")  # the write lock is free
        other.execute("ROLLBACK")
        other.close()
        for i in range(5):
            await log.append(Draft("note", {"later": i}))
    finally:
        await log.close()


async def test_close_stops_a_busy_ticker(tmp_path: Path) -> None:
    for _ in range(60):
        config = LedgerConfig(checkpoint_every=0, checkpoint_interval=0.0001)
        log = Ledger(SQLiteStore(tmp_path / "l.db"), NoteSigner.generate("t.example/log"),
                     config=config)  # fmt: skip
        await log.start()
        await log.append_many([Draft("note", {"k": k}) for k in range(10)])
        await asyncio.wait_for(log.close(), timeout=10)
        (tmp_path / "l.db").unlink()
        for suffix in ("-wal", "-shm", ".lookup", ".lookup-wal", ".lookup-shm"):
            (tmp_path / f"l.db{suffix}").unlink(missing_ok=True)


async def test_two_signers_on_one_file_get_the_larger_checkpoint(tmp_path: Path) -> None:
    signer = NoteSigner.generate("t.example/log")
    a = Ledger(SQLiteStore(tmp_path / "l.db"), signer, config=QUIET)
    b = Ledger(SQLiteStore(tmp_path / "l.db"), signer, config=QUIET)
    await a.start()
    await b.start()
    try:
        for i in range(60):
            await a.append(Draft("note", {"i": i}))
            seen = (await b.store.snapshot())[0].size
            racing = asyncio.create_task(a.checkpoint())
            await a.append(Draft("note", {"j": i}))
            cp = await b.checkpoint()  # never "older than the latest"
            assert cp.size >= seen
            await racing
    finally:
        await a.close()
        await b.close()
