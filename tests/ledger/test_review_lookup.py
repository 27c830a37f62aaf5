"""Review: the SQLite query index (``<stem>.lookup.db``).

These tests assert the behaviour that docs/ledger.md promises; they FAIL at 3da4cd5 (the
code under review) and pass since 2755d0d, which fixed both.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_sqlite_lookup import settle

from ledger import Draft, LedgerConfig, SQLiteStore
from ledger._lookup import lookup_path
from ledger.log import Ledger
from ledger.note import NoteSigner
from ledger.store import RecordQuery

QUIET = LedgerConfig(checkpoint_interval=0, checkpoint_every=0)


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate("test.example/log")


async def test_a_damaged_index_file_does_not_stop_the_ledger(
    tmp_path: Path, signer: NoteSigner
) -> None:
    """docs: the index file 'holds nothing that cannot be rebuilt ... and may be deleted'.
    A damaged one (here: not a SQLite file) makes SQLiteStore.open fail, so the ledger,
    whose own file is intact, can no longer be opened or appended to."""
    path = tmp_path / "ledger.db"
    async with Ledger(SQLiteStore(path), signer, config=QUIET) as log:
        await log.append(Draft("note", {"i": 1}))
    for suffix in ("-wal", "-shm"):
        Path(f"{lookup_path(path)}{suffix}").unlink(missing_ok=True)
    lookup_path(path).write_bytes(b"this is not a database" * 100)
    # Expected: the ledger opens (the index is started again). Actual: StoreError.
    async with Ledger(SQLiteStore(path), signer, config=QUIET) as log:
        rec = await log.append(Draft("note", {"i": 2}))
        assert rec.index == 2


async def test_two_ledgers_with_one_stem_do_not_share_an_index(
    tmp_path: Path, signer: NoteSigner
) -> None:
    """``a.db`` and ``a.sqlite`` both index into ``a.lookup.db``. The binding check runs
    only at open, so while both are open, queries on one read the other's lookup rows
    below indexed_upto and miss their own records."""
    pa, pb = tmp_path / "a.db", tmp_path / "a.sqlite"
    # At 3da4cd5 both mapped to a.lookup.db (the collision); since 2755d0d they do not.
    sa, sb = SQLiteStore(pa, index_every=1), SQLiteStore(pb, index_every=1)
    other = NoteSigner.generate("test.example/other")
    async with Ledger(sa, signer, config=QUIET) as la:
        await la.append_many([Draft("note", {"i": i}, actor="alice") for i in range(20)])
        await settle(sa)
        assert [r.index for r in await sa.query(RecordQuery(actor="alice"))] == list(range(1, 21))
        async with Ledger(sb, other, config=QUIET) as lb:  # resets a.lookup.db, fills it
            await lb.append_many([Draft("note", {"i": i}, actor="bob") for i in range(10)])
            await settle(sb)
            # Expected: still records 1..20. Actual: 11..20 (1..10 are "indexed" by b's rows).
            got = [r.index for r in await sa.query(RecordQuery(actor="alice"))]
            assert got == list(range(1, 21))
