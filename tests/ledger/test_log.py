"""The ledger service and the SQLite store: sequencing, group commit, fail-closed
appends, checkpoints that never contradict each other, key rotation."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ledger import DataDir, Draft, LedgerConfig, SQLiteStore
from ledger.canonical import canonical_json_slow
from ledger.errors import (
    CheckpointError,
    KeyFormatError,
    LedgerClosedError,
    LedgerError,
    RecordError,
    StoreConflictError,
    StoreError,
)
from ledger.export import export_ledger
from ledger.log import Ledger
from ledger.merkle import leaf_hash, node_key, root_of, verify_consistency, verify_inclusion
from ledger.note import NoteSigner
from ledger.postgres import migrate
from ledger.record import HMAC_PREFIX, format_time, open_record
from ledger.store import RecordQuery, StoredCheckpoint
from ledger.verify import verify_export

QUIET = LedgerConfig(checkpoint_interval=0, checkpoint_every=0)


@pytest.fixture(params=["sqlite", "postgresql"])
def data(request: pytest.FixtureRequest, tmp_path: Path) -> DataDir:
    """A data directory whose ledger is in SQLite, or in a fresh PostgreSQL database: every
    test that takes this fixture is the conformance suite for both stores."""
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        asyncio.run(migrate(url))
    d = DataDir(tmp_path / "data", url)
    d.generate_key("test.example/log")
    return d


@pytest.fixture
def sqlite_data(tmp_path: Path) -> DataDir:
    d = DataDir(tmp_path / "data")
    d.generate_key("test.example/log")
    return d


class CountingStore(SQLiteStore):
    """A real SQLite store that counts transactions (and can be told to fail)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.transactions = 0
        self.fail_with: Exception | None = None

    async def sequence(self, build, *, prebuilt=None):  # type: ignore[no-untyped-def]
        if self.fail_with is not None:
            raise self.fail_with
        self.transactions += 1
        return await super().sequence(build, prebuilt=prebuilt)


async def test_genesis_record_names_the_key(data: DataDir) -> None:
    async with data.open_ledger(QUIET) as log:
        (genesis,) = await log.store.query(RecordQuery())
    assert genesis.index == 0
    assert genesis.kind == "key"
    assert genesis.prev == bytes(32)
    assert genesis.body["key"] == data.signer().verifier_key


async def test_chain_and_merkle_tree_match_the_stored_bytes(data: DataDir) -> None:
    async with data.open_ledger(QUIET) as log:
        for i in range(20):
            await log.append(Draft("note", {"i": i}))
        envs = await log.store.envelopes(0, 21)
        cp = await log.checkpoint()
        leaves = [leaf_hash(e) for e in envs]
        assert cp.size == 21
        assert cp.root == root_of(leaves)
        for i, env in enumerate(envs):
            rec = open_record(env).record
            assert rec.index == i
            assert rec.prev == (leaves[i - 1] if i else bytes(32))
        proof = await log.inclusion_proof(13)
        verify_inclusion(leaves[13], 13, 21, proof.proof, cp.root)


async def test_payload_bytes_are_exactly_rfc8785(data: DataDir) -> None:
    body = {"z": [1, -5, True, None], "é": 'ü\u2028"\\', "a": {"b": "x\ny"}}
    async with data.open_ledger(QUIET) as log:
        rec = await log.append(Draft("note", body, actor="ünï", target='t"q', trace_id="ab" * 16))
    opened = open_record(rec.envelope)
    payload = opened.signed_bytes.split(b" ", 4)[4]
    assert payload == canonical_json_slow(opened.payload)


async def test_concurrent_appends_are_group_committed(data: DataDir) -> None:
    store = CountingStore(data.db_path)
    async with Ledger(store, data.signer(), config=QUIET) as log:
        before = store.transactions
        recs = await log.append_many([Draft("note", {"i": i}) for i in range(500)])
        used = store.transactions - before
    assert sorted(r.index for r in recs) == list(range(1, 501))
    assert used < 50, f"500 concurrent appends took {used} transactions"


async def test_append_fails_closed_when_the_store_cannot_write(data: DataDir) -> None:
    store = CountingStore(data.db_path)
    async with Ledger(store, data.signer(), config=QUIET) as log:
        store.fail_with = StoreError("disk full")
        with pytest.raises(StoreError, match="disk full"):
            await log.append(Draft("decision", {"verb": "delete"}))
        store.fail_with = None
        rec = await log.append(Draft("decision", {"verb": "start"}))
    assert rec.index == 1  # nothing was written for the failed append


async def test_bad_drafts_are_refused_before_anything_is_written(data: DataDir) -> None:
    async with data.open_ledger(QUIET) as log:
        with pytest.raises(RecordError):
            await log.append(Draft("note", {"risk": float("nan")}))
        with pytest.raises(RecordError):
            await log.append(Draft("note", {"n": 2**60}))
        with pytest.raises(RecordError, match="key records"):
            await log.append(Draft("key", {"key": "x"}))
        head, _ = await log.store.snapshot()
    assert head.size == 1
    for bad in (
        {"kind": "Bad Kind"},
        {"kind": "note", "trace_id": "xyz"},
        {"kind": "note", "trace_id": "0" * 32},
        {"kind": "note", "actor": "a" * 2000},
    ):
        kind = bad.pop("kind")
        with pytest.raises(RecordError):
            Draft(kind, {}, **bad)  # type: ignore[arg-type]


async def test_sensitive_fields_are_stored_as_salted_hmacs(data: DataDir) -> None:
    async with data.open_ledger(QUIET) as log:
        rec = await log.append(
            Draft(
                "decision",
                {"parameters": {"password": "s3cret", "vcpus": 4}, "creds": [{"key": "k3y"}]},
                sensitive=("parameters.password", "creds.0.key"),
            )
        )
        # A path that names nothing would leave the secret in clear: refused, not skipped.
        body = {"parameters": {"password": "s3cret", "vcpus": 4}, "creds": [{"key": "k3y"}]}
        for path in ("parameters.pasword", "creds.1.key", "creds.x", "parameters.vcpus.x",
                     "creds.²", "creds." + "0" * 5000):  # fmt: skip
            with pytest.raises(RecordError, match="names nothing"):
                await log.append(Draft("note", body, sensitive=(path,)))
    assert rec.body["parameters"]["vcpus"] == 4
    assert rec.body["creds"][0]["key"].startswith(HMAC_PREFIX)
    assert b"k3y" not in rec.envelope
    stored = rec.body["parameters"]["password"]
    assert stored.startswith(HMAC_PREFIX)
    assert b"s3cret" not in rec.envelope
    async with data.store() as store:  # what the store holds, decoded
        held = await store.query(RecordQuery())
    assert all("s3cret" not in str(r.body) for r in held)
    assert len(held) == 2
    if data.ledger_url is None:
        assert b"s3cret" not in data.db_path.read_bytes()
    from ledger.record import hmac_value

    assert hmac_value(data.salt(), "s3cret") == stored
    assert hmac_value(data.salt(), "other") != stored


async def test_two_writers_on_one_file_keep_one_chain(data: DataDir, tmp_path: Path) -> None:
    """Two ledgers (as two processes would) share one file; the store sequences them."""
    signer = data.signer()
    a = Ledger(SQLiteStore(data.db_path), signer, config=QUIET)
    b = Ledger(SQLiteStore(data.db_path), signer, config=QUIET)
    async with a, b:
        await asyncio.gather(
            *(a.append(Draft("note", {"w": "a", "i": i})) for i in range(200)),
            *(b.append(Draft("note", {"w": "b", "i": i})) for i in range(200)),
        )
        out = tmp_path / "x.jsonl"
        await export_ledger(a, out)
    result = verify_export(out, signer.verifier)
    assert result.size == 401


async def test_clock_stepping_back_never_back_dates(sqlite_data: DataDir) -> None:
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    async with sqlite_data.open_ledger(QUIET) as log:
        await log.append(Draft("note", {}))
    with sqlite3.connect(sqlite_data.db_path) as db:
        db.execute("UPDATE log_head SET last_time = ?", (format_time(future),))
    async with sqlite_data.open_ledger(QUIET) as log:
        rec = await log.append(Draft("note", {}))
    assert rec.time == format_time(future)


async def test_store_refuses_contradicting_checkpoints(data: DataDir) -> None:
    async with data.open_ledger(QUIET) as log:
        await log.append(Draft("note", {}))
        cp = await log.checkpoint()
        other = StoredCheckpoint(cp.size, bytes(32), "forged\n", cp.signed_at)
        with pytest.raises(CheckpointError, match="another root"):
            await log.store.save_checkpoint(other)
        await log.append(Draft("note", {}))
        await log.checkpoint()
        with pytest.raises(CheckpointError, match="older"):
            await log.store.save_checkpoint(StoredCheckpoint(1, bytes(32), "x\n", cp.signed_at))
        # Saving the same checkpoint again is harmless.
        assert await log.store.save_checkpoint(cp) == cp


async def test_never_signs_a_checkpoint_inconsistent_with_the_last(sqlite_data: DataDir) -> None:
    no_close = LedgerConfig(checkpoint_interval=0, checkpoint_every=0, checkpoint_on_close=False)
    async with sqlite_data.open_ledger(no_close) as log:
        for i in range(8):
            await log.append(Draft("note", {"i": i}))
        assert (await log.checkpoint()).size == 9
        await log.append(Draft("note", {}))
    # Someone with database access rewrites history under the signed root: the
    # hash of the first eight records' subtree.
    with sqlite3.connect(sqlite_data.db_path) as db:
        changed = db.execute("UPDATE nodes SET hash = ? WHERE id = ?", (bytes(32), node_key(3, 0)))
        assert changed.rowcount == 1
    async with sqlite_data.open_ledger(no_close) as log:
        with pytest.raises(CheckpointError, match="not consistent"):
            await log.checkpoint()
        latest = await log.store.checkpoint()
        assert latest is not None
        assert latest.size == 9


async def test_checkpoints_follow_count_and_time_triggers(data: DataDir) -> None:
    async with data.open_ledger(LedgerConfig(checkpoint_every=10, checkpoint_interval=0)) as log:
        for i in range(25):
            await log.append(Draft("note", {"i": i}))
        sizes = [c.size for c in await log.store.checkpoints(10_000)]
    assert sizes == [10, 20]  # genesis + 9, then every 10 records
    async with data.open_ledger(LedgerConfig(checkpoint_every=0, checkpoint_interval=0.05)) as log:
        await log.append(Draft("note", {}))
        for _ in range(100):
            await asyncio.sleep(0.02)
            latest = await log.store.checkpoint()
            if latest and latest.size == 27:
                break
        assert latest is not None
        assert latest.size == 27


async def test_consistency_proofs_between_stored_checkpoints(data: DataDir) -> None:
    async with data.open_ledger(LedgerConfig(checkpoint_every=3, checkpoint_interval=0)) as log:
        for i in range(40):
            await log.append(Draft("note", {"i": i}))
        cps = await log.store.checkpoints(10_000)
        assert len(cps) > 5
        for old in cps:
            for new in cps:
                if old.size <= new.size:
                    p = await log.consistency_proof(old.size, new.size)
                    verify_consistency(old.size, new.size, p.proof, old.root, new.root)


async def test_rotation_switches_keys_and_verifies_with_either(
    data: DataDir, tmp_path: Path
) -> None:
    first = data.signer()
    async with data.open_ledger(QUIET) as log:
        await log.append(Draft("note", {}))
        second = await data.rotate(log, "test")
        rec = await log.append(Draft("note", {}))
        assert rec.key_id == second.key_id
        out = tmp_path / "x.jsonl"
        await export_ledger(log, out)
    assert verify_export(out, first.verifier).key_ids == [first.key_id, second.key_id]
    verify_export(out, second.verifier)
    retired = data.path / "keys" / "retired" / f"{first.key_id}.key"
    assert stat.S_IMODE(retired.stat().st_mode) == 0o600
    assert data.signer().key_id == second.key_id
    # The old key can no longer write to this log.
    with pytest.raises(StoreConflictError, match="active key"):
        async with Ledger(data.store(), first, config=QUIET):
            pass


async def test_rotation_interrupted_before_the_record_is_undone(sqlite_data: DataDir) -> None:
    old = sqlite_data.signer()
    pending = NoteSigner.generate(old.name)
    sqlite_data.next_key_path.write_text(pending.private_key_string() + "\n")
    os.chmod(sqlite_data.next_key_path, 0o600)
    async with sqlite_data.open_ledger(QUIET) as log:  # recovers: the log never named the new key
        rec = await log.append(Draft("note", {}))
    assert rec.key_id == old.key_id
    assert not sqlite_data.next_key_path.exists()


async def test_rotation_interrupted_after_the_record_is_finished(sqlite_data: DataDir) -> None:
    old = sqlite_data.signer()
    new = NoteSigner.generate(old.name)
    async with Ledger(SQLiteStore(sqlite_data.db_path), old, config=QUIET) as log:
        await log.rotate_key(new)
    # The process died before swapping the key files.
    sqlite_data.next_key_path.write_text(new.private_key_string() + "\n")
    os.chmod(sqlite_data.next_key_path, 0o600)
    async with sqlite_data.open_ledger(QUIET) as log:
        rec = await log.append(Draft("note", {}))
    assert rec.key_id == new.key_id
    assert (sqlite_data.path / "keys" / "retired" / f"{old.key_id}.key").exists()


async def test_rotation_interrupted_between_the_two_renames_is_finished(
    sqlite_data: DataDir,
) -> None:
    """The old key was retired and the process died before the new one took its place."""
    old = sqlite_data.signer()
    async with sqlite_data.open_ledger(QUIET) as log:
        new = await sqlite_data.rotate(log, "test")
    os.replace(sqlite_data.key_path, sqlite_data.next_key_path)  # the state that crash left
    assert sqlite_data.signer().key_id == new.key_id  # keys public, say, finishes it
    assert not sqlite_data.next_key_path.exists()
    os.replace(sqlite_data.key_path, sqlite_data.next_key_path)
    async with sqlite_data.open_ledger(QUIET) as log:
        rec = await log.append(Draft("note", {}))
    assert rec.key_id == new.key_id
    retired = sqlite_data.path / "keys" / "retired" / f"{old.key_id}.key"
    assert _load_signer_key_id(retired) == old.key_id


def _load_signer_key_id(path: Path) -> str:
    return NoteSigner.from_key_string(path.read_text().strip()).key_id


def test_key_files_are_private_and_never_overwritten(data: DataDir) -> None:
    mode = stat.S_IMODE(data.key_path.stat().st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(data.salt_path.stat().st_mode) == 0o600
    before = data.key_path.read_bytes()
    with pytest.raises(LedgerError, match="refusing to overwrite"):
        data.generate_key("test.example/log")
    assert data.key_path.read_bytes() == before
    os.chmod(data.key_path, 0o644)
    with pytest.raises(KeyFormatError, match="chmod 600"):
        data.signer()


def test_signer_repr_hides_the_key(data: DataDir) -> None:
    signer = data.signer()
    # PRIVATE+KEY+<name>+<hex8>+<base64>: the base64 may itself contain '+'.
    secret = signer.private_key_string().split("+", 4)[4]
    assert len(secret) == 44
    assert secret not in repr(signer)
    assert secret not in str(signer)


async def test_closed_ledger_refuses_appends(data: DataDir) -> None:
    log = data.open_ledger(QUIET)
    await log.start()
    await log.close()
    with pytest.raises(LedgerClosedError):
        await log.append(Draft("note", {}))


async def test_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    async with SQLiteStore(db):
        pass
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer"):
        async with SQLiteStore(db):
            pass


async def test_query_filters_and_pages(data: DataDir) -> None:
    async with data.open_ledger(QUIET) as log:
        for i in range(30):
            await log.append(
                Draft(
                    "decision" if i % 3 else "approval",
                    {"i": i},
                    actor=f"a{i % 2}",
                    target=f"vm-{i % 5}",
                    decision_id=f"d-{i}",
                    trace_id=f"{i + 1:032x}",
                )
            )
        store = log.store
        approvals = await store.query(RecordQuery(kind="approval"))
        assert [r.body["i"] for r in approvals] == list(range(0, 30, 3))
        both = await store.query(RecordQuery(kind="decision", actor="a1", target="vm-1"))
        assert [r.body["i"] for r in both] == [1, 11]
        assert [r.index for r in await store.query(RecordQuery(decision_id="d-7"))] == [8]
        assert [r.index for r in await store.query(RecordQuery(trace_id=f"{8:032x}"))] == [8]
        page1 = await store.query(RecordQuery(start=5, end=20, limit=4))
        page2 = await store.query(RecordQuery(start=5, end=20, limit=4), after=page1[-1].index)
        assert [r.index for r in page1 + page2] == list(range(5, 13))
        t = page1[2].time
        assert all(r.time >= t for r in await store.query(RecordQuery(since=t)))
        assert all(r.time < t for r in await store.query(RecordQuery(until=t)))


async def test_a_dead_writer_fails_appends_and_close_returns(data: DataDir) -> None:
    log = data.open_ledger(QUIET)
    await log.start()
    queued = asyncio.get_running_loop().create_future()

    async def broken_collect() -> list:  # type: ignore[type-arg]
        raise RuntimeError("writer bug")

    log._collect = broken_collect  # type: ignore[method-assign]
    log._writer.cancel()  # type: ignore[union-attr]
    log._writer = asyncio.create_task(log._write_loop())
    await asyncio.sleep(0.01)
    assert log._writer.done()
    with pytest.raises(LedgerClosedError):
        await log.append(Draft("note", {}))
    # Something already queued when the writer died is failed, not left hanging.
    from ledger.log import _Pending
    from ledger.record import prepare

    log._queue.put_nowait(_Pending(prepare(Draft("note", {})), queued))
    await asyncio.wait_for(log.close(), 5)
    with pytest.raises(LedgerClosedError):
        await queued


async def test_health_probe_says_whether_an_append_could_be_written(
    sqlite_data: DataDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ledger.sqlite._APPEND_PROVES", 0.0)  # probe even after an append
    async with sqlite_data.open_ledger(LedgerConfig(checkpoint_interval=0)) as log:
        assert log.accepting
        await log.store.check_writable()
        other = sqlite3.connect(sqlite_data.db_path, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            with pytest.raises(StoreError, match="cannot be written"):
                await log.store.check_writable(wait_ms=50)  # type: ignore[call-arg]
        finally:
            other.rollback()
            other.close()
        await log.store.check_writable()
        size = (await log.store.snapshot())[0].size
        await log.append(Draft("halt", {"reason": "the probe wrote nothing before this"}))
        assert (await log.store.snapshot())[0].size == size + 1
    assert not log.accepting


async def test_health_probe_fails_on_a_nearly_full_disk(
    sqlite_data: DataDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite reuses its WAL file's space, so a small commit can succeed on a full disk on
    which a batch of records fails: the probe also wants free space for appends."""
    from ledger import sqlite as sqlite_store

    async with sqlite_data.open_ledger(LedgerConfig(checkpoint_interval=0)) as log:
        await log.store.check_writable()
        size = (await log.store.snapshot())[0].size
        full = shutil.disk_usage(sqlite_data.path)._replace(free=sqlite_store.MIN_FREE_BYTES - 1)
        monkeypatch.setattr(sqlite_store.shutil, "disk_usage", lambda _: full)
        with pytest.raises(StoreError, match=r"disk has [\d,]+ KiB free; appends need"):
            await log.store.check_writable()
        monkeypatch.undo()
        await log.store.check_writable()
        assert (await log.store.snapshot())[0].size == size  # probes wrote no record


async def test_a_recent_append_spares_the_health_probe_its_commit(sqlite_data: DataDir) -> None:
    """Under load the probe adds no fsync'd transaction of its own (it would hold up the
    next batch): an append committed within the last second proves as much."""
    async with sqlite_data.open_ledger(LedgerConfig(checkpoint_interval=0)) as log:
        await log.append(Draft("note", {"n": 1}))
        await log.store.check_writable()
        with sqlite3.connect(sqlite_data.db_path) as db:
            assert db.execute("SELECT 1 FROM meta WHERE key = 'write_probe'").fetchone() is None
        log.store._appended_at -= 2  # (a second and more ago)
        await log.store.check_writable()
        with sqlite3.connect(sqlite_data.db_path) as db:
            assert db.execute("SELECT 1 FROM meta WHERE key = 'write_probe'").fetchone()


def test_health_probe_commits_so_it_fails_where_a_commit_would(sqlite_data: DataDir) -> None:
    """A process that may write no more bytes to its files (RLIMIT_FSIZE, as when the
    disk is full under the WAL's end): the probe commits, and so it fails, where taking
    and releasing the write lock alone succeeded."""
    code = """
import asyncio, resource, sys
from pathlib import Path
from ledger import DataDir, Draft, LedgerConfig
from ledger.errors import StoreError

async def main(path):
    import ledger.sqlite
    ledger.sqlite._APPEND_PROVES = 0.0  # probe even right after an append
    data = DataDir(Path(path))
    async with data.open_ledger(LedgerConfig(checkpoint_interval=0, checkpoint_on_close=False,
                                             seal_process=False)) as log:
        await log.append(Draft("note", {"n": 1}))
        await log.store.check_writable()
        wal = Path(str(data.db_path) + "-wal")
        limit = max(data.db_path.stat().st_size, wal.stat().st_size)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        try:
            await log.store.check_writable()
        except StoreError as err:
            print("refused:", err)
        else:
            print("passed")
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)

asyncio.run(main(sys.argv[1]))
"""
    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run(
        [sys.executable, "-c", code, str(sqlite_data.path)],
        capture_output=True, text=True, timeout=60, check=True, cwd=root,
        env={**os.environ, "PYTHONPATH": root},
    )  # fmt: skip
    assert out.stdout.startswith("refused: the ledger database cannot be written"), out


async def test_a_claimed_key_is_taken_once_across_ledgers_on_one_store(data: DataDir) -> None:
    """Two writers (two replicas) race for the same claims: each key goes to exactly one
    record, a free-key guard fails once its key is taken, and the chain stays whole."""
    from ledger.errors import ClaimedError

    async with data.open_ledger(QUIET) as a, data.open_ledger(QUIET) as b:
        drafts = [Draft("decision", {"n": i}, claims=(f"request:{i % 5}",)) for i in range(40)]
        results = await asyncio.gather(
            *((a if i % 2 else b).append(d) for i, d in enumerate(drafts)),
            return_exceptions=True,
        )
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 5
        assert len(lost) == 35
        assert all(isinstance(e, ClaimedError) for e in lost)
        assert sorted(r.body["n"] % 5 for r in won) == [0, 1, 2, 3, 4]
        for r in won:  # the store names the record that holds each claim
            assert await a.store.claimant(f"request:{r.body['n'] % 5}") == r.index
        assert await b.store.claimant("request:5") is None
        # A guard on a free key passes without taking it; on a taken key it fails.
        await a.append(Draft("decision", {}, unclaimed=("halts:1",)))
        await b.append(Draft("halt", {}, claims=("halts:1",)))
        with pytest.raises(ClaimedError, match="halts:1"):
            await a.append(Draft("decision", {}, unclaimed=("halts:1",)))
        # Within one batch the earlier record wins.
        first, second = await asyncio.gather(
            a.append(Draft("halt", {}, claims=("halts:2",))),
            a.append(Draft("decision", {}, unclaimed=("halts:2",))),
            return_exceptions=True,
        )
        assert not isinstance(first, BaseException)
        assert isinstance(second, ClaimedError)
        head, _ = await a.store.snapshot()
        out = data.path / "claims.jsonl"
        await export_ledger(a, out)
    assert head.size == 1 + 5 + 3
    verify_export(out, data.signer().verifier)


async def test_a_start_that_fails_after_opening_closes_the_store(tmp_path: Path) -> None:
    class NoCheckpoints(SQLiteStore):
        async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
            raise StoreError("checkpoints cannot be read")

    store = NoCheckpoints(tmp_path / "ledger.db")
    with pytest.raises(StoreError, match="checkpoints cannot be read"):
        await Ledger(store, NoteSigner.generate("test.example/log"), config=QUIET).start()
    with pytest.raises(StoreError, match="not open"):
        await store.snapshot()  # closed: its connection and its index thread are gone


async def test_entries_after_give_each_record_kind_decision_and_envelope(data: DataDir) -> None:
    """What a replica's catch-up reads: every record after an index, in order, with the
    kind and decision id it can decide by without opening the envelope."""
    async with data.open_ledger(QUIET) as log:
        drafts = [Draft("decision", {"n": 0}, decision_id="d-0"), Draft("note", {"n": 1}),
                  Draft("outcome", {"n": 2}, decision_id="d-0"),
                  Draft("decision", {"n": 3}, decision_id="d-3")]  # fmt: skip
        written = [await log.append(d) for d in drafts]
        first = written[0].index  # after the key record the ledger starts with
        store = log.store
        entries = await store.entries_after(first - 1, 100)
        assert [(e.kind, e.decision_id) for e in entries] == [
            ("decision", "d-0"),
            ("note", ""),
            ("outcome", "d-0"),
            ("decision", "d-3"),
        ]
        assert [open_record(e.envelope).record.index for e in entries] == [r.index for r in written]
        assert entries[2].envelope == written[2].envelope
        assert (await store.entries_after(-1, 1))[0].kind == "key"
        assert [e.kind for e in await store.entries_after(first + 1, 1)] == ["outcome"]
        assert await store.entries_after(written[-1].index, 10) == []
