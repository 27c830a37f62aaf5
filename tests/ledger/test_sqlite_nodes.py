"""The SQLite store keeps Merkle nodes above the leaves; a leaf's hash is its envelope's."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from ledger import Draft, LedgerConfig, SQLiteStore
from ledger.log import Ledger
from ledger.merkle import leaf_hash, node_key, verify_consistency, verify_inclusion
from ledger.note import NoteSigner

QUIET = LedgerConfig(checkpoint_interval=0, checkpoint_every=0)


async def _proofs_hold(log: Ledger, size: int) -> None:
    root = await log.root(size)
    for index in (0, 1, size // 2, size - 2, size - 1):
        p = await log.inclusion_proof(index, size)
        assert p.leaf_hash == leaf_hash(p.leaf)
        verify_inclusion(p.leaf_hash, index, size, list(p.proof), root)
    for old in (1, 2, size // 3, size - 1):
        c = await log.consistency_proof(old, size)
        verify_consistency(old, size, list(c.proof), await log.root(old), root)


async def test_no_leaf_is_stored_twice_and_proofs_hold(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    signer = NoteSigner.generate("test.example/log")
    async with Ledger(SQLiteStore(path), signer, config=QUIET) as log:
        await asyncio.gather(*(log.append(Draft("note", {"i": i})) for i in range(300)))
        await _proofs_hold(log, 301)
    with sqlite3.connect(path) as db:
        ids = [i for (i,) in db.execute("SELECT id FROM nodes")]
    db.close()
    assert ids  # the nodes above the leaves are there
    assert not {node_key(0, i) for i in range(301)} & set(ids)
    # A restart rebuilds the frontier (an odd size ends in a leaf) from records and nodes.
    async with Ledger(SQLiteStore(path), signer, config=QUIET) as log:
        await log.append(Draft("note", {"after": True}))
        await _proofs_hold(log, 302)


async def test_leaf_nodes_stored_by_older_versions_are_harmless(tmp_path: Path) -> None:
    """Files written before kept leaf rows in ``nodes``; they are left and not needed."""
    path = tmp_path / "ledger.db"
    signer = NoteSigner.generate("test.example/log")
    async with Ledger(SQLiteStore(path), signer, config=QUIET) as log:
        await asyncio.gather(*(log.append(Draft("note", {"i": i})) for i in range(40)))
    with sqlite3.connect(path) as db:
        envelopes = db.execute("SELECT idx, envelope FROM records").fetchall()
        db.executemany(
            "INSERT INTO nodes VALUES (?, ?)",
            [(node_key(0, i), leaf_hash(bytes(e))) for i, e in envelopes],
        )
    db.close()
    async with Ledger(SQLiteStore(path), signer, config=QUIET) as log:
        await log.append(Draft("note", {"after": True}))
        await _proofs_hold(log, 42)
