"""The shared ledger store: one PostgreSQL database, through asyncpg, for many replicas.

Sequencing: an append is one transaction that locks the log head row
(``SELECT ... FOR UPDATE``), so replicas contend only for that lock; each
replica batches whatever arrived while its last transaction ran (the
:class:`~ledger.log.Ledger`'s group commit). Index, previous leaf hash, Merkle
nodes, claims and the new head are written in that transaction.

Durability: every connection runs with ``synchronous_commit = on``, whatever the
server's default, so COMMIT returns only once the WAL is flushed (and, with
synchronous standbys configured, replicated): an acknowledged record survives a
crash of the replica and of the server.

Checkpoint signing: one replica at a time holds an advisory lock, taken in a
transaction left open on a connection of its own (:meth:`PostgresStore.lead`).
When that replica dies, its connection closes, PostgreSQL releases the lock,
and the next replica that asks takes over. The hold is a lease: the connection
runs with ``idle_in_transaction_session_timeout`` (:data:`LEASE_SECONDS`), and
the signer renews it a third of a lease apart, while it runs. A replica that
stops without its connection closing (a stopped or frozen process, a host that
vanished without resetting the connection) loses it that long after its last
renewal, and another takes over.

Schema: versioned migrations (:data:`MIGRATIONS`), applied by ``govgate db
migrate`` (:func:`migrate`). A store refuses to open a database whose schema is
older (run the migration) or newer (upgrade govgate) than it knows.

Example::

    await migrate("postgresql://govgate@db/govgate")
    async with PostgresStore("postgresql://govgate@db/govgate") as store:
        head, frontier = await store.snapshot()
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeVar

import asyncpg

from ledger.errors import CheckpointError, StoreConflictError, StoreCorruptError, StoreError
from ledger.merkle import Frontier, NodeId, node_key
from ledger.record import Record, open_record
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

__all__ = ["MIGRATIONS", "PostgresStore", "SchemaState", "migrate", "schema_state"]

T = TypeVar("T")

# Each migration is applied once, in its own transaction, and never edited after it
# ships: a change to the schema is a new entry.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (
        1,
        "the log: head, records, Merkle nodes, checkpoints, claims",
        """
        CREATE TABLE log_head (
            id integer PRIMARY KEY CHECK (id = 1),
            size bigint NOT NULL,
            last_leaf bytea NOT NULL,
            last_time text NOT NULL,
            key_id text NOT NULL
        );
        INSERT INTO log_head VALUES (1, 0, decode(repeat('00', 32), 'hex'), '', '');
        CREATE TABLE records (
            idx bigint PRIMARY KEY,
            time text NOT NULL,
            kind text NOT NULL,
            actor text NOT NULL,
            target text NOT NULL,
            decision_id text NOT NULL,
            trace_id text NOT NULL,
            envelope bytea NOT NULL
        );
        CREATE INDEX records_time ON records (time);
        CREATE INDEX records_kind ON records (kind, idx);
        CREATE INDEX records_actor ON records (actor, idx);
        CREATE INDEX records_target ON records (target, idx);
        CREATE INDEX records_decision ON records (decision_id, idx);
        CREATE INDEX records_trace ON records (trace_id, idx);
        CREATE TABLE nodes (id bigint PRIMARY KEY, hash bytea NOT NULL);
        CREATE TABLE checkpoints (
            size bigint PRIMARY KEY,
            root bytea NOT NULL,
            note text NOT NULL,
            signed_at text NOT NULL
        );
        CREATE TABLE claims (key text PRIMARY KEY, idx bigint NOT NULL);
        """,
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_VERSIONS = """
CREATE TABLE IF NOT EXISTS govgate_schema (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
_MIGRATE_LOCK = 0x676F7667_6D696772  # advisory lock keys: "govgmigr" and "govgsign"
_SIGNER_LOCK = 0x676F7667_7369676E
_SETTINGS = {"synchronous_commit": "on", "application_name": "govgate"}
_HEAD = "SELECT size, last_leaf, last_time, key_id FROM log_head WHERE id = 1"
_QUERY_COLUMNS = ("kind", "actor", "target", "decision_id", "trace_id")
_MAX_BIGINT = 2**63 - 1  # the largest index a bigint column holds
# What a dropped connection, a server restart or a refused login raise.
_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # e.g. a connection whose server vanished mid-protocol
    OSError,
    asyncio.TimeoutError,
)


_SECRET_PARAMS = re.compile(r"([?&](?:password|sslpassword)=)[^&#]*", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` without its passwords (in the user part, or as query parameters, which
    libpq and asyncpg both take), for messages and logs."""
    url = _SECRET_PARAMS.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


async def _connect(
    url: str, timeout: float, settings: dict[str, str] | None = None
) -> asyncpg.Connection:
    return await asyncpg.connect(url, timeout=timeout, server_settings=settings or _SETTINGS)


# Seconds the signer's hold outlives its last renewal (see the module's docs).
LEASE_SECONDS = 10.0


class SchemaState:
    """What :func:`schema_state` found: the versions applied, and what is missing."""

    def __init__(self, applied: list[int]) -> None:
        self.applied = applied
        self.current = max(applied, default=0)
        self.pending = [m for m in MIGRATIONS if m[0] not in applied]
        self.newer = self.current > SCHEMA_VERSION


async def schema_state(conn: asyncpg.Connection) -> SchemaState:
    exists = await conn.fetchval("SELECT to_regclass('govgate_schema') IS NOT NULL")
    if not exists:
        return SchemaState([])
    return SchemaState([r[0] for r in await conn.fetch("SELECT version FROM govgate_schema")])


async def migrate(
    url: str, *, timeout: float = 10.0, progress: Callable[[int, str], None] | None = None
) -> list[int]:
    """Apply the migrations ``url``'s database lacks, each in one transaction; return
    their versions. Refuses a database whose schema is newer than this govgate's.
    Safe to run from several replicas at once (an advisory lock serialises them)."""
    try:
        conn = await _connect(url, timeout)
    except _DB_ERRORS as err:
        raise StoreError(f"cannot connect to {redact(url)}: {err}") from err
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATE_LOCK)
        await conn.execute(_VERSIONS)
        state = await schema_state(conn)
        if state.newer:
            raise StoreError(
                f"{redact(url)} has schema version {state.current}, newer than this govgate "
                f"understands ({SCHEMA_VERSION}); upgrade govgate"
            )
        done = []
        for version, description, sql in state.pending:
            if progress is not None:
                progress(version, description)
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO govgate_schema (version, description) VALUES ($1, $2)",
                    version,
                    description,
                )
            done.append(version)
        return done
    except _DB_ERRORS as err:
        raise StoreError(f"migration of {redact(url)} failed: {err}") from err
    finally:
        with contextlib.suppress(*_DB_ERRORS):
            await conn.close()


def _head(row: Any) -> Head:
    if row is None:
        raise StoreCorruptError("log_head row is missing")
    return Head(int(row[0]), bytes(row[1]), str(row[2]), str(row[3]))


def _checkpoint(row: Any) -> StoredCheckpoint:
    return StoredCheckpoint(int(row[0]), bytes(row[1]), str(row[2]), str(row[3]))


class PostgresStore(LedgerStore):
    """A :class:`LedgerStore` in one PostgreSQL database, shared by many processes."""

    shared = True

    def __init__(
        self,
        url: str,
        *,
        min_connections: int = 2,
        max_connections: int = 10,
        timeout: float = 10.0,  # seconds to connect, or to wait for a pooled connection
        lock_timeout_ms: int = 10_000,  # an append waits this long for the head lock
    ) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise StoreError("a PostgreSQL ledger URL starts with postgresql://")
        self._url = url
        self._min, self._max = min_connections, max_connections
        self._timeout = timeout
        self._lock_timeout_ms = lock_timeout_ms
        self._pool: asyncpg.Pool | None = None
        self._cache: tuple[Head, Frontier] | None = None
        self._leader: asyncpg.Connection | None = None  # holds the signer's lock, or tries to
        self._leading_now = False
        self._leading = asyncio.Lock()
        self._renewer: asyncio.Future[None] | None = None  # renews the lease (_renew)
        self._closed = False  # close() ran: no hold is taken again

    @property
    def url(self) -> str:
        return redact(self._url)

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=self._min,
                max_size=self._max,
                timeout=self._timeout,
                server_settings=_SETTINGS | {"lock_timeout": str(self._lock_timeout_ms)},
            )
        except _DB_ERRORS as err:
            raise StoreError(f"cannot connect to the ledger database {self.url}: {err}") from err
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                state = await schema_state(conn)
        except _DB_ERRORS as err:
            await self.close()
            raise StoreError(f"cannot read the schema of {self.url}: {err}") from err
        problem = ""
        if state.newer:
            problem = (
                f"has schema version {state.current}, newer than this govgate understands "
                f"({SCHEMA_VERSION}); upgrade govgate"
            )
        elif state.pending:
            problem = (
                f"is at schema version {state.current}, this govgate needs {SCHEMA_VERSION}; "
                "run: govgate db migrate"
            )
        if problem:
            await self.close()
            raise StoreError(f"the ledger database {self.url} {problem}")

    async def close(self) -> None:
        # After any lead() in flight (it could otherwise take the hold on the closed store,
        # and its renewer keep it for good); none starts again.
        async with self._leading:
            self._closed = True
            renewer, self._renewer = self._renewer, None
            leader, self._leader = self._leader, None
            self._leading_now = False
        if renewer is not None:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, *_DB_ERRORS):
                await renewer
        pool, self._pool = self._pool, None
        self._cache = None
        if leader is not None:
            with contextlib.suppress(*_DB_ERRORS):
                await leader.close(timeout=self._timeout)
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self._timeout)
            except _DB_ERRORS:
                pool.terminate()

    async def _run(self, what: str, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``fn`` on a pooled connection; database failures become :class:`StoreError`."""
        if self._pool is None:
            raise StoreError("store is not open")
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                return await fn(conn)
        except StoreError:
            raise
        except asyncpg.UniqueViolationError as err:
            self._cache = None
            raise StoreConflictError(f"{what}: {err}") from err
        except _DB_ERRORS as err:
            self._cache = None
            raise StoreError(f"{what}: {err}") from err

    async def _fetch_nodes(
        self, conn: asyncpg.Connection, ids: Collection[NodeId]
    ) -> dict[NodeId, bytes]:
        keys = {node_key(level, index): (level, index) for level, index in ids}
        sql = "SELECT id, hash FROM nodes WHERE id = ANY($1::bigint[])"
        rows = await conn.fetch(sql, list(keys))
        return {keys[r[0]]: bytes(r[1]) for r in rows}

    async def _frontier_at(self, conn: asyncpg.Connection, head: Head) -> Frontier:
        if self._cache is not None and self._cache[0] == head:
            return self._cache[1].copy()
        frontier = frontier_from(head.size, await self._fetch_nodes(conn, Frontier.ids(head.size)))
        self._cache = (head, frontier.copy())
        return frontier

    async def _append(
        self, conn: asyncpg.Connection, build: BuildFn, prebuilt: Batch | None
    ) -> Batch:
        async with conn.transaction():
            # The head row's lock is the sequencer: other replicas' appends wait here.
            head = _head(await conn.fetchrow(f"{_HEAD} FOR UPDATE"))
            frontier = await self._frontier_at(conn, head)
            batch = prebuilt if prebuilt is not None and prebuilt.starts_at(head) else None
            if batch is None:
                batch = await asyncio.to_thread(build, head, frontier.copy(), frozenset())
            if batch.checked:
                rows = await conn.fetch(
                    "SELECT key FROM claims WHERE key = ANY($1::text[])", list(batch.checked)
                )
                if rows:
                    taken = frozenset(r[0] for r in rows)
                    batch = await asyncio.to_thread(build, head, frontier, taken)
            if batch.records and batch.records[0].index != head.size:
                raise StoreConflictError("batch does not start at the head")
            if batch.records:
                await conn.copy_records_to_table(
                    "records",
                    records=[
                        (r.index, r.time, r.kind, r.actor, r.target, r.decision_id, r.trace_id,
                         r.envelope)
                        for r in batch.records
                    ],
                )  # fmt: skip
            if batch.nodes:
                await conn.copy_records_to_table(
                    "nodes", records=[(node_key(lv, ix), h) for lv, ix, h in batch.nodes]
                )
            if batch.claims:
                await conn.copy_records_to_table("claims", records=list(batch.claims))
            h = batch.head
            await conn.execute(
                "UPDATE log_head SET size = $1, last_leaf = $2, last_time = $3, key_id = $4 "
                "WHERE id = 1",
                h.size, h.last_leaf, h.last_time, h.key_id,
            )  # fmt: skip
        self._cache = (batch.head, batch.frontier.copy())
        return batch

    async def sequence(self, build: BuildFn, *, prebuilt: Batch | None = None) -> Batch:
        async def append(conn: asyncpg.Connection) -> Batch:
            try:
                return await self._append(conn, build, prebuilt)
            except BaseException:
                self._cache = None  # the transaction rolled back: the cache may be ahead
                raise

        return await self._run("ledger append failed", append)

    async def check_writable(self) -> None:
        async def probe(conn: asyncpg.Connection) -> None:
            if await conn.fetchval("SELECT pg_is_in_recovery()"):
                raise StoreError(f"{self.url} is a read-only standby")
            await conn.fetchval("SELECT size FROM log_head WHERE id = 1")

        await self._run("the ledger database cannot be written", probe)

    async def snapshot(self) -> tuple[Head, Frontier]:
        async def read(conn: asyncpg.Connection) -> tuple[Head, Frontier]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                head = _head(await conn.fetchrow(_HEAD))
                return head, await self._frontier_at(conn, head)

        return await self._run("cannot read the ledger head", read)

    async def nodes(self, ids: Collection[NodeId]) -> dict[NodeId, bytes]:
        return await self._run("cannot read Merkle nodes", lambda c: self._fetch_nodes(c, ids))

    async def envelopes(self, start: int, end: int) -> list[bytes]:
        rows = await self._run(
            "cannot read records",
            lambda c: c.fetch(
                "SELECT idx, envelope FROM records WHERE idx >= $1 AND idx < $2 ORDER BY idx",
                start,
                end,
            ),
        )
        return envelopes_from(rows, start)

    async def claimant(self, key: str) -> int | None:
        idx = await self._run(
            "cannot read claims", lambda c: c.fetchval("SELECT idx FROM claims WHERE key = $1", key)
        )
        return None if idx is None else int(idx)

    async def query(self, q: RecordQuery, *, after: int | None = None) -> list[Record]:
        start = max(q.start, 0 if after is None else after + 1)
        if start > _MAX_BIGINT:  # (uint64 on the wire): no record is that far
            return []
        params: list[Any] = [start]
        where = ["idx >= $1"]

        def add(condition: str, value: Any) -> None:
            params.append(value)
            where.append(condition.replace("?", f"${len(params)}"))

        if q.end is not None:
            add("idx < ?", min(q.end, _MAX_BIGINT))
        if q.since is not None:
            add("time >= ?", q.since)
        if q.until is not None:
            add("time < ?", q.until)
        for col in _QUERY_COLUMNS:
            value = getattr(q, col)
            if value is not None:
                add(f"{col} = ?", value)
        params.append(q.limit)
        sql = (
            f"SELECT envelope FROM records WHERE {' AND '.join(where)} "  # noqa: S608
            f"ORDER BY idx LIMIT ${len(params)}"
        )
        rows = await self._run("ledger query failed", lambda c: c.fetch(sql, *params))
        return [open_record(bytes(r[0])).record for r in rows]

    async def entries_after(self, after: int, limit: int) -> list[Entry]:
        if after + 1 > _MAX_BIGINT:
            return []
        rows = await self._run(
            "cannot read records",
            lambda c: c.fetch(
                "SELECT idx, kind, decision_id, envelope FROM records WHERE idx > $1 "
                "ORDER BY idx LIMIT $2",
                after, limit,
            ),
        )  # fmt: skip
        return entries_from(rows, after + 1)

    async def save_checkpoint(self, cp: StoredCheckpoint) -> StoredCheckpoint:
        async def save(conn: asyncpg.Connection) -> StoredCheckpoint:
            async with conn.transaction():
                # Serialise with other savers; appends only need the head row, not this.
                await conn.execute("LOCK TABLE checkpoints IN SHARE ROW EXCLUSIVE MODE")
                same = await conn.fetchrow("SELECT * FROM checkpoints WHERE size = $1", cp.size)
                if same is not None:
                    if bytes(same[1]) != cp.root:
                        raise CheckpointError(f"another root is already signed for size {cp.size}")
                    return _checkpoint(same)
                latest = await conn.fetchval("SELECT max(size) FROM checkpoints")
                if latest is not None and latest > cp.size:
                    raise CheckpointError(
                        f"checkpoint for size {cp.size} is older than the latest ({latest})"
                    )
                size = await conn.fetchval("SELECT size FROM log_head WHERE id = 1")
                if cp.size > size:
                    raise CheckpointError(f"checkpoint size {cp.size} is beyond the log head")
                await conn.execute(
                    "INSERT INTO checkpoints VALUES ($1, $2, $3, $4)",
                    cp.size, cp.root, cp.note, cp.signed_at,
                )  # fmt: skip
                return cp

        return await self._run("cannot save checkpoint", save)

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        if size is None:
            sql, params = "SELECT * FROM checkpoints ORDER BY size DESC LIMIT 1", []
        else:
            sql, params = "SELECT * FROM checkpoints WHERE size = $1", [size]
        row = await self._run("cannot read checkpoints", lambda c: c.fetchrow(sql, *params))
        return None if row is None else _checkpoint(row)

    async def checkpoints(self, upto: int) -> list[StoredCheckpoint]:
        rows = await self._run(
            "cannot read checkpoints",
            lambda c: c.fetch("SELECT * FROM checkpoints WHERE size <= $1 ORDER BY size", upto),
        )
        return [_checkpoint(r) for r in rows]

    async def lead(self) -> bool:
        """Hold (or renew) the signer's lease on a connection of our own; False while
        another replica holds it or the database cannot be reached."""
        async with self._leading:
            for _ in range(2):  # a hold found lapsed is asked for again on a new connection
                held = self._leading_now
                try:
                    await self._hold()
                except _DB_ERRORS:
                    self._let_go()
                    if held:
                        continue
                break
            return self._leading_now

    def _let_go(self) -> None:
        """Drop the signer's connection (its hold goes with it); under ``_leading``."""
        if self._leader is not None:
            self._leader.terminate()
        self._leader, self._leading_now = None, False

    async def _hold(self) -> None:
        if self._closed:
            self._leading_now = False
            return
        if self._leader is None or self._leader.is_closed():
            self._leading_now = False
            lease = {"idle_in_transaction_session_timeout": str(int(LEASE_SECONDS * 1000))}
            self._leader = await _connect(self._url, self._timeout, _SETTINGS | lease)
        leader = self._leader
        if self._leading_now:
            # Still ours? The server ends a session idle in its transaction past the
            # lease (and a restart ends it too); this statement renews it.
            await leader.fetchval("SELECT 1", timeout=self._timeout)
            return
        if not leader.is_in_transaction():
            await leader.execute("BEGIN")
        got = await leader.fetchval(
            "SELECT pg_try_advisory_xact_lock($1)", _SIGNER_LOCK, timeout=self._timeout
        )
        if not got:
            await leader.execute("ROLLBACK")  # not left idle in a transaction for nothing
        self._leading_now = bool(got)
        if got and (self._renewer is None or self._renewer.done()):
            self._renewer = asyncio.ensure_future(self._renew())

    async def _renew(self) -> None:
        """Renew the lease while this process runs, a third of a lease apart, whatever
        the checkpoint interval: only a process that stops (or a lost connection) loses
        it. A renewal that fails ends the hold; the next :meth:`lead` asks again."""
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            async with self._leading:
                leader = self._leader
                if self._closed or not self._leading_now or leader is None:
                    return
                try:
                    await leader.fetchval("SELECT 1", timeout=self._timeout)
                except _DB_ERRORS:
                    self._let_go()
                    return
