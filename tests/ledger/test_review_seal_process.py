"""Review: the sealing worker process has no timeout. A worker that stops answering
(here SIGSTOP; in life a stuck or swapped-out process) stops every append for good:
``ScanPool.result()`` blocks on the pipe with the ``_SealProcess`` lock held. When the
blocked call is the re-seal inside a store transaction, SQLite's write lock
(BEGIN IMMEDIATE) is held as long. Asserts the intended behaviour (appends go on,
signing here, as when the worker dies); it failed before the watchdog (found in review)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest

from ledger import Draft, LedgerConfig, SQLiteStore
from ledger.log import Ledger
from ledger.note import NoteSigner

QUIET = LedgerConfig(checkpoint_interval=0, checkpoint_every=0)


async def test_a_worker_that_stops_answering_does_not_stop_appends(tmp_path: Path) -> None:
    log = Ledger(SQLiteStore(tmp_path / "l.db"), NoteSigner.generate("t.example/l"), config=QUIET)
    await log.start()
    await asyncio.gather(*(log.append(Draft("note", {"i": i})) for i in range(300)))
    pool = log._seal_process._pool
    if pool is None:
        pytest.skip("the worker was not started")
    (proc,) = pool._procs
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        tasks = [asyncio.create_task(log.append(Draft("note", {"j": i}))) for i in range(300)]
        _, pending = await asyncio.wait(tasks, timeout=5)
        hung = len(pending)
    finally:
        # The ledger's watchdog has killed it already, if the fix is there.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
            os.kill(proc.pid, signal.SIGCONT)
    await asyncio.gather(*tasks, return_exceptions=True)
    await log.close()
    if hung:
        pytest.fail(f"{hung} appends were stuck for 5 s behind a stopped sealing worker")
