"""The embedded ledger store: one SQLite file in WAL mode, through aiosqlite.

Durability: ``synchronous=FULL`` in WAL mode fsyncs the WAL at every commit, so
a transaction that returned from COMMIT survives ``kill -9`` and power loss.
Sequencing: each append is one ``BEGIN IMMEDIATE`` transaction, which takes
SQLite's single write lock before it reads the head; other processes that
open the same file (a CLI append while a gateway runs) queue behind it.

Tables: ``log_head`` (one row), ``records`` (envelope bytes plus the columns
auditors query by), ``nodes`` (every complete Merkle subtree hash above the
leaves, keyed by :func:`ledger.merkle.node_key`; a leaf's hash is its
envelope's), ``checkpoints``, ``claims`` (the keys records took:
:attr:`ledger.record.Draft.claims`) and ``meta``.

Query indexes are kept behind the head, in a file of their own with their
own connection and thread (:mod:`ledger._lookup`): an append writes only its
records, nodes and claims, and queries do not wait for the writer.

Schema version 2 added ``claims``; version 3 dropped the per-column indexes
on ``records`` for that index. Older files are upgraded when opened.

Example::

    async with SQLiteStore("data/ledger.db") as store:
        head, frontier = await store.snapshot()
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from ledger._lookup import Lookup
from ledger.errors import (
    CheckpointError,
    StoreConflictError,
    StoreCorruptError,
    StoreError,
)
from ledger.merkle import Frontier, NodeId, leaf_hash, node_key
from ledger.record import Record, format_time, open_record, utc_now
from ledger.store import (
    Batch,
    BuildFn,
    Entry,
    Head,
    LedgerStore,
    RecordQuery,
    StoredCheckpoint,
    entries_from,
    envelopes_from,
    frontier_from,
)

__all__ = ["MIN_FREE_BYTES", "SCHEMA_VERSION", "SQLiteStore", "try_lock"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 3
_CLAIMS_SINCE = 2  # the schema version that added the claims table

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS log_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size INTEGER NOT NULL,
    last_leaf BLOB NOT NULL,
    last_time TEXT NOT NULL,
    key_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    idx INTEGER PRIMARY KEY,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    target TEXT NOT NULL,
    decision_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    envelope BLOB NOT NULL
);
DROP INDEX IF EXISTS records_time;
DROP INDEX IF EXISTS records_kind;
DROP INDEX IF EXISTS records_actor;
DROP INDEX IF EXISTS records_target;
DROP INDEX IF EXISTS records_decision;
DROP INDEX IF EXISTS records_trace;
DROP TABLE IF EXISTS lookup;
DELETE FROM meta WHERE key = 'indexed_upto';
CREATE TABLE IF NOT EXISTS nodes (id INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY,
    root BLOB NOT NULL,
    note TEXT NOT NULL,
    signed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, idx INTEGER NOT NULL);
INSERT OR IGNORE INTO log_head VALUES (1, 0, zeroblob(32), '', '');
"""

# Free disk space below which the health probe says appends cannot be written.
MIN_FREE_BYTES = 64 * 2**20
_APPEND_PROVES = 1.0  # seconds an append's commit stands for the health probe's
_INDEX_EVERY = 4096  # records behind the head before the query index catches up
_IN_CHUNK = 500  # stay well below SQLite's bound-parameter limit
_TURN_FIRST_PAUSE_S = 0.0001  # between tries for the replicas' append turn, doubling ...
_TURN_LAST_PAUSE_S = 0.001  # ... up to this


def _open_lock_file(path: Path) -> int:
    """A lock file's descriptor, the file created 0600 if it is not there."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def try_lock(path: Path, mode: int) -> int | None:
    """``path`` opened (created 0600) and ``flock``-ed in ``mode`` (``LOCK_EX`` or
    ``LOCK_SH``) without waiting: the descriptor, which holds the lock until it is closed
    or the process dies, or None when another process holds it."""
    try:
        fd = _open_lock_file(path)
    except OSError as e:
        raise StoreError(f"cannot open {path}: {e.strerror or e}") from e
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if isinstance(e, BlockingIOError):
            return None
        raise StoreError(f"cannot lock {path}: {e.strerror or e}") from e
    return fd


class SQLiteStore(LedgerStore):
    """A :class:`LedgerStore` in one SQLite file."""

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_ms: int = 10_000,
        wal_autocheckpoint_pages: int = 10_000,
        index_every: int = _INDEX_EVERY,
        wal_checkpoint_every: int = 4096,
        shared: bool = False,
    ) -> None:
        if index_every < 1 or wal_checkpoint_every < 0:
            raise ValueError("index_every must be at least 1, wal_checkpoint_every at least 0")
        self._path = Path(path)
        # Replicas on one host: gateways in several processes append to this file, and
        # the one holding the signer's lock (lead) signs the checkpoints.
        self.shared = shared
        self._signer_fd: int | None = None
        self._writer_fd: int | None = None  # the replicas' turns to append (_turn)
        self._index_every = index_every
        self._lookup: Lookup | None = None
        self._indexer: asyncio.Future[None] | None = None
        self._index_again = False  # an append asked for a catch-up while one ran
        self._busy_timeout_ms = busy_timeout_ms
        # SQLite copies the WAL back into the database every N pages, inside the
        # commit that crosses the mark: about 60 ms during which no append is
        # written. A thread of our own does it every ``wal_checkpoint_every``
        # records instead (PASSIVE: it never stops a writer), so SQLite's own
        # (at 10000 pages, 40 MB) is only the backstop. 0: SQLite's alone.
        self._wal_autocheckpoint_pages = wal_autocheckpoint_pages
        self._wal_checkpoint_every = wal_checkpoint_every
        self._since_wal_checkpoint = 0
        self._wal_checkpointer: asyncio.Future[None] | None = None
        self._wal_conn: sqlite3.Connection | None = None  # used by one thread at a time
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()  # one transaction at a time on our connection
        self._appended_at = 0.0  # monotonic time of the last append committed (0: failed)
        self._cache: tuple[Head, Frontier] | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    async def open(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(self._path, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open ledger database {self._path}: {e}") from e
        self._db = db
        try:
            await db.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            mode = await self._one("PRAGMA journal_mode = WAL")
            if mode is None or str(mode[0]).lower() != "wal":
                raise StoreError(f"{self._path}: cannot switch to WAL journal mode")
            await db.execute("PRAGMA synchronous = FULL")
            await db.execute(f"PRAGMA wal_autocheckpoint = {int(self._wal_autocheckpoint_pages)}")
            # After a checkpoint, shrink a WAL that grew past 64 MB back to that size.
            await db.execute("PRAGMA journal_size_limit = 67108864")
            # Refuse a newer file before the script below changes anything in it.
            version = await self._schema_version()
            if version is not None and version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self._path} has schema version {version}, newer than this govgate "
                    f"understands ({SCHEMA_VERSION}); upgrade govgate"
                )
            await db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            if version is None or version < SCHEMA_VERSION:  # the script above upgraded it
                await db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            if version is None or version < _CLAIMS_SINCE:  # records so far have no claims
                await db.execute(
                    "INSERT OR IGNORE INTO meta SELECT 'claims_from', size FROM log_head "
                    "WHERE size > 0"
                )
            row = await self._one("SELECT value FROM meta WHERE key = 'claims_from'")
            try:
                self.claims_from = 0 if row is None else int(row[0])
            except (TypeError, ValueError):
                raise StoreError(f"{self._path}: claims_from {row[0]!r} is not a number") from None
            lookup = Lookup(self._path, self._busy_timeout_ms)
            self._lookup = lookup
            await asyncio.wrap_future(lookup.submit(lookup.open))
        except sqlite3.Error as e:
            await self.close()
            raise StoreError(f"cannot initialise ledger database {self._path}: {e}") from e
        except BaseException:
            await self.close()
            raise

    async def _schema_version(self) -> int | None:
        """The file's schema version (None for a new file)."""
        table = await self._one(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        )
        if table is None:
            return None
        row = await self._one("SELECT value FROM meta WHERE key = 'schema_version'")
        if row is None:
            return None
        try:
            return int(row[0])
        except (TypeError, ValueError):
            raise StoreError(f"{self._path}: schema version {row[0]!r} is not a number") from None

    @property
    def signer_lock_path(self) -> Path:
        return self._path.with_name(self._path.name + ".signer")

    async def lead(self) -> bool:
        """Whether this process signs the checkpoints. Alone on the file: always. Shared:
        while it holds the lock on :attr:`signer_lock_path` (``flock``), taken here when it
        is free; the kernel releases it when the holder closes the store or dies."""
        if not self.shared or self._signer_fd is not None:
            return True
        if self._db is None:
            return False
        self._signer_fd = try_lock(self.signer_lock_path, fcntl.LOCK_EX)
        return self._signer_fd is not None  # None: another replica signs

    async def close(self) -> None:
        signer_fd, self._signer_fd = self._signer_fd, None
        if signer_fd is not None:
            os.close(signer_fd)  # another replica may sign from now on
        lookup, self._lookup = self._lookup, None  # stops the catch-up after its step
        if self._indexer is not None:
            with contextlib.suppress(Exception):
                await self._indexer
            self._indexer = None
        if lookup is not None:
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(lookup.submit(lookup.close))
            await asyncio.to_thread(lookup.shutdown)
        if self._wal_checkpointer is not None:
            with contextlib.suppress(Exception):
                await self._wal_checkpointer  # a thread: it finishes what it started
            self._wal_checkpointer = None
        wal_conn, self._wal_conn = self._wal_conn, None
        if wal_conn is not None:
            wal_conn.close()
        db, self._db = self._db, None
        self._cache = None
        if db is not None:
            await db.close()
        writer_fd, self._writer_fd = self._writer_fd, None
        if writer_fd is not None:  # after the connection's last job
            os.close(writer_fd)

    async def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        async with self._conn.execute(sql, params) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[Any]:
        async with self._conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def _on_db_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` on aiosqlite's connection thread, in one hop.

        A transaction issued statement by statement costs one thread round trip
        per statement (seven for an append), which dominated small appends.
        aiosqlite runs each of its own calls this way (``Connection._execute``)
        but offers no public name for it; this is the one place that uses it.
        """
        db = self._conn

        def call() -> T:
            return fn(db._conn, *args)  # private: see the docstring

        return cast(T, await db._execute(call))  # type: ignore[no-untyped-call]

    @staticmethod
    def _read_head(conn: sqlite3.Connection) -> Head:
        row = conn.execute("SELECT size, last_leaf, last_time, key_id FROM log_head").fetchone()
        if row is None:
            raise StoreCorruptError("log_head row is missing")
        return Head(int(row[0]), bytes(row[1]), str(row[2]), str(row[3]))

    @staticmethod
    def _fetch_nodes(conn: sqlite3.Connection, ids: Collection[NodeId]) -> dict[NodeId, bytes]:
        """Stored node hashes; leaves (level 0) are hashed from their records' envelopes,
        which is what they are (appends do not store them twice)."""
        out: dict[NodeId, bytes] = {}
        leaves = [index for level, index in ids if level == 0]
        for idx, envelope in _select_in(
            conn, "SELECT idx, envelope FROM records WHERE idx", leaves
        ):
            out[(0, int(idx))] = leaf_hash(bytes(envelope))
        keys = {node_key(level, index): (level, index) for level, index in ids if level}
        for k, h in _select_in(conn, "SELECT id, hash FROM nodes WHERE id", list(keys)):
            out[keys[k]] = bytes(h)
        return out

    @staticmethod
    def _taken(conn: sqlite3.Connection, keys: Collection[str]) -> frozenset[str]:
        """Which of ``keys`` records have claimed already."""
        rows = _select_in(conn, "SELECT key FROM claims WHERE key", list(keys))
        return frozenset(k for (k,) in rows)

    def _frontier_at(self, conn: sqlite3.Connection, head: Head) -> Frontier:
        """The frontier for ``head``, from the cache when it is still that head's.

        Runs on the connection thread while ``self._lock`` is held, so the cache
        is never touched from two threads at once.
        """
        if self._cache is not None and self._cache[0] == head:
            return self._cache[1].copy()
        frontier = frontier_from(head.size, self._fetch_nodes(conn, Frontier.ids(head.size)))
        self._cache = (head, frontier.copy())
        return frontier

    def _append(self, conn: sqlite3.Connection, build: BuildFn, prebuilt: Batch | None) -> Batch:
        """One append transaction, start to durable commit, on the connection thread."""
        if not self.shared:
            return self._append_now(conn, build, prebuilt)
        with self._turn():
            return self._append_now(conn, build, prebuilt)

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """Shared: this process's turn to append, among the replicas (``flock`` on
        ``ledger.db.writer``, taken before SQLite's write lock and let go after the commit).

        SQLite itself would queue the replicas' transactions too, but its busy handler
        sleeps 1, 2, 5, 10 ... ms between tries, so a transaction that waits starts
        milliseconds after the lock is free. This lock is tried every 0.1 to 1 ms instead,
        for at most the busy timeout (then SQLite's own "database is locked")."""
        fd = self._writer_fd
        if fd is None:
            writer = self._path.with_name(self._path.name + ".writer")
            fd = self._writer_fd = _open_lock_file(writer)
        give_up = time.monotonic() + self._busy_timeout_ms / 1000
        pause = _TURN_FIRST_PAUSE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= give_up:
                    raise sqlite3.OperationalError("database is locked") from None
                time.sleep(pause)
                pause = min(pause * 2, _TURN_LAST_PAUSE_S)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _append_now(
        self, conn: sqlite3.Connection, build: BuildFn, prebuilt: Batch | None
    ) -> Batch:
        conn.execute("BEGIN IMMEDIATE")
        try:
            head = self._read_head(conn)
            frontier = self._frontier_at(conn, head)
            batch = prebuilt if prebuilt is not None and prebuilt.starts_at(head) else None
            if batch is None:
                batch = build(head, frontier.copy(), frozenset())
            if batch.checked and (taken := self._taken(conn, batch.checked)):
                batch = build(head, frontier, taken)
            if batch.records and batch.records[0].index != head.size:
                raise StoreConflictError("batch does not start at the head")
            conn.executemany(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.index, r.time, r.kind, r.actor, r.target, r.decision_id, r.trace_id,
                     r.envelope)
                    for r in batch.records
                ],
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO nodes VALUES (?, ?)",
                [(node_key(level, index), h) for level, index, h in batch.nodes if level],
            )
            conn.executemany("INSERT INTO claims VALUES (?, ?)", batch.claims)
            h = batch.head
            conn.execute(
                "UPDATE log_head SET size = ?, last_leaf = ?, last_time = ?, key_id = ? "
                "WHERE id = 1 AND size = ?",
                (h.size, h.last_leaf, h.last_time, h.key_id, head.size),
            )
            conn.execute("COMMIT")
        except BaseException:
            self._cache = None
            # A failed COMMIT or a closed connection has already rolled back.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self._cache = (batch.head, batch.frontier.copy())
        return batch

    async def check_writable(self, wait_ms: int = 1000) -> None:
        """Fail unless an append could be written now: the file is writable and not locked
        by another process for longer than ``wait_ms``, a small transaction commits (to
        ``meta``, never to the log: the probe leaves the records, the tree and the head
        as they were), and the disk holds at least :data:`MIN_FREE_BYTES` more (SQLite
        reuses its WAL file's space, so a small commit can succeed on a full disk on which
        a batch of records would not)."""
        free = await asyncio.to_thread(lambda: shutil.disk_usage(self._path.parent).free)
        if free < MIN_FREE_BYTES:
            raise StoreError(
                f"the ledger's disk has {free // 1024:,} KiB free; appends need at least "
                f"{MIN_FREE_BYTES // 2**20} MiB"
            )
        if time.monotonic() - self._appended_at < _APPEND_PROVES:
            return  # an append just committed: the probe's commit would only slow the next

        def probe(conn: sqlite3.Connection) -> None:
            conn.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('write_probe', ?)",
                        (format_time(utc_now()),),
                    )
                    conn.execute("COMMIT")  # fsync'd, as an append is
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    raise
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")

        try:
            async with self._lock:  # never inside another job's transaction on this connection
                await self._on_db_thread(probe)
        except (sqlite3.Error, ValueError, AttributeError) as err:  # closed: no connection
            raise StoreError(f"the ledger database cannot be written: {err}") from err

    async def sequence(self, build: BuildFn, *, prebuilt: Batch | None = None) -> Batch:
        async with self._lock:
            try:
                batch = await self._on_db_thread(self._append, build, prebuilt)
            except sqlite3.IntegrityError as e:
                raise StoreConflictError(f"ledger head moved during append: {e}") from e
            except sqlite3.Error as e:
                self._appended_at = 0.0  # the next health probe commits one of its own
                raise StoreError(f"ledger append failed: {e}") from e
            self._appended_at = time.monotonic()
        self._since_wal_checkpoint += len(batch.records)
        if (
            self._wal_checkpoint_every
            and self._since_wal_checkpoint >= self._wal_checkpoint_every
            and (self._wal_checkpointer is None or self._wal_checkpointer.done())
        ):
            self._since_wal_checkpoint = 0
            self._wal_checkpointer = asyncio.ensure_future(asyncio.to_thread(self._checkpoint_wal))
        lookup = self._lookup
        if (
            lookup is not None
            and lookup.usable
            and batch.head.size - lookup.indexed_upto >= self._index_every
        ):
            if self._indexer is None or self._indexer.done():
                self._indexer = asyncio.ensure_future(self._catch_up(lookup))
            else:
                self._index_again = True  # it may have read the head before this commit
        return batch

    def _checkpoint_wal(self) -> None:
        """Copy the WAL into the database file, on a connection of its own (a thread).

        PASSIVE copies what no reader still needs and waits for nobody; a failure
        is left for the next one (and SQLite's own checkpoint is the backstop)."""
        try:
            if self._wal_conn is None:
                self._wal_conn = sqlite3.connect(
                    self._path, isolation_level=None, check_same_thread=False
                )
                self._wal_conn.execute("PRAGMA busy_timeout = 100")
            self._wal_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as e:
            _log.debug("background WAL checkpoint failed: %s", e)

    async def _catch_up(self, lookup: Lookup) -> None:
        """Bring the query index up to the head, one step (one job on its thread) at a
        time, so queries get in between. A failure is left for a later append to
        retry: queries stay right meanwhile, only slower."""
        while self._lookup is lookup:
            self._index_again = False
            try:
                upto, size = await asyncio.wrap_future(lookup.submit(lookup.step))
            except (sqlite3.Error, StoreError, RuntimeError) as e:  # RuntimeError: shut down
                _log.debug("the query index did not catch up: %s", e)
                if isinstance(e, sqlite3.DatabaseError) and not isinstance(
                    e, sqlite3.OperationalError
                ):  # damaged: a new one is caught up by the next append's catch-up
                    with contextlib.suppress(sqlite3.Error, OSError, RuntimeError):
                        await asyncio.wrap_future(lookup.submit(lookup.rebuild))
                return
            if upto >= size and not self._index_again:
                return

    def _snapshot(self, conn: sqlite3.Connection) -> tuple[Head, Frontier]:
        conn.execute("BEGIN")
        try:
            head = self._read_head(conn)
            return head, self._frontier_at(conn, head)
        finally:
            conn.execute("COMMIT")

    async def snapshot(self) -> tuple[Head, Frontier]:
        async with self._lock:
            try:
                return await self._on_db_thread(self._snapshot)
            except sqlite3.Error as e:
                raise StoreError(f"cannot read the ledger head: {e}") from e

    async def nodes(self, ids: Collection[NodeId]) -> dict[NodeId, bytes]:
        async with self._lock:
            try:
                return await self._on_db_thread(self._fetch_nodes, ids)
            except sqlite3.Error as e:
                raise StoreError(f"cannot read Merkle nodes: {e}") from e

    async def envelopes(self, start: int, end: int) -> list[bytes]:
        async with self._lock:
            try:
                rows = await self._all(
                    "SELECT idx, envelope FROM records WHERE idx >= ? AND idx < ? ORDER BY idx",
                    (start, end),
                )
            except sqlite3.Error as e:
                raise StoreError(f"cannot read records: {e}") from e
        return envelopes_from(rows, start)

    async def claimant(self, key: str) -> int | None:
        async with self._lock:
            try:
                row = await self._one("SELECT idx FROM claims WHERE key = ?", (key,))
            except sqlite3.Error as e:
                raise StoreError(f"cannot read claims: {e}") from e
        return None if row is None else int(row[0])

    def _open_lookup(self) -> Lookup:
        """The query index (its own connection and thread: readers never wait for the
        writer), or :class:`StoreError` when the store is closed."""
        if self._lookup is None:
            raise StoreError("store is not open")
        return self._lookup

    async def query(self, q: RecordQuery, *, after: int | None = None) -> list[Record]:
        """Through the query index's connection and thread: no wait for the writer."""
        lookup = self._open_lookup()
        try:
            try:
                rows = await asyncio.wrap_future(lookup.submit(lookup.query, q, after))
            except sqlite3.DatabaseError as e:
                if isinstance(e, sqlite3.OperationalError):
                    raise  # locked, gone, ...: not damage
                # Damaged (a page of the index, most likely: the file can be rebuilt from
                # the ledger). Once more on a new, empty index, which scans.
                await asyncio.wrap_future(lookup.submit(lookup.rebuild))
                rows = await asyncio.wrap_future(lookup.submit(lookup.query, q, after))
        except (sqlite3.Error, RuntimeError) as e:  # RuntimeError: closed meanwhile
            raise StoreError(f"ledger query failed: {e}") from e
        return [open_record(r).record for r in rows]

    async def entries_after(self, after: int, limit: int) -> list[Entry]:
        """Through the query index's connection and thread, as queries: no wait for the
        writer."""
        lookup = self._open_lookup()
        try:
            rows = await asyncio.wrap_future(lookup.submit(lookup.entries, after, limit))
        except (sqlite3.Error, RuntimeError) as e:  # RuntimeError: closed meanwhile
            raise StoreError(f"ledger read failed: {e}") from e
        return entries_from(rows, after + 1)

    async def save_checkpoint(self, cp: StoredCheckpoint) -> StoredCheckpoint:
        async with self._lock:
            try:
                # One job on the connection's thread, BEGIN to COMMIT: a caller cancelled
                # between statements must not leave the transaction (and SQLite's write
                # lock) open, nor a ROLLBACK queued after the COMMIT.
                return await self._on_db_thread(self._save_checkpoint, cp)
            except sqlite3.Error as e:
                raise StoreError(f"cannot save checkpoint: {e}") from e

    def _save_checkpoint(self, conn: sqlite3.Connection, cp: StoredCheckpoint) -> StoredCheckpoint:
        conn.execute("BEGIN IMMEDIATE")
        try:
            latest = conn.execute(
                "SELECT size, root, note, signed_at FROM checkpoints ORDER BY size DESC LIMIT 1"
            ).fetchone()
            same = conn.execute(
                "SELECT size, root, note, signed_at FROM checkpoints WHERE size = ?", (cp.size,)
            ).fetchone()
            head = self._read_head(conn)
            if same is not None:
                if bytes(same[1]) != cp.root:
                    raise CheckpointError(f"another root is already signed for size {cp.size}")
                kept = StoredCheckpoint(int(same[0]), bytes(same[1]), same[2], same[3])
            elif latest is not None and int(latest[0]) > cp.size:
                raise CheckpointError(
                    f"checkpoint for size {cp.size} is older than the latest ({latest[0]})"
                )
            elif cp.size > head.size:
                raise CheckpointError(f"checkpoint size {cp.size} is beyond the log head")
            else:
                conn.execute(
                    "INSERT INTO checkpoints VALUES (?, ?, ?, ?)",
                    (cp.size, cp.root, cp.note, cp.signed_at),
                )
                kept = cp
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # a failed COMMIT has rolled back
                conn.execute("ROLLBACK")
            raise
        return kept

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        params: tuple[int, ...] = ()
        if size is None:
            sql = "SELECT * FROM checkpoints ORDER BY size DESC LIMIT 1"
        else:
            sql, params = "SELECT * FROM checkpoints WHERE size = ?", (size,)
        async with self._lock:
            try:
                row = await self._one(sql, params)
            except sqlite3.Error as e:
                raise StoreError(f"cannot read checkpoints: {e}") from e
        return None if row is None else StoredCheckpoint(int(row[0]), bytes(row[1]), row[2], row[3])

    async def checkpoints(self, upto: int) -> list[StoredCheckpoint]:
        async with self._lock:
            try:
                rows = await self._all(
                    "SELECT * FROM checkpoints WHERE size <= ? ORDER BY size", (upto,)
                )
            except sqlite3.Error as e:
                raise StoreError(f"cannot read checkpoints: {e}") from e
        return [StoredCheckpoint(int(r[0]), bytes(r[1]), r[2], r[3]) for r in rows]


def _select_in(conn: sqlite3.Connection, select: str, keys: list[Any]) -> Iterator[Any]:
    """Rows of ``select`` (ending in the column to match) ``IN`` ``keys``, a bounded
    number of parameters per statement."""
    for i in range(0, len(keys), _IN_CHUNK):
        chunk = keys[i : i + _IN_CHUNK]
        yield from conn.execute(f"{select} IN ({','.join('?' * len(chunk))})", chunk)
