"""What only the PostgreSQL store has: migrations, the elected signer, a server that goes away.

The behaviours both stores share are in test_log.py (parametrized over both).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from postgres_server import PostgresServer

from ledger import DataDir, Draft, LedgerConfig
from ledger.errors import StoreError
from ledger.postgres import SCHEMA_VERSION, PostgresStore, migrate, redact
from ledger.store import RecordQuery

QUIET = LedgerConfig(checkpoint_interval=0, checkpoint_every=0)


async def test_migrate_creates_the_schema_once_and_a_store_needs_it(postgres_url: str):
    with pytest.raises(StoreError, match="run: govgate db migrate"):
        await PostgresStore(postgres_url).open()
    said: list[int] = []
    assert await migrate(postgres_url, progress=lambda v, _: said.append(v)) == [SCHEMA_VERSION]
    assert said == [SCHEMA_VERSION]
    assert await asyncio.gather(migrate(postgres_url), migrate(postgres_url)) == [[], []]
    async with PostgresStore(postgres_url) as store:
        head, _ = await store.snapshot()
        assert head.size == 0


async def test_a_newer_schema_is_refused(postgres_url: str):
    await migrate(postgres_url)
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(
            "INSERT INTO govgate_schema (version, description) VALUES ($1, 'from the future')",
            SCHEMA_VERSION + 1,
        )
    finally:
        await conn.close()
    with pytest.raises(StoreError, match="newer than this govgate understands"):
        await PostgresStore(postgres_url).open()
    with pytest.raises(StoreError, match="upgrade govgate"):
        await migrate(postgres_url)


async def test_durability_is_forced_on_the_stores_connections(postgres_url: str):
    await migrate(postgres_url)
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f"ALTER DATABASE {postgres_url.rsplit('/', 1)[1]} "
                           "SET synchronous_commit = off")  # fmt: skip
    finally:
        await conn.close()
    store = PostgresStore(postgres_url)
    async with store:
        setting = await store._run("probe", lambda c: c.fetchval("SHOW synchronous_commit"))
    assert setting == "on"


def test_passwords_never_show_in_urls_or_errors():
    assert redact("postgresql://gg:s3cret@db:5432/gg") == "postgresql://gg:***@db:5432/gg"
    assert redact("postgresql://gg@db/gg") == "postgresql://gg@db/gg"
    assert (redact("postgresql://gg@db/gg?sslmode=require&password=hunter2&x=1")
            == "postgresql://gg@db/gg?sslmode=require&password=***&x=1")  # fmt: skip
    assert "hunter2" not in redact("postgresql://gg@db/gg?PASSWORD=hunter2")
    assert "s3" not in redact("postgresql://gg:pw@db/gg?sslpassword=s3")
    assert "s3cret" not in repr(PostgresStore("postgresql://gg:s3cret@db/gg"))
    with pytest.raises(StoreError, match="postgresql://"):
        PostgresStore("mysql://db/gg")


async def test_one_signer_at_a_time_and_a_successor_when_it_goes(postgres_url: str):
    await migrate(postgres_url)
    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    async with first, second:
        assert await first.lead()
        assert await first.lead()  # still ours
        assert not await second.lead()
    async with PostgresStore(postgres_url) as third:  # first's connection closed: lock free
        assert await third.lead()


async def test_a_signer_that_stops_renewing_loses_its_lease(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    """A signer whose process is stopped (SIGSTOP, a frozen VM) keeps its connection
    open: it must still lose the signer's hold once it has not renewed it for the lease,
    so that checkpoints go on being signed; one that renews keeps it."""
    monkeypatch.setattr("ledger.postgres.LEASE_SECONDS", 1.0)
    await migrate(postgres_url)
    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    async with first, second:
        assert await first.lead()
        assert not await second.lead()
        assert first._renewer is not None
        first._renewer.cancel()  # first is "frozen" (SIGSTOP): it renews nothing from now on
        await asyncio.sleep(1.6)
        assert await second.lead()  # the server ended first's session: its hold lapsed
        for _ in range(3):  # second renews within the lease each time: it stays the signer
            await asyncio.sleep(0.6)
            assert await second.lead()
            assert not await first.lead()  # back, on a new connection, but not the signer
    async with PostgresStore(postgres_url) as third:  # both closed: the hold is free
        assert await third.lead()


async def test_a_running_signer_keeps_its_lease_without_being_asked(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
):
    """Whatever the checkpoint interval (timed checkpoints off here: nobody calls lead()
    again), a signer that runs renews its lease by itself."""
    monkeypatch.setattr("ledger.postgres.LEASE_SECONDS", 1.0)
    await migrate(postgres_url)
    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    async with first, second:
        assert await first.lead()
        await asyncio.sleep(2.5)  # two and a half leases
        assert not await second.lead()
        assert await first.lead()


async def test_a_store_closed_while_it_asks_for_the_hold_keeps_nothing(postgres_url: str):
    """close() while a lead() is still connecting: that lead() must not take the hold on
    the closed store (its renewer would then keep it, and no replica could sign)."""
    await migrate(postgres_url)
    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    async with second:
        await first.open()
        asking = asyncio.create_task(first.lead())
        await asyncio.sleep(0)  # it is connecting its own connection now
        await first.close()  # after that lead(): whatever it took, the close lets go
        await asking
        assert first._renewer is None
        assert first._leader is None
        assert await second.lead()  # at once: nobody holds it


async def test_an_idle_signer_keeps_its_lease_through_its_ticks(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A ledger whose signer has nothing new to sign for longer than a lease stays the
    signer (its store renews the lease), rather than losing the hold every lease."""
    monkeypatch.setattr("ledger.postgres.LEASE_SECONDS", 1.0)
    await migrate(postgres_url)
    data = DataDir(tmp_path / "data", postgres_url)
    data.generate_key("test.example/log")
    config = LedgerConfig(checkpoint_interval=0.2, checkpoint_every=0)
    async with data.open_ledger(config) as log, PostgresStore(postgres_url) as other:
        await log.append(Draft("note", {"n": 1}))
        await log.checkpoint()
        await asyncio.sleep(1.8)  # idle for longer than the lease
        assert not await other.lead()
        assert (await log.checkpoint()).size == 2


async def test_queries_take_any_uint64_index_as_sqlite_does(postgres_url: str, tmp_path: Path):
    """Indexes are uint64 on the wire (LedgerService.Query): past a bigint, a bound means
    "no bound" or "nothing there", not a database error."""
    await migrate(postgres_url)
    data = DataDir(tmp_path / "data", postgres_url)
    data.generate_key("test.example/log")
    async with data.open_ledger(QUIET) as log:
        await log.append(Draft("note", {"n": 1}))
        store = log.store
        everything = await store.query(RecordQuery(end=2**64 - 1))
        assert [r.index for r in everything] == [0, 1]
        assert await store.query(RecordQuery(start=2**63)) == []
        assert await store.query(RecordQuery(start=2**64 - 2, end=2**64 - 1)) == []
        assert await store.query(RecordQuery(), after=2**64) == []


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


async def test_appends_fail_closed_while_the_server_is_down_and_resume_after(
    own_server: PostgresServer, tmp_path: Path
):
    url = own_server.create_database("ledger")
    await migrate(url)
    data = DataDir(tmp_path / "data", url)
    data.generate_key("test.example/log")
    async with data.open_ledger(QUIET) as log:
        await log.append(Draft("note", {"n": 1}))
        await asyncio.to_thread(own_server.kill)
        with pytest.raises(StoreError):
            await log.store.check_writable()
        with pytest.raises(StoreError):
            await log.append(Draft("note", {"n": 2}))
        await asyncio.to_thread(own_server.restart)
        for _ in range(50):  # the pool replaces its dead connections by itself
            try:
                await log.store.check_writable()
                break
            except StoreError:
                await asyncio.sleep(0.1)
        rec = await log.append(Draft("note", {"n": 3}))
        head, _ = await log.store.snapshot()
    assert rec.index == 2  # genesis, n=1, n=3: the failed append left nothing behind
    assert head.size == 3
