"""The ``LedgerStore`` seam: where records, Merkle nodes and checkpoints live.

The store is the sequencer. :meth:`LedgerStore.sequence` runs one transaction
that reads the log head, lets the caller seal a batch of records after it
(index, previous leaf hash, Merkle frontier), writes the records, the new
complete Merkle nodes and the new head, and commits durably. Two writers, in
one process or many, can therefore never assign the same index or fork the
chain; in-process caches (the frontier) are checked against the head inside
that transaction.

The same transaction checks the batch's claims (:attr:`ledger.record.Draft.claims`)
against every claim stored before: when one is taken, ``build`` is called again
with the taken keys, and leaves out the records that needed them.

Stores: :class:`ledger.sqlite.SQLiteStore` (embedded default) and
:class:`ledger.postgres.PostgresStore` (many replicas on one PostgreSQL).

Example::

    async with SQLiteStore(path) as store:
        batch = await store.sequence(build)   # build(head, frontier, taken) -> Batch
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple

from ledger.errors import StoreCorruptError
from ledger.merkle import Frontier, NodeId
from ledger.record import ZERO_HASH, Record

__all__ = ["Batch", "Entry", "Head", "LedgerStore", "RecordQuery", "StoredCheckpoint"]


@dataclass(frozen=True)
class Head:
    """The log head: everything an append must know about what came before."""

    size: int = 0
    last_leaf: bytes = ZERO_HASH
    last_time: str = ""
    key_id: str = ""  # the key that must sign the next record ("" before the first)


@dataclass(frozen=True)
class Batch:
    """What a sequencer callback hands back to be written in one transaction."""

    records: Sequence[Record]
    nodes: Sequence[tuple[int, int, bytes]]
    head: Head
    frontier: Frontier
    claims: Sequence[tuple[str, int]] = ()  # (key, index of the record that takes it)
    checked: frozenset[str] = frozenset()  # every key the build assumed free

    def starts_at(self, head: Head) -> bool:
        """Whether this batch was sealed right after ``head`` (same size, same last leaf)."""
        first = self.records[0] if self.records else None
        return first is not None and first.index == head.size and first.prev == head.last_leaf


@dataclass(frozen=True)
class StoredCheckpoint:
    size: int
    root: bytes
    note: str
    signed_at: str


@dataclass(frozen=True)
class RecordQuery:
    """Auditor filters; all are ANDed. Times are RFC 3339 strings in the records' form."""

    start: int = 0
    end: int | None = None  # exclusive
    since: str | None = None  # inclusive
    until: str | None = None  # exclusive
    kind: str | None = None
    actor: str | None = None
    target: str | None = None
    decision_id: str | None = None
    trace_id: str | None = None
    limit: int = 1000

    def __post_init__(self) -> None:
        if self.start < 0 or (self.end is not None and self.end < self.start):
            raise ValueError("index range must satisfy 0 <= start <= end")
        if not 1 <= self.limit <= 100_000:
            raise ValueError("limit must be between 1 and 100000")


def envelopes_from(rows: Iterable[Sequence[Any]], first: int) -> list[bytes]:
    """The envelopes of ``(index, envelope)`` rows read in index order from ``first``; a
    gap is :class:`StoreCorruptError` naming the first record missing."""
    return [entry.envelope for entry in entries_from(((i, "", "", e) for i, e in rows), first)]


class Entry(NamedTuple):
    """A stored record as :meth:`LedgerStore.entries_after` gives it: two of its indexed
    columns, and its envelope unopened."""

    kind: str
    decision_id: str
    envelope: bytes


def entries_from(rows: Iterable[Sequence[Any]], first: int) -> list[Entry]:
    """The entries of ``(index, kind, decision id, envelope)`` rows read in index order
    from ``first``; a gap is :class:`StoreCorruptError` naming the first record missing."""
    out = []
    for offset, (idx, kind, decision_id, envelope) in enumerate(rows):
        if idx != first + offset:
            raise StoreCorruptError(f"record {first + offset} is missing from the store")
        out.append(Entry(str(kind), str(decision_id), bytes(envelope)))
    return out


# build(head, frontier, taken): ``taken`` holds keys found claimed already.
def frontier_from(size: int, nodes: Mapping[NodeId, bytes]) -> Frontier:
    """The frontier of a tree of ``size`` from stored nodes (:meth:`Frontier.ids`)."""
    ids = Frontier.ids(size)
    if any(i not in nodes for i in ids):
        raise StoreCorruptError(f"Merkle nodes for the frontier of size {size} are missing")
    return Frontier(size, [nodes[i] for i in ids])


BuildFn = Callable[[Head, Frontier, frozenset[str]], Batch]


class LedgerStore(abc.ABC):
    """Durable storage for one log. Every method may raise :class:`StoreError`."""

    shared = False  # whether other processes append to it while we run (replicas)
    # Records below this index may lack their claims: they were written before the store
    # kept claims (an upgraded SQLite ledger). Set by open().
    claims_from = 0

    async def __aenter__(self) -> LedgerStore:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, create or check the schema."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def sequence(self, build: BuildFn, *, prebuilt: Batch | None = None) -> Batch:
        """Append atomically after the current head; return only once durable.

        ``build`` runs inside the transaction, off the event loop, with the head
        and a private copy of the frontier at that head. Whatever it raises
        aborts the transaction and propagates. ``prebuilt`` is a batch sealed
        in advance: it is written as it is when it starts at the head the
        transaction finds (its ``records[0].prev`` and index match) and none of
        its ``checked`` keys is taken, and ``build`` is called only otherwise.
        """

    async def lead(self) -> bool:
        """Whether this process is the log's checkpoint signer now (taking the role if
        it is free). A store only one process writes always says yes."""
        return True

    @abc.abstractmethod
    async def check_writable(self) -> None:
        """Raise :class:`StoreError` unless an append could be written now (health checks)."""

    @abc.abstractmethod
    async def snapshot(self) -> tuple[Head, Frontier]:
        """The head and its frontier, read consistently."""

    @abc.abstractmethod
    async def nodes(self, ids: Collection[NodeId]) -> dict[NodeId, bytes]:
        """Complete-subtree hashes by id; ids not stored are absent from the result."""

    @abc.abstractmethod
    async def envelopes(self, start: int, end: int) -> list[bytes]:
        """The stored envelope bytes of records ``[start, end)``, in order."""

    @abc.abstractmethod
    async def query(self, q: RecordQuery, *, after: int | None = None) -> list[Record]:
        """Records matching ``q`` with index greater than ``after``, ascending."""

    @abc.abstractmethod
    async def entries_after(self, after: int, limit: int) -> list[Entry]:
        """The records after index ``after`` (-1: from the first), at most ``limit``, in
        order, each as its kind, its decision id and its envelope bytes: for a reader that
        opens only some of them (a replica's catch-up passes over the records it wrote
        itself, and the outcomes of decisions it does not hold)."""

    @abc.abstractmethod
    async def claimant(self, key: str) -> int | None:
        """The index of the record that claimed ``key``, or None if none has."""

    @abc.abstractmethod
    async def save_checkpoint(self, cp: StoredCheckpoint) -> StoredCheckpoint:
        """Keep a signed checkpoint; return the one kept for that size.

        Refuses (:class:`CheckpointError`) a different root for a size already
        signed, or a size smaller than the latest.
        """

    @abc.abstractmethod
    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint | None:
        """The checkpoint for ``size``, or the latest when ``size`` is None."""

    @abc.abstractmethod
    async def checkpoints(self, upto: int) -> list[StoredCheckpoint]:
        """Every checkpoint with size <= ``upto``, ascending."""
