"""Crash safety: an append that was acknowledged survives ``kill -9``, and the log resumes.

A child process (``_crash_writer.py``) appends from 64 concurrent asyncio
writers with frequent checkpoints (every 50 records and every 50 ms) and
prints ``INDEX LEAF_HASH`` for each append once ``Ledger.append`` has returned,
that is, once the record is durable by contract. The parent kills it with
SIGKILL at a random moment after the first acknowledgement, starts it again on
the same data directory, and repeats; a last child appends a fixed number of
records and closes normally. Then:

* every acknowledged ``(index, leaf hash)`` is in the store with exactly that
  leaf hash, and no acknowledged index was handed out twice;
* each restart resumed after everything acknowledged before it (no index
  reused, one genesis ``key`` record) and the records form one hash chain with
  contiguous indices ``0..n-1``;
* there are several checkpoints, every one is signed by the log key over the
  root of the records up to its size, and each is consistent with the one
  before it (consistency proofs from the log);
* ``govgate ledger export`` followed by ``govgate ledger verify`` exits 0.

It runs on both stores: the SQLite file and a PostgreSQL database (a real server the
test setup starts). The kill delays come from a seeded RNG. The seed is printed (and attached to
any failure); set ``GOVGATE_CRASH_SEED`` to replay one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ledger import DataDir, LedgerConfig, NoteVerifier, open_checkpoint
from ledger.merkle import Frontier, leaf_hash, verify_consistency
from ledger.postgres import migrate
from ledger.record import ZERO_HASH, open_record
from ledger.store import StoredCheckpoint

REPO = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("_crash_writer.py")
GOVGATE = Path(sys.executable).with_name("govgate")
ORIGIN = "crash.test/log"

ROUNDS = 20
WRITERS = 64
FINAL_COUNT = 300  # records the last, cleanly closed child appends
KILL_DELAY = (0.05, 0.6)  # seconds after the first acknowledgement
FIRST_ACK_TIMEOUT = 20.0

# Read-only access for the checks: no checkpoint is signed by opening or closing.
READ_ONLY = LedgerConfig(checkpoint_every=0, checkpoint_interval=0, checkpoint_on_close=False)


class Child:
    """One writer process; a thread collects its acknowledgement lines until EOF."""

    def __init__(
        self, data: Path, stderr_path: Path, url: str | None, count: int | None = None
    ) -> None:
        args = [sys.executable, str(WRITER), str(data), "--writers", str(WRITERS)]
        if count is not None:
            args += ["--count", str(count)]
        if url is not None:
            args += ["--ledger-url", url]
        self.stderr_path = stderr_path
        self.lines: list[bytes] = []
        self.first_ack = threading.Event()
        with stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO
            )
        self._reader = threading.Thread(target=self._read, name="crash-acks", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # parsed in the test thread, so errors fail the test
            self.lines.append(line)
            self.first_ack.set()

    def wait_first_ack(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.first_ack.wait(0.02):
                return True
            if self.proc.poll() is not None:
                return self.first_ack.is_set()
        return False

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the process and for the reader to drain the pipe; return the status."""
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        assert not self._reader.is_alive(), "acknowledgement reader did not reach EOF"
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code

    def stop(self) -> None:
        """Kill the process if it still runs (test clean-up; safe to call twice)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def acks(self) -> list[tuple[int, str]]:
        """Complete ``INDEX HEX`` lines; a torn last line (no newline) was never acknowledged."""
        out = []
        for line in self.lines:
            if not line.endswith(b"\n"):
                continue
            index, hexhash = line.decode("ascii").split()
            assert len(hexhash) == 64, f"malformed acknowledgement {line!r}"
            out.append((int(index), hexhash))
        return out


def _merge(acked: dict[int, str], new: list[tuple[int, str]], who: str) -> None:
    for index, hexhash in new:
        seen = acked.setdefault(index, hexhash)
        assert seen == hexhash, (
            f"{who}: index {index} acknowledged with leaf {hexhash}, "
            f"but an earlier run acknowledged it with {seen}"
        )


async def _read_back(
    data: Path, url: str | None
) -> tuple[list[bytes], list[StoredCheckpoint], list[str]]:
    """All stored envelopes and checkpoints, and one problem string per failed
    consistency proof between consecutive checkpoints."""
    problems: list[str] = []
    async with DataDir(data, url).open_ledger(READ_ONLY) as log:
        head, _ = await log.store.snapshot()
        envelopes = await log.store.envelopes(0, head.size + 1_000_000)
        assert len(envelopes) == head.size, (
            f"store holds {len(envelopes)} records but its head says {head.size}"
        )
        checkpoints = await log.store.checkpoints(head.size)
        for old, new in itertools.pairwise(checkpoints):
            proof = await log.consistency_proof(old.size, new.size)
            try:
                verify_consistency(old.size, new.size, proof.proof, old.root, new.root)
            except Exception as e:
                problems.append(f"checkpoints {old.size} -> {new.size}: {e}")
    return envelopes, checkpoints, problems


def _govgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GOVGATE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_acknowledged_appends_survive_sigkill(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    url = None
    if store == "postgresql":
        url = request.getfixturevalue("postgres_url")
        asyncio.run(migrate(url))
    seed = int(os.environ.get("GOVGATE_CRASH_SEED") or random.randrange(2**32))
    print(f"crash test seed {seed}; replay with GOVGATE_CRASH_SEED={seed}")
    try:
        _crash_loop(tmp_path, seed, url)
    except BaseException as e:
        e.add_note(f"crash test seed {seed}; replay with GOVGATE_CRASH_SEED={seed}")
        raise


def _crash_loop(tmp_path: Path, seed: int, url: str | None) -> None:
    rng = random.Random(seed)
    data = tmp_path / "data"
    signer = DataDir(data).generate_key(ORIGIN)
    verifier = NoteVerifier.from_key_string(signer.verifier_key)
    acked: dict[int, str] = {}
    children: list[Child] = []
    started = time.monotonic()
    try:
        # -- crash rounds ------------------------------------------------------------
        for n in range(ROUNDS):
            child = Child(data, tmp_path / f"child-{n}.stderr", url)
            children.append(child)
            assert child.wait_first_ack(FIRST_ACK_TIMEOUT), (
                f"round {n}: no acknowledgement within {FIRST_ACK_TIMEOUT}s "
                f"(exit {child.proc.poll()}); stderr:\n{child.stderr()}"
            )
            time.sleep(rng.uniform(*KILL_DELAY))
            assert child.proc.poll() is None, (
                f"round {n}: writer exited on its own ({child.proc.returncode}) "
                f"before the kill; stderr:\n{child.stderr()}"
            )
            child.proc.send_signal(signal.SIGKILL)
            code = child.finish()
            assert code == -signal.SIGKILL, f"round {n}: exit {code}; stderr:\n{child.stderr()}"
            acks = child.acks()
            assert acks, f"round {n}: no complete acknowledgement line"
            if acked:
                # Everything acknowledged before is durable, so a restart must
                # sequence after it: an index handed out again is a lost record.
                lowest, newest = min(i for i, _ in acks), max(acked)
                assert lowest > newest, (
                    f"round {n} reused index {lowest}; "
                    f"indices up to {newest} were acknowledged before"
                )
            _merge(acked, acks, f"round {n}")

        # -- a last run that closes normally --------------------------------------------
        last = Child(data, tmp_path / "child-final.stderr", url, count=FINAL_COUNT)
        children.append(last)
        code = last.finish(timeout=60)
        assert code == 0, f"clean run exited {code}; stderr:\n{last.stderr()}"
        final_acks = last.acks()
        assert len(final_acks) == FINAL_COUNT
        lowest, newest = min(i for i, _ in final_acks), max(acked)
        assert lowest > newest, f"clean run reused index {lowest} (acknowledged up to {newest})"
        _merge(acked, final_acks, "clean run")
    finally:
        for child in children:
            child.stop()
    assert all(c.proc.returncode is not None for c in children)
    print(f"{ROUNDS} kill rounds and a clean run in {time.monotonic() - started:.1f}s")

    # -- the store holds every acknowledged record, in one chain -------------------------
    envelopes, checkpoints, problems = asyncio.run(_read_back(data, url))
    size = len(envelopes)
    print(f"{len(acked)} acknowledged of {size} stored records, {len(checkpoints)} checkpoints")
    leaves = [leaf_hash(env) for env in envelopes]
    for index, hexhash in sorted(acked.items()):
        assert index < size, f"acknowledged record {index} is missing (store holds {size})"
        assert leaves[index].hex() == hexhash, (
            f"record {index} was acknowledged with leaf {hexhash}, the store holds "
            f"{leaves[index].hex()}"
        )
    # The clean run acknowledged the last records, so nothing follows the last ack.
    newest = max(acked)
    assert size == newest + 1, f"store holds {size} records; last acknowledged index {newest}"

    prev = ZERO_HASH
    kinds = []
    for i, env in enumerate(envelopes):
        rec = open_record(env).record
        assert rec.index == i, f"stored record at position {i} says index {rec.index}"
        assert rec.prev == prev, f"record {i} does not chain to record {i - 1}"
        assert rec.key_id == signer.key_id
        prev = rec.leaf_hash
        kinds.append(rec.kind)
    # Restarts resumed the log rather than starting a new one.
    assert kinds[0] == "key"
    assert kinds.count("key") == 1, "a restart wrote another genesis key record"

    # -- checkpoints: signed, over the records' roots, consistent -----------------------
    assert len(checkpoints) > 1
    sizes = [cp.size for cp in checkpoints]
    assert sizes == sorted(set(sizes)), f"checkpoint sizes not strictly increasing: {sizes}"
    assert sizes[-1] == size, "the clean close did not sign the final size"
    by_size = {cp.size: cp for cp in checkpoints}
    frontier = Frontier()
    for i, leaf in enumerate(leaves):
        frontier.append(leaf)
        cp = by_size.get(i + 1)
        if cp is None:
            continue
        opened = open_checkpoint(cp.note, [verifier], origin=ORIGIN)
        assert (opened.size, opened.root) == (cp.size, cp.root)
        assert cp.root == frontier.root(), f"checkpoint {cp.size} is not the records' root"
    assert not problems, "\n".join(problems)

    # -- the CLI's export verifies with only the public key ------------------------------
    export = tmp_path / "export.jsonl"
    public = _govgate("keys", "public", "--data", str(data))
    assert public.returncode == 0, public.stderr
    assert public.stdout.strip() == signer.verifier_key
    where = ["--ledger-url", url] if url else []
    exported = _govgate("ledger", "export", "--data", str(data), *where, "--out", str(export))
    assert exported.returncode == 0, exported.stderr
    verified = _govgate("ledger", "verify", str(export), "--key", public.stdout.strip(), "-q")
    assert verified.returncode == 0, verified.stderr
    for run in (public, exported, verified):
        assert "PRIVATE+KEY" not in run.stdout + run.stderr, "a command printed the private key"
    note = open_checkpoint(verified.stdout, [verifier], origin=ORIGIN)
    assert note.size == size
    assert f"{size} records, {len(checkpoints)} checkpoints" in " ".join(verified.stderr.split())
