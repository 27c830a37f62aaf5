"""Review: the sealer/committer pipeline of ledger/log.py on failure paths.

The write loop's ``finally`` is meant to leave nobody waiting when the committer dies
("a bug here must not leave callers waiting forever"). Here a fault is injected in the
committer (``_joined`` raising, standing for any bug between popping a group and
resolving its futures). These tests assert the intended behaviour; they FAIL at 3da4cd5
(the code under review) and pass since d631bcf.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import ledger.log
from ledger import Draft, LedgerConfig, SQLiteStore
from ledger.log import Ledger
from ledger.note import NoteSigner
from ledger.store import Batch, BuildFn


class HoldStore(SQLiteStore):
    """Transaction number 2 waits for ``gate``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()
        self.calls = 0

    async def sequence(self, build: BuildFn, *, prebuilt: Batch | None = None) -> Batch:
        self.calls += 1
        if self.calls == 2:
            await self.gate.wait()
        return await super().sequence(build, prebuilt=prebuilt)


async def until(cond, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(2500):
        if cond():
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"timed out waiting until {what}")


async def _nobody_waits(log: Ledger, tasks: list[asyncio.Task[object]]) -> None:
    """Every append resolves, and close() returns (it waits on the queue's accounting)."""
    _, pending = await asyncio.wait(tasks, timeout=5)
    hung = len(pending)
    try:
        await asyncio.wait_for(log.close(), timeout=5)
        closed = True
    except TimeoutError:
        closed = False
    for t in pending:
        t.cancel()
    if hung or not closed:
        pytest.fail(
            f"{hung} appends never resolved (callers wait forever); close() returned: {closed}"
        )


async def test_a_committer_fault_leaves_nobody_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signer = NoteSigner.generate("test.example/log")
    store = HoldStore(tmp_path / "l.db")
    config = LedgerConfig(checkpoint_interval=0, checkpoint_every=0, max_batch=32)
    log = Ledger(store, signer, config=config)
    await log.start()
    assert store.calls == 1  # genesis
    tasks = [asyncio.create_task(log.append(Draft("note", {"w": 0, "i": i}))) for i in range(32)]
    await until(lambda: store.calls == 2, "wave 0 is being written (and held)")
    tasks += [asyncio.create_task(log.append(Draft("note", {"w": 1, "i": i}))) for i in range(64)]
    await until(lambda: log._sealed_records >= 64, "wave 1 is sealed ahead")
    tasks += [asyncio.create_task(log.append(Draft("note", {"w": 2, "i": i}))) for i in range(32)]
    # The sealer takes wave 2 from the queue and waits for room (_until_room) holding it.
    await until(lambda: log._queue.qsize() == 0, "the sealer took wave 2")
    await asyncio.sleep(0.05)

    def boom(parts):  # type: ignore[no-untyped-def]
        raise RuntimeError("injected committer bug")

    monkeypatch.setattr(ledger.log, "_joined", boom)
    store.gate.set()

    await _nobody_waits(log, tasks)


async def test_a_committer_fault_while_the_sealer_collects_leaves_nobody_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The committer dies while the sealer is inside ``_collect`` (between
    ``queue.get()`` and its ``sleep(0)`` loop): the item it already took is in no list
    that the write loop's ``finally`` fails (not the queue, not ``_sealed``, and not
    ``_holding`` either, which is assigned only when ``_collect`` returns)."""
    signer = NoteSigner.generate("test.example/log")
    config = LedgerConfig(checkpoint_interval=0, checkpoint_every=0)
    log = Ledger(SQLiteStore(tmp_path / "l.db"), signer, config=config)
    await log.start()

    def boom(parts):  # type: ignore[no-untyped-def]
        raise RuntimeError("injected committer bug")

    monkeypatch.setattr(ledger.log, "_joined", boom)
    tasks = [asyncio.create_task(log.append(Draft("note", {"i": i}))) for i in range(64)]
    await _nobody_waits(log, tasks)
