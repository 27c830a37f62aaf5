"""The SQLite store's query index, kept behind the head in a file of its own.

An append writes its records, Merkle nodes and claims, nothing else. The
``lookup`` table (field, value, index), which queries by kind, actor, target,
decision id and trace id read, is filled for many records at a time, so each
of its pages is written once per catch-up instead of once per append (the
target column alone, spread over hundreds of machines, made every append
rewrite one index page per record).

It lives in ``<ledger file>.lookup``, next to the ledger, with a connection and
a thread of its own: filling it takes that file's write lock, never the
ledger's, so appends go on meanwhile. The ledger is attached to that
connection (``log``) and only read, in deferred transactions: a deferred
transaction locks for writing only the file it writes. Queries run there too,
off the ledger's writer.

The file holds nothing that cannot be rebuilt from the ledger. It names the
leaf hash of the last record it indexed; if the ledger no longer has that
record (a restored backup, another file), the index starts again from zero.
Deleting the file is safe, and one that is not a database (damaged) is
replaced by a new one. One that cannot be used at all (not writable, say
left behind by ``sudo govgate ledger query``; locked by another process for
longer than the busy timeout; not a file) never stops the ledger from opening:
a warning names it, and until a restart that can use it, queries scan the
ledger instead (right, only slower).

A query reads ``lookup`` below ``indexed_upto`` and scans the records above
it. Empty values are not in ``lookup``: a filter on an empty value scans its
index range. Times need no index: records never go back in time, so the first
record at or after a time is found by bisecting the records by index.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ledger.errors import StoreCorruptError
from ledger.merkle import leaf_hash
from ledger.store import RecordQuery

__all__ = ["QUERY_COLUMNS", "Lookup"]

T = TypeVar("T")
_log = logging.getLogger(__name__)

# Columns auditors filter by; a column's position is its ``lookup.field``.
QUERY_COLUMNS = ("kind", "actor", "target", "decision_id", "trace_id")
# Which filter drives a query through ``lookup``: the most selective first.
_LOOKUP_ORDER = ("decision_id", "trace_id", "target", "actor", "kind")
INDEX_STEP = 16_384  # records indexed per transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lookup (
    field INTEGER NOT NULL,
    value TEXT NOT NULL,
    idx INTEGER NOT NULL,
    PRIMARY KEY (field, value, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_upto INTEGER NOT NULL,
    last_leaf BLOB NOT NULL
);
INSERT OR IGNORE INTO state VALUES (1, 0, x'');
"""


def lookup_path(ledger: Path) -> Path:
    """Where the index of the ledger file ``ledger`` lives (its whole name, plus
    ``.lookup``: two ledgers in one directory never share one)."""
    return ledger.with_name(ledger.name + ".lookup")


class Lookup:
    """The index file, its connection and its thread. Every method but :meth:`submit`
    runs on that thread (through :meth:`submit`)."""

    def __init__(self, ledger: Path, busy_timeout_ms: int) -> None:
        self.ledger = ledger
        self.path = lookup_path(ledger)
        self._busy_timeout_ms = busy_timeout_ms
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ledger-lookup")
        self._conn: sqlite3.Connection | None = None
        self.indexed_upto = 0  # as last seen here
        self.usable = True  # False: the file could not be used; nothing is indexed

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        return self._pool.submit(fn, *args)

    def open(self) -> None:
        try:
            try:
                self._open(self.path)
            except sqlite3.DatabaseError as e:
                if isinstance(e, sqlite3.OperationalError):
                    raise  # locked, or cannot be opened or written: not the file's fault
                _log.warning("the query index %s is damaged (%s); building a new one", self.path, e)
                for suffix in ("", "-wal", "-shm", "-journal"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                self._open(self.path)
        except (sqlite3.Error, OSError) as e:
            _log.warning(
                "the query index %s cannot be used (%s); queries scan the ledger instead "
                "until a restart can use it", self.path, e,
            )  # fmt: skip
            self.usable = False
            self._open(":memory:")  # the same tables, empty for good: every query scans

    def _open(self, where: str | Path) -> None:
        conn = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            # Derived data: a power cut may cost the last catch-up, which is redone.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            conn.execute("ATTACH DATABASE ? AS log", (str(self.ledger),))
            self._conn = conn
            self._check_binding(conn)
        except BaseException:
            self._conn = None
            conn.close()
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def rebuild(self) -> None:
        """Replace an index file found damaged in use (a page, not its header, which
        :meth:`open` would have caught) by an empty one, which catch-ups fill again;
        queries scan meanwhile. Runs on the index's thread, like every use of it."""
        if not self.usable:
            return
        _log.warning("the query index %s is damaged; building a new one", self.path)
        self.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self.indexed_upto = 0
        self.open()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise sqlite3.ProgrammingError("the lookup index is not open")
        return self._conn

    def _check_binding(self, conn: sqlite3.Connection) -> None:
        """Start again from zero if the index is not of this ledger (see the module doc)."""
        conn.execute("BEGIN")
        try:
            upto, last = conn.execute("SELECT indexed_upto, last_leaf FROM main.state").fetchone()
            row = None
            if upto:
                row = conn.execute(
                    "SELECT envelope FROM log.records WHERE idx = ?", (upto - 1,)
                ).fetchone()
            ours = not upto or (row is not None and leaf_hash(bytes(row[0])) == bytes(last))
        finally:
            conn.execute("COMMIT")
        if not ours:
            # Deferred, as everywhere here: IMMEDIATE would lock the attached ledger too.
            conn.execute("BEGIN")
            try:
                conn.execute("DELETE FROM main.lookup")
                conn.execute("UPDATE main.state SET indexed_upto = 0, last_leaf = x''")
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            upto = 0
        self.indexed_upto = int(upto)

    def step(self) -> tuple[int, int]:
        """One transaction: ``lookup`` rows for the next records; return indexed_upto
        and the ledger's size.

        Deferred, so that only the index file is locked for writing; if another
        process indexed meanwhile, SQLite refuses the write and this one gives up
        (the other did the work)."""
        if not self.usable:
            raise sqlite3.OperationalError(f"the query index {self.path} is not in use")
        conn = self.conn
        conn.execute("BEGIN")
        try:
            (upto,) = conn.execute("SELECT indexed_upto FROM main.state").fetchone()
            row = conn.execute("SELECT size FROM log.log_head").fetchone()
            size = 0 if row is None else int(row[0])
            end = min(size, upto + INDEX_STEP)
            if end > upto:
                selects = " UNION ALL ".join(
                    f"SELECT {field}, {col}, idx FROM log.records "  # noqa: S608 (fixed names)
                    f"WHERE idx >= ?1 AND idx < ?2 AND {col} != ''"
                    for field, col in enumerate(QUERY_COLUMNS)
                )
                conn.execute(f"INSERT OR IGNORE INTO main.lookup {selects}", (upto, end))
                last = conn.execute(
                    "SELECT envelope FROM log.records WHERE idx = ?", (end - 1,)
                ).fetchone()
                if last is None:
                    raise StoreCorruptError(f"record {end - 1} is missing from the store")
                conn.execute(
                    "UPDATE main.state SET indexed_upto = ?, last_leaf = ?",
                    (end, leaf_hash(bytes(last[0]))),
                )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        self.indexed_upto = max(upto, end)
        return self.indexed_upto, size

    def entries(self, after: int, limit: int) -> list[tuple[Any, ...]]:
        """(index, kind, decision id, envelope) of the records after ``after``, at most
        ``limit``: one statement, so one consistent read."""
        return self.conn.execute(
            "SELECT idx, kind, decision_id, envelope FROM log.records WHERE idx > ? "
            "ORDER BY idx LIMIT ?",
            (after, limit),
        ).fetchall()

    def query(self, q: RecordQuery, after: int | None) -> list[bytes]:
        """Envelopes of matching records, in one read transaction."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            row = conn.execute("SELECT size FROM log.log_head").fetchone()
            size = 0 if row is None else int(row[0])
            (upto,) = conn.execute("SELECT indexed_upto FROM main.state").fetchone()
            upto = min(int(upto), size)
            lo = max(q.start, 0 if after is None else after + 1)
            hi = size if q.end is None else min(q.end, size)
            if q.since is not None:
                lo = _first_at_or_after(conn, q.since, lo, hi)
            if q.until is not None:
                hi = _first_at_or_after(conn, q.until, lo, hi)
            if lo >= hi:
                return []
            where, params = [], []
            if q.since is not None:
                where.append("r.time >= ?")
                params.append(q.since)
            if q.until is not None:
                where.append("r.time < ?")
                params.append(q.until)
            for col in QUERY_COLUMNS:
                value = getattr(q, col)
                if value is not None:
                    where.append(f"r.{col} = ?")
                    params.append(value)
            cond = "".join(f" AND {w}" for w in where)
            driver = next((c for c in _LOOKUP_ORDER if getattr(q, c)), None)  # "" is not indexed
            out: list[bytes] = []
            if driver is not None and lo < upto:
                # Only fixed column names are spliced in (``cond``); values are bound.
                sql = (
                    "SELECT r.envelope FROM main.lookup AS l CROSS JOIN log.records AS r "  # noqa: S608
                    f"ON r.idx = l.idx WHERE l.field = ? AND l.value = ? AND l.idx >= ? "
                    f"AND l.idx < ?{cond} ORDER BY l.idx LIMIT ?"
                )
                field = QUERY_COLUMNS.index(driver)
                args = [field, getattr(q, driver), lo, min(hi, upto), *params, q.limit]
                out.extend(bytes(r[0]) for r in conn.execute(sql, args))
                lo = max(lo, upto)
            if len(out) < q.limit and lo < hi:
                sql = (
                    f"SELECT r.envelope FROM log.records AS r WHERE r.idx >= ? AND r.idx < ?{cond} "  # noqa: S608
                    "ORDER BY r.idx LIMIT ?"
                )
                rest = conn.execute(sql, [lo, hi, *params, q.limit - len(out)])
                out.extend(bytes(r[0]) for r in rest)
            return out
        finally:
            conn.execute("COMMIT")


def _first_at_or_after(conn: sqlite3.Connection, when: str, lo: int, hi: int) -> int:
    """The first index in ``[lo, hi)`` whose time is ``>= when`` (``hi`` if none).

    Records never go back in time (:meth:`ledger.log.Ledger._build` holds the
    clock, and verification checks it), so their times are sorted by index.
    """
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute("SELECT time FROM log.records WHERE idx = ?", (mid,)).fetchone()
        if row is None:
            raise StoreCorruptError(f"record {mid} is missing from the store")
        if row[0] < when:
            lo = mid + 1
        else:
            hi = mid
    return lo
