"""The SQLite store copies its WAL into the database in a thread of its own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ledger import Draft, LedgerConfig, SQLiteStore
from ledger.export import export_ledger
from ledger.log import Ledger
from ledger.note import NoteSigner
from ledger.verify import verify_export

QUIET = LedgerConfig(checkpoint_interval=0, checkpoint_every=0)
NEVER = 10**9  # pages: SQLite's own checkpoint never runs


async def _fill(store: SQLiteStore, signer: NoteSigner, n: int, out: Path) -> int:
    """Append ``n`` records and export while the store is still open; the database
    file's size then (the WAL not yet merged into it is not counted)."""
    async with Ledger(store, signer, config=QUIET) as log:
        for k in range(0, n, 100):
            await asyncio.gather(*(log.append(Draft("note", {"k": k + i})) for i in range(100)))
        await asyncio.sleep(0.3)  # let a checkpoint that was started finish
        size = store.path.stat().st_size
        await export_ledger(log, out)
    return size


@pytest.mark.parametrize("every", [0, 200])
async def test_the_wal_is_merged_in_the_background(tmp_path: Path, every: int) -> None:
    signer = NoteSigner.generate("test.example/log")
    store = SQLiteStore(
        tmp_path / "ledger.db", wal_autocheckpoint_pages=NEVER, wal_checkpoint_every=every
    )
    out = tmp_path / "x.jsonl"
    size = await _fill(store, signer, 2000, out)
    if every:
        assert size > 500_000  # the records' pages reached the database file
    else:
        assert size < 200_000  # everything still sits in the WAL
    assert verify_export(out, signer.verifier).size == 2001


def test_a_negative_interval_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="wal_checkpoint_every"):
        SQLiteStore(tmp_path / "ledger.db", wal_checkpoint_every=-1)
