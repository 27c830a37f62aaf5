"""Signing in a worker process: the same bytes as signing here, and a fallback when it fails."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from ledger import DataDir, Draft, LedgerConfig, SQLiteStore
from ledger._workers import ScanPool
from ledger.errors import ClaimedError
from ledger.export import export_ledger
from ledger.log import _PROCESS_MIN, _SEAL_TASK, Ledger
from ledger.note import NoteSigner
from ledger.record import ZERO_HASH, format_time, prepare, seal, seal_chain, utc_now
from ledger.verify import verify_export

QUIET = LedgerConfig(checkpoint_interval=0, checkpoint_every=0)
AT_START = LedgerConfig(checkpoint_interval=0, checkpoint_every=0, seal_process_at_start=True)


def _data(tmp_path: Path) -> DataDir:
    d = DataDir(tmp_path / "data")
    d.generate_key("test.example/log")
    return d


def _drafts(n: int) -> list[Draft]:
    return [
        Draft(
            "decision",
            {"n": i, "text": 'é\u2028"\\' * (i % 3), "nested": {"b": [1, None, True], "a": ""}},
            trace_id=f"{i + 1:032x}" if i % 2 else "",
            actor="engine" if i % 3 else "",
            target=f"libvirt/vm-{i % 7}",
            decision_id=f"d-{i}",
        )
        for i in range(n)
    ]


def test_the_worker_signs_the_same_bytes_as_this_process() -> None:
    signer = NoteSigner.generate("test.example/log")
    prepared = [prepare(d) for d in _drafts(50)]
    when = format_time(utc_now())
    prev = bytes(range(32))
    here = seal_chain([p.parts for p in prepared], [signer] * 50, index=7, prev=prev, time=when)
    with ScanPool(1, _SEAL_TASK) as pool:
        pool.submit((signer.private_key_string(), [p.parts for p in prepared], 7, prev, when))
        there = pool.result()
    assert there == here
    # And both are what sealing one record at a time gives.
    for k, p in enumerate(prepared):
        rec = seal(p, index=7 + k, prev=prev, time=when, signer=signer)
        assert (rec.envelope, rec.leaf_hash) == here[k]
        prev = rec.leaf_hash


def test_the_worker_follows_a_new_key() -> None:
    a, b = NoteSigner.generate("test.example/log"), NoteSigner.generate("test.example/log")
    parts = [prepare(d).parts for d in _drafts(3)]
    when = format_time(utc_now())
    with ScanPool(1, _SEAL_TASK) as pool:
        for signer in (a, b, a):
            pool.submit((signer.private_key_string(), parts, 0, ZERO_HASH, when))
            got = pool.result()
            assert got == seal_chain(parts, [signer] * 3, index=0, prev=ZERO_HASH, time=when)


async def _many(log: Ledger, n: int) -> list[int]:
    recs = await asyncio.gather(*(log.append(d) for d in _drafts(n)))
    return sorted(r.index for r in recs)


async def test_appends_go_through_the_worker_and_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = DataDir(tmp_path / "data")
    d.generate_key("test.example/log")
    calls: list[int] = []
    async with d.open_ledger(QUIET) as log:
        worker = log._seal_process
        real_seal, real_receive = worker.seal, worker.receive

        def sealing(*args: object) -> list[tuple[bytes, bytes]] | None:
            out = real_seal(*args)  # type: ignore[arg-type]
            calls.append(0 if out is None else len(out))
            return out

        def receiving(count: int) -> list[tuple[bytes, bytes]] | None:
            out = real_receive(count)
            calls.append(0 if out is None else len(out))
            return out

        monkeypatch.setattr(worker, "seal", sealing)
        monkeypatch.setattr(worker, "receive", receiving)
        assert await _many(log, 400) == list(range(1, 401))
        out = tmp_path / "x.jsonl"
        await export_ledger(log, out)
    assert sum(calls) >= _PROCESS_MIN  # some chunks were signed in the worker
    assert verify_export(out, d.signer().verifier).size == 401


def test_the_worker_continues_its_last_chain() -> None:
    """A chain sent with no previous hash follows the one the worker sealed last: the
    same bytes as one long chain. One that does not start where that ended is refused,
    and after a refusal nothing is continued."""
    signer = NoteSigner.generate("test.example/log")
    parts = [prepare(d).parts for d in _drafts(30)]
    when = format_time(utc_now())
    prev = bytes(range(32))
    whole = seal_chain(parts, [signer] * 30, index=5, prev=prev, time=when)
    key = signer.private_key_string()
    with ScanPool(1, _SEAL_TASK) as pool:
        # All three sent before any answer is read, as the writer's pipeline does.
        pool.submit((key, parts[:10], 5, prev, when))
        pool.submit((key, parts[10:25], 15, None, when))
        pool.submit((key, parts[25:], 30, None, when))
        assert pool.result() + pool.result() + pool.result() == whole
        pool.submit((key, parts[:3], 36, None, when))  # the last chain ended before 35
        with pytest.raises(RuntimeError, match="no chain sealed here ends before index 36"):
            pool.result()
        pool.submit((key, parts[:3], 35, None, when))  # the refusal forgot the chain
        with pytest.raises(RuntimeError, match="no chain sealed here ends before index 35"):
            pool.result()


async def test_a_worker_dying_with_chains_in_flight_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker is killed while it holds chains sent ahead: those chunks are sealed
    again in their transactions, and every append lands once, in order, verified."""
    d = _data(tmp_path)
    async with d.open_ledger(AT_START) as log:
        worker = log._seal_process
        real_receive = worker.receive
        followed: list[int] = []
        real_send = worker.send

        def sending(*args: object) -> bool:
            followed.append(args[3] is None)  # type: ignore[arg-type]
            return real_send(*args)  # type: ignore[arg-type]

        def receiving(count: int) -> list[tuple[bytes, bytes]] | None:
            if len(followed) >= 2 and worker._pool is not None:  # a chain or two ahead
                for proc in worker._pool._procs:
                    proc.kill()
            return real_receive(count)

        monkeypatch.setattr(worker, "send", sending)
        monkeypatch.setattr(worker, "receive", receiving)

        async def writer(w: int) -> list[int]:
            out = []
            for k in range(8):
                rec = await log.append(Draft("decision", {"w": w, "k": k}))
                out.append(rec.index)
            return out

        indices = sorted(i for got in await asyncio.gather(*map(writer, range(128))) for i in got)
        assert indices == list(range(1, 1 + 128 * 8))
        assert worker._pool is None  # given up on: sealing goes on here
        out = tmp_path / "x.jsonl"
        await export_ledger(log, out)
    assert any(followed)  # a chain was sent continuing the one before, unanswered
    assert verify_export(out, d.signer().verifier).size == 1 + 128 * 8


async def test_a_dead_worker_means_signing_here(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = DataDir(tmp_path / "data")
    d.generate_key("test.example/log")
    secret = d.signer().private_key_string()
    async with d.open_ledger(QUIET) as log:
        await _many(log, 200)  # starts the worker
        pool = log._seal_process._pool
        assert pool is not None
        for proc in pool._procs:
            proc.kill()
            proc.wait()
        with caplog.at_level(logging.WARNING, logger="ledger.log"):
            assert await _many(log, 300) == list(range(201, 501))
        assert log._seal_process._pool is None
        out = tmp_path / "x.jsonl"
        await export_ledger(log, out)
    assert "sealing process failed" in caplog.text
    assert secret.split("+", 4)[4] not in caplog.text  # the base64 may contain "+"
    assert verify_export(out, d.signer().verifier).size == 501


async def test_without_the_worker_appends_are_the_same(tmp_path: Path) -> None:
    d = DataDir(tmp_path / "data")
    d.generate_key("test.example/log")
    config = LedgerConfig(checkpoint_interval=0, checkpoint_every=0, seal_process=False)
    async with d.open_ledger(config) as log:
        assert await _many(log, 300) == list(range(1, 301))
        assert log._seal_process._pool is None
        out = tmp_path / "x.jsonl"
        await export_ledger(log, out)
    assert verify_export(out, d.signer().verifier).size == 301


async def test_a_server_starts_the_worker_with_the_ledger(tmp_path: Path) -> None:
    d = _data(tmp_path)
    async with d.open_ledger(AT_START) as log:
        pool = log._seal_process._pool
        assert pool is not None  # up, and it answered, before the first append
        assert pool._received == 1
        assert await _many(log, 300) == list(range(1, 301))
        assert log._seal_process._pool is pool
        assert pool._received > 1  # chunks went to it
        out = tmp_path / "x.jsonl"
        await export_ledger(log, out)
    assert all(p.poll() is not None for p in pool._procs)  # closed with the ledger
    assert verify_export(out, d.signer().verifier).size == 301


async def test_a_worker_that_cannot_start_means_signing_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("ledger.log._SEAL_TASK", "ledger.no_such_module:seal")
    d = DataDir(tmp_path / "data")
    d.generate_key("test.example/log")
    config = LedgerConfig(checkpoint_interval=0, checkpoint_every=0, seal_process_at_start=True)
    with caplog.at_level(logging.WARNING, logger="ledger.log"):
        async with d.open_ledger(config) as log:
            assert log._seal_process._pool is None
            assert await _many(log, 300) == list(range(1, 301))
            assert log._seal_process._pool is None  # not tried again
            out = tmp_path / "x.jsonl"
            await export_ledger(log, out)
    assert "sealing process did not start" in caplog.text
    assert verify_export(out, d.signer().verifier).size == 301


async def test_giving_up_on_a_start_does_not_wait_for_a_stuck_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that never answers (its import hangs) is killed when the caller cancels
    the ledger's start, instead of being waited for until its start deadline."""
    (tmp_path / "hangs_on_import.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("ledger.log._SEAL_TASK", "hangs_on_import:seal")
    d = DataDir(tmp_path / "data")
    d.generate_key("test.example/log")
    config = LedgerConfig(checkpoint_interval=0, checkpoint_every=0, seal_process_at_start=True)
    log = Ledger(SQLiteStore(d.db_path), d.signer(), config=config)
    starting = asyncio.create_task(log.start())
    for _ in range(200):  # until the worker is launched and awaited
        if log._seal_process._pool is not None:
            break
        await asyncio.sleep(0.01)
    pool = log._seal_process._pool
    assert pool is not None
    loop = asyncio.get_running_loop()
    began = loop.time()
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert loop.time() - began < 5  # the start deadline is 10 s
    assert all(p.poll() is not None for p in pool._procs)  # no worker left behind


async def test_the_worker_failing_while_the_writer_waits_for_room_loses_nothing(
    tmp_path: Path,
) -> None:
    """Chains are out in the worker and the writer waits for room (commits are slow) when
    the worker dies: the writer must seal the next chunk itself, not stop (it did, on an
    assertion, failing every append and every one after)."""
    d = DataDir(tmp_path / "data")
    d.generate_key("test.example/log")
    config = LedgerConfig(
        checkpoint_interval=0, checkpoint_every=0, max_batch=64, seal_process_at_start=True
    )
    async with d.open_ledger(config) as log:
        real_sequence = log.store.sequence

        async def slow_sequence(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.05)  # a slow disk
            return await real_sequence(*args, **kwargs)

        log.store.sequence = slow_sequence  # type: ignore[method-assign]
        real_until_room, killed = log._until_room, []

        async def until_room(stages: Any) -> None:
            pool = log._seal_process._pool
            if not killed and log._ahead and pool is not None:
                killed.append(True)
                for proc in pool._procs:  # the worker dies (OOM killer, watchdog)
                    proc.kill()
            await real_until_room(stages)

        log._until_room = until_room  # type: ignore[method-assign]
        got = await asyncio.gather(*(log.append(dr) for dr in _drafts(1000)))
        assert killed
        assert sorted(r.index for r in got) == list(range(1, 1001))
        assert log.accepting
        await log.append(Draft("note", {"after": True}))
        out = tmp_path / "x.jsonl"
        await export_ledger(log, out)
    assert verify_export(out, d.signer().verifier).size == 1002


async def test_a_transaction_resealing_a_chunk_leaves_the_workers_chain_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk whose claim turns out taken is sealed again in its transaction, through
    the worker when no chain is out. That round trip must not become the chain the next
    chain sent continues: the worker refused that one, and was given up for good."""
    d = _data(tmp_path)
    async with d.open_ledger(AT_START) as log:
        worker = log._seal_process
        given_up: list[str] = []
        real_give_up, real_send = worker._give_up, worker.send
        monkeypatch.setattr(
            worker, "_give_up", lambda what, e: (given_up.append(repr(e)), real_give_up(what, e))
        )

        def late_send(*args: Any) -> bool:
            time.sleep(0.02)  # a thread hop under load: the transaction's reseal gets in first
            return real_send(*args)

        monkeypatch.setattr(worker, "send", late_send)
        await log.append(Draft("decision", {"x": 0}, claims=("taken",)))
        for r in range(6):
            drafts = [
                Draft("decision", {"r": r, "n": i}, claims=("taken",) if i % 97 == 5 else ())
                for i in range(600)
            ]
            results = await asyncio.gather(*map(log.append, drafts), return_exceptions=True)
            assert all(isinstance(x, ClaimedError) for x in results if isinstance(x, Exception))
        assert given_up == []
        assert worker._pool is not None  # still signing in the worker


def test_a_round_trip_not_remembered_is_not_continued() -> None:
    signer = NoteSigner.generate("test.example/log")
    parts = [prepare(d).parts for d in _drafts(6)]
    when, key = format_time(utc_now()), signer.private_key_string()
    with ScanPool(1, _SEAL_TASK) as pool:
        pool.submit((key, parts[:3], 0, ZERO_HASH, when))
        first = pool.result()
        pool.submit((key, parts[:2], 50, bytes(32), when, False))  # someone else's round trip
        pool.result()
        pool.submit((key, parts[3:], 3, None, when))  # continues the first, as if no other
        assert first + pool.result() == seal_chain(
            parts, [signer] * 6, index=0, prev=ZERO_HASH, time=when
        )


async def test_the_watchdog_spares_a_worker_whose_answer_waits_for_a_busy_reader(
    tmp_path: Path,
) -> None:
    """The pipeline's reader is late (its thread is busy) while the answer sits in the
    pipe past the deadline: the worker did its job, and must not be killed for it."""
    d = _data(tmp_path)
    async with d.open_ledger(AT_START) as log:
        worker = log._seal_process
        pool = worker._pool
        assert pool is not None
        real_receive = worker.receive

        def late_receive(count: int) -> Any:
            if not getattr(late_receive, "done", False):
                late_receive.done = True  # type: ignore[attr-defined]
                worker._deadline = time.monotonic() - 1  # its deadline has passed ...
                time.sleep(0.6)  # ... and the watchdog (every 0.2 s) looks meanwhile
            return real_receive(count)

        worker.receive = late_receive  # type: ignore[method-assign]
        got = await asyncio.gather(*(log.append(dr) for dr in _drafts(300)))
        assert sorted(r.index for r in got) == list(range(1, 301))
        assert getattr(late_receive, "done", False)
        assert worker._pool is pool  # not killed, still in use
        assert all(p.poll() is None for p in pool._procs)


async def test_a_checkpoint_is_signed_by_the_key_of_its_size_when_a_rotation_lands_meanwhile(
    tmp_path: Path,
) -> None:
    d = DataDir(tmp_path / "data")
    d.generate_key("test.example/log")
    async with d.open_ledger(QUIET) as log:
        for i in range(10):
            await log.append(Draft("decision", {"i": i}))
        await log.checkpoint()
        for i in range(10):
            await log.append(Draft("decision", {"j": i}))
        real_prove = log._prove_consistency

        async def slow_prove(*args: Any) -> Any:
            await asyncio.sleep(0.2)  # a slow read of the stored nodes
            return await real_prove(*args)

        log._prove_consistency = slow_prove  # type: ignore[method-assign]
        signing = asyncio.create_task(log.checkpoint())
        await asyncio.sleep(0.05)
        await log.rotate_key(NoteSigner.generate(log.origin))
        await signing
        out = tmp_path / "x.jsonl"
        await export_ledger(log, out)
    assert verify_export(out, d.signer().verifier).size == 22
