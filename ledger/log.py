"""The ledger service: group-committed signed appends, checkpoints and proofs.

:class:`Ledger` is what the gateway and the CLI hold. ``await append(draft)``
returns only when the record is durable. Appends that arrive while a
transaction is in flight wait in a bounded queue and go into the next
transaction together: one fsync for all of them, so throughput grows with
concurrency. The store's transaction decides where a batch goes
(:meth:`LedgerStore.sequence`): a batch is sealed on the head that transaction
finds, or, pipelined, signed ahead on the head the previous batch will leave
and written only if that is the head the transaction finds. The index and the
chain always come from the store.

Checkpoints are signed every ``checkpoint_every`` records, every
``checkpoint_interval`` seconds while records arrive, and on demand. Before
signing, the new root is proved consistent with the latest signed checkpoint
from the stored nodes: the log never signs two inconsistent checkpoints.

A new, empty log starts with a ``key`` record that names its signing key, and
rotating the key appends a ``key`` record, signed by the old key, that names
the new one.

Example::

    async with Ledger(SQLiteStore(path), signer) as log:
        rec = await log.append(Draft("halt", {"scope": "all"}))
        note = (await log.checkpoint()).note
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.errors import (
    CheckpointError,
    ClaimedError,
    LedgerClosedError,
    LedgerError,
    NotFoundError,
    ProofError,
    RecordError,
    StoreConflictError,
)
from ledger.merkle import (
    Frontier,
    consistency_ranges,
    fold_nodes,
    fold_range,
    inclusion_ranges,
    plan_nodes,
    verify_consistency,
)
from ledger.note import NoteSigner
from ledger.record import Draft, Record, format_time, parse_time, seal, utc_now
from ledger.store import Batch, Head, LedgerStore, StoredCheckpoint

__all__ = ["ConsistencyProof", "InclusionProof", "Ledger", "LedgerConfig"]

_INLINE_SEAL = 4  # batches this small are sealed on the event loop (about 40 µs a record)


@dataclass(frozen=True)
class LedgerConfig:
    """Tunables, with limits as defaults."""

    checkpoint_every: int = 1000  # records; 0 turns count-triggered checkpoints off
    checkpoint_interval: float = 1.0  # seconds; 0 turns timed checkpoints off
    max_batch: int = 1024  # records per transaction
    max_pending: int = 65_536  # appends waiting; beyond this append() waits for room
    checkpoint_on_close: bool = True  # sign the final size when closing
    # A process that is not the elected signer waits this long for one to sign.
    follow_timeout: float = 3.0

    def __post_init__(self) -> None:
        if self.checkpoint_every < 0 or self.checkpoint_interval < 0:
            raise ValueError("checkpoint triggers must be >= 0")
        if not 1 <= self.max_batch <= 65_536 or self.max_pending < 1:
            raise ValueError("max_batch must be in 1..65536 and max_pending >= 1")


@dataclass(frozen=True)
class InclusionProof:
    index: int
    tree_size: int
    leaf: bytes
    leaf_hash: bytes
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class ConsistencyProof:
    old_size: int
    tree_size: int
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class _Built:
    """A sealed batch and the head it was sealed on."""

    base: Head
    batch: Batch
    results: list[Record | Exception]  # one per live item, in order
    signer: NoteSigner  # the key after this batch
    rotated: bool


@dataclass
class _Pending:
    draft: Draft
    future: asyncio.Future[Record]
    new_signer: NoteSigner | None = None


class Ledger:
    """Appends, checkpoints and proofs over one :class:`LedgerStore`."""

    def __init__(
        self,
        store: LedgerStore,
        signer: NoteSigner,
        *,
        salt: bytes | None = None,
        config: LedgerConfig | None = None,
    ) -> None:
        self._store = store
        self._signer = signer
        self._salt = salt
        self._config = config or LedgerConfig()
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(self._config.max_pending)
        self._writer: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._checkpoint_lock = asyncio.Lock()
        self._last_checkpoint_size = 0
        self._closed = False

    @property
    def origin(self) -> str:
        return self._signer.name

    @property
    def signer(self) -> NoteSigner:
        return self._signer

    @property
    def store(self) -> LedgerStore:
        return self._store

    @property
    def accepting(self) -> bool:
        """Whether appends are taken (open, and its writer alive)."""
        return not self._closed and self._writer is not None and not self._writer.done()

    async def __aenter__(self) -> Ledger:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the store, write the genesis key record if the log is new, start writing."""
        await self._store.open()
        head, _ = await self._store.snapshot()
        if head.key_id and head.key_id != self._signer.key_id:
            await self._store.close()
            raise StoreConflictError(
                f"the log's active key is {head.key_id}, not this key ({self._signer.key_id}); "
                "use the current key (keys rotate through the ledger only)"
            )
        latest = await self._store.checkpoint()
        self._last_checkpoint_size = latest.size if latest else 0
        self._writer = asyncio.create_task(self._write_loop(), name="ledger-writer")
        if self._config.checkpoint_interval:
            self._ticker = asyncio.create_task(self._tick_loop(), name="ledger-checkpoints")
        if head.size == 0:
            loop = asyncio.get_running_loop()
            # One genesis even when several replicas start on one new store together.
            genesis = Draft("key", self._key_body(self._signer, "genesis"), claims=("genesis",))
            try:
                await self._submit(_Pending(genesis, loop.create_future()))
            except ClaimedError:
                pass  # another process wrote it
            except BaseException:
                await self.close()  # nothing half-started is left running
                raise

    async def close(self) -> None:
        """Finish queued appends, sign a final checkpoint, close the store."""
        if self._closed:
            return
        self._closed = True
        if self._ticker:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._writer:
            if self._writer.done():
                self._fail_queued()  # the writer died: nobody will take these
            await self._queue.join()
            self._writer.cancel()
            # A writer that died has already failed its callers (LedgerClosedError).
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._writer
            if self._config.checkpoint_on_close:
                with contextlib.suppress(LedgerError):
                    await self._sign()
        await self._store.close()

    def _fail_queued(self) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(LedgerClosedError("the ledger writer stopped"))
            self._queue.task_done()

    # -- appends -------------------------------------------------------------

    def _key_body(self, signer: NoteSigner, reason: str) -> dict[str, Any]:
        return {"key": signer.verifier_key, "key_id": signer.key_id, "reason": reason}

    async def append(self, draft: Draft) -> Record:
        """Seal and store one record; return it once it is durable."""
        if draft.kind == "key":
            raise RecordError("key records are written by the ledger itself (rotate_key)")
        # Canonicalising happens in the sealing thread, off the event loop; a body
        # that has no RFC 8785 form fails this append alone.
        return await self._submit(_Pending(draft, asyncio.get_running_loop().create_future()))

    async def append_many(self, drafts: Sequence[Draft]) -> list[Record]:
        return list(await asyncio.gather(*(self.append(d) for d in drafts)))

    async def rotate_key(self, new_signer: NoteSigner, reason: str = "rotation") -> Record:
        """Append a ``key`` record signed by the current key naming ``new_signer``;
        every record after it is signed by the new key."""
        if new_signer.name != self._signer.name:
            raise ValueError("a rotated key must keep the log's name (its origin)")
        draft = Draft("key", self._key_body(new_signer, reason))
        loop = asyncio.get_running_loop()
        return await self._submit(_Pending(draft, loop.create_future(), new_signer))

    async def _submit(self, item: _Pending) -> Record:
        if self._closed or self._writer is None or self._writer.done():
            raise LedgerClosedError("the ledger is not accepting appends")
        if self._queue.full():
            await self._queue.put(item)  # back-pressure: wait for room
        else:
            self._queue.put_nowait(item)
        return await item.future

    async def _collect(self) -> list[_Pending]:
        items = [await self._queue.get()]
        # Let writers woken by the last commit enqueue before taking the batch:
        # without this, batches shrink to whoever happened to be first.
        seen = -1
        while self._queue.qsize() != seen and self._queue.qsize() < self._config.max_batch:
            seen = self._queue.qsize()
            await asyncio.sleep(0)
        while len(items) < self._config.max_batch and not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    async def _write_loop(self) -> None:
        """Pipeline: sign batch k+1 on the head batch k will leave while k is written.

        The store's transaction still decides: a batch signed on a head that did
        not come to be (the previous commit failed, another process appended) is
        thrown away and sealed again inside the transaction.
        """
        inflight: asyncio.Task[_Built | None] | None = None
        predicted: _Built | None = None
        try:
            while True:
                items = await self._collect()
                live = [i for i in items if not i.future.done()]  # callers may have given up
                if predicted is None and inflight is not None:
                    predicted, inflight = await inflight, None  # sealed in its transaction
                built = None
                rotating = any(i.new_signer for i in live)
                if predicted is not None and not rotating and not predicted.rotated:
                    base = predicted.batch
                    nothing: frozenset[str] = frozenset()
                    args = (live, base.head, base.frontier.copy(), self._signer, nothing)
                    try:
                        # A few records seal faster than a hop to a thread and back.
                        if len(live) <= _INLINE_SEAL:
                            built = self._build(*args)
                        else:
                            built = await asyncio.to_thread(self._build, *args)
                    except Exception:  # the transaction will seal them again, and decide
                        built = None
                if inflight is not None:
                    await inflight
                inflight = asyncio.create_task(self._commit(items, live, built))
                predicted = built
        except Exception:
            self._fail_queued()  # a bug here must not leave callers waiting forever
            raise
        finally:
            if inflight is not None:
                await inflight

    def _build(
        self,
        live: list[_Pending],
        head: Head,
        frontier: Frontier,
        signer: NoteSigner,
        taken: frozenset[str],
    ) -> _Built:
        """Seal ``live`` after ``head``: CPU only, safe to run off the event loop.

        A draft whose claims are in ``taken``, or taken by an earlier draft of the
        batch, is left out and fails with :class:`ClaimedError`."""
        if head.key_id and head.key_id != signer.key_id:
            raise StoreConflictError(
                f"the log's key changed to {head.key_id} in another process; restart"
            )
        now = utc_now()
        if head.last_time and parse_time(head.last_time) > now:
            now = parse_time(head.last_time)  # the clock stepped back: never back-date
        when = format_time(now)  # one time for the whole batch: it commits as one
        prev = head.last_leaf
        records: list[Record] = []
        nodes: list[tuple[int, int, bytes]] = []
        results: list[Record | Exception] = []
        claims: list[tuple[str, int]] = []
        claimed: set[str] = set(taken)
        checked: set[str] = set()
        rotated = False
        for item in live:
            draft = item.draft
            if draft.claims or draft.unclaimed:
                keys = (*draft.claims, *draft.unclaimed)
                checked.update(keys)
                clash = next((k for k in keys if k in claimed), None)
                if clash is not None or len(set(draft.claims)) != len(draft.claims):
                    results.append(ClaimedError(clash or draft.claims[0]))
                    continue
            try:
                rec = seal(
                    item.draft,
                    index=head.size + len(records),
                    prev=prev,
                    time=when,
                    signer=signer,
                    salt=self._salt,
                )
            except (RecordError, ValueError) as e:
                results.append(e)
                continue
            results.append(rec)
            claims.extend((k, rec.index) for k in draft.claims)
            claimed.update(draft.claims)
            records.append(rec)
            nodes.extend(frontier.append(rec.leaf_hash))
            prev = rec.leaf_hash
            if item.new_signer is not None:
                signer, rotated = item.new_signer, True
        new_head = Head(head.size + len(records), prev, when, signer.key_id)
        batch = Batch(records, nodes, new_head, frontier, claims, frozenset(checked))
        return _Built(head, batch, results, signer, rotated)

    async def _commit(
        self, items: list[_Pending], live: list[_Pending], built: _Built | None
    ) -> _Built | None:
        """Write one batch; resolve its callers; return what was committed."""
        try:
            if not live:
                return None
            done = built

            def in_transaction(head: Head, frontier: Frontier, taken: frozenset[str]) -> Batch:
                # Called only when there is no pre-sealed batch, it does not start at
                # the head the transaction found, or a key it claims is taken.
                nonlocal done
                done = self._build(live, head, frontier, self._signer, taken)
                return done.batch

            try:
                batch = await self._store.sequence(
                    in_transaction, prebuilt=built.batch if built is not None else None
                )
            except Exception as e:
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(e)
                return None
            assert done is not None
            self._signer = done.signer
            for item, result in zip(live, done.results, strict=True):
                if item.future.done():
                    continue
                if isinstance(result, Exception):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
            every = self._config.checkpoint_every
            if every and batch.head.size - self._last_checkpoint_size >= every:
                # A failed checkpoint must not stop appends; the next trigger retries.
                with contextlib.suppress(Exception):
                    await self._sign()
            return done
        finally:
            for _ in items:
                self._queue.task_done()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.checkpoint_interval)
            with contextlib.suppress(Exception):  # retried at the next tick
                await self._sign()

    # -- checkpoints and proofs ------------------------------------------------

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint:
        """The signed checkpoint for the current size (signing it if needed), or
        the stored one for ``size``.

        Where several processes share the store, only the elected one signs
        (:meth:`LedgerStore.lead`); the others wait up to ``follow_timeout`` for a
        checkpoint that covers the size they saw, then answer with the latest."""
        if size is not None:
            found = await self._store.checkpoint(size)
            if found is None:
                raise NotFoundError(f"no checkpoint was signed for size {size}")
            return found
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._config.follow_timeout
        wanted = 0
        while True:
            signed, latest, size_now = await self._sign()
            if signed is not None:
                return signed
            wanted = wanted or size_now
            if latest is not None and (latest.size >= wanted or loop.time() >= give_up):
                return latest
            if loop.time() >= give_up:
                raise NotFoundError("no checkpoint has been signed yet; try again shortly")
            await asyncio.sleep(0.05)

    async def _sign(self) -> tuple[StoredCheckpoint | None, StoredCheckpoint | None, int]:
        """Sign the current size if this process is the signer: (the checkpoint for the
        current size or None, the latest stored, the current size)."""
        async with self._checkpoint_lock:
            head, frontier = await self._store.snapshot()
            if head.size == 0:
                raise NotFoundError("the log is empty; there is nothing to checkpoint")
            latest = await self._store.checkpoint()
            if latest is not None and latest.size >= head.size:
                self._last_checkpoint_size = latest.size
                return latest, latest, head.size
            if not await self._store.lead():
                return None, latest, head.size
            if head.key_id and head.key_id != self._signer.key_id:
                raise StoreConflictError("the log's key changed in another process; restart")
            root = frontier.root()
            if latest is not None:
                proof = await self._prove_consistency(latest.size, head.size)
                try:
                    verify_consistency(latest.size, head.size, proof, latest.root, root)
                except ProofError as e:
                    raise CheckpointError(
                        f"refusing to sign size {head.size}: not consistent with the "
                        f"checkpoint for size {latest.size} ({e})"
                    ) from e
            note = sign_checkpoint(Checkpoint(self.origin, head.size, root), self._signer)
            kept = await self._store.save_checkpoint(
                StoredCheckpoint(head.size, root, note, format_time(utc_now()))
            )
            self._last_checkpoint_size = kept.size
            return kept, kept, head.size

    async def _hashes(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Hashes of leaf ranges, from one read of the stored nodes."""
        plan, wanted = plan_nodes(ranges)
        return fold_nodes(plan, await self._store.nodes(wanted))

    async def _prove_consistency(self, old: int, new: int) -> list[bytes]:
        return await self._hashes(consistency_ranges(old, new))

    async def _proof_size(self, size: int | None) -> int:
        if size is not None:
            head, _ = await self._store.snapshot()
            if not 0 <= size <= head.size:
                raise NotFoundError(f"tree size {size} is beyond the log's size {head.size}")
            return size
        return (await self.checkpoint()).size

    async def inclusion_proof(self, index: int, size: int | None = None) -> InclusionProof:
        """Proof that record ``index`` is in the tree of ``size`` (default: the
        current signed checkpoint's size)."""
        tree_size = await self._proof_size(size)
        if not 0 <= index < tree_size:
            raise NotFoundError(f"index {index} is not in a tree of size {tree_size}")
        (leaf,) = await self._store.envelopes(index, index + 1)
        *proof, leaf_hash = await self._hashes(
            [*inclusion_ranges(index, tree_size), (index, index + 1)]
        )
        return InclusionProof(index, tree_size, leaf, leaf_hash, tuple(proof))

    async def consistency_proof(self, old_size: int, size: int | None = None) -> ConsistencyProof:
        tree_size = await self._proof_size(size)
        if not 1 <= old_size <= tree_size:
            raise NotFoundError(f"old size {old_size} is not within 1..{tree_size}")
        proof = await self._prove_consistency(old_size, tree_size)
        return ConsistencyProof(old_size, tree_size, tuple(proof))

    async def root(self, size: int) -> bytes:
        """The Merkle root of the first ``size`` records."""
        return (await self._hashes([(0, size)]))[0] if size else fold_range([])
