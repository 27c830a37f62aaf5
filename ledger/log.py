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
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from ledger._workers import ScanPool
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
from ledger.record import (
    ZERO_HASH,
    Draft,
    Prepared,
    Record,
    format_time,
    parse_time,
    prepare,
    seal_chain,
    sealed_record,
    utc_now,
)
from ledger.store import Batch, Head, LedgerStore, StoredCheckpoint

__all__ = ["ConsistencyProof", "InclusionProof", "Ledger", "LedgerConfig"]

_INLINE_SEAL = 4  # chunks this small are sealed on the event loop (about 45 µs a record)
# Appends sealed together: half of those in flight (queued, sealed or being
# written), so that one chunk is sealed while the one before it is written,
# and at least this many. The committer writes every chunk that is ready in
# one transaction, up to ``max_batch`` records.
_MIN_CHUNK = 16
# Chunks at least this long are signed in the sealing process. For shorter ones
# the pipe's round trip costs more than the other core saves (16 writers made
# about 10% fewer appends/s through the process).
_PROCESS_MIN = 32

_log = logging.getLogger(__name__)
T = TypeVar("T")
_SEAL_TASK = "ledger.record:seal_chain_task"
_WORKER_DEADLINE = 2.0  # seconds a chunk may take in the worker, plus 1 ms a record
_START_DEADLINE = 10.0  # seconds the worker may take to start and answer


def _allowance(records: int) -> float:
    """Seconds the worker may take to answer a chain of ``records``."""
    return _WORKER_DEADLINE + records / 1000


class _SealProcess:
    """A worker process that signs chains of records (:func:`seal_chain_task`).

    Signing is the costly, strictly sequential part of an append (each record
    names the last one's hash). In a thread it holds up the interpreter lock for
    everything else the process does; in its own process it runs on the other
    core. Started on first use. If the process fails, sealing goes on in this
    process.

    Two ways to use it, never at once: :meth:`seal` asks and waits for the
    answer; :meth:`send` and :meth:`receive` (the writer's pipeline) hand it the
    next chain, continuing the last, before the answer to the last is read, so
    the process goes from one chain to the next without waiting. While chains
    are outstanding, :meth:`seal` declines (a transaction re-sealing a chunk
    then signs in its own thread).
    """

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._pool: ScanPool | None = None
        self._lock = threading.Lock()  # held by seal() for its round trip; send() waits
        # The watchdog's allowance for each chain sent and not yet answered, oldest first.
        self._outstanding: collections.deque[float] = collections.deque()
        self._deadline = 0.0  # monotonic time the answer is due by; 0: none awaited
        self._stop_watch = threading.Event()
        self._io: ThreadPoolExecutor | None = None  # see in_thread

    @property
    def ready(self) -> bool:
        """Whether :meth:`send` would use the process (started and not given up)."""
        return self._enabled and self._pool is not None

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run :meth:`send` or :meth:`receive` on the pipeline's own two threads (one
        sends while the other reads), not the event loop's default executor, which the
        application may keep busy."""
        if self._io is None:
            self._io = ThreadPoolExecutor(2, thread_name_prefix="ledger-seal")
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    def _watch(self, pool: ScanPool, stop: threading.Event) -> None:
        """Kill a worker that stops answering (stopped, swapped out, stuck): that ends the
        write or read blocked on its pipes, and sealing goes on in this process."""
        while not stop.wait(0.2):
            due = self._deadline
            if due and time.monotonic() > due:
                if pool.answered():
                    continue  # it has answered: only its reader is late (a busy process)
                pool.kill()
                return

    def seal(
        self,
        signer: NoteSigner,
        parts: list[tuple[bytes, bytes, bytes, str]],
        index: int,
        prev: bytes,
        when: str,
    ) -> list[tuple[bytes, bytes]] | None:
        """The chain's (envelope, leaf hash) pairs, or None: seal them here instead."""
        if not self._enabled or not self._lock.acquire(blocking=False):
            return None
        try:
            if not self._enabled or self._outstanding:  # closed, or the pipeline has it
                return None
            if self._pool is None:
                # It starts (imports) while this chunk is signed here: no first-use stall.
                self._launch()
                return None
            # remember=False: a round trip of its own, which the pipeline's next chain does
            # not continue (a transaction re-sealing a chunk between two sent chains).
            args = (signer.private_key_string(), parts, index, prev, when, False)
            chain: list[tuple[bytes, bytes]] = self._ask(args, _allowance(len(parts)))
            if len(chain) != len(parts):
                raise RuntimeError(f"{len(chain)} records sealed of {len(parts)}")
            return chain
        except Exception as e:
            self._give_up("failed", e)
            return None
        finally:
            self._lock.release()

    def send(
        self,
        signer: NoteSigner,
        parts: list[tuple[bytes, bytes, bytes, str]],
        index: int,
        prev: bytes | None,
        when: str,
    ) -> bool:
        """Hand the process a chain to seal, without waiting for it to be sealed;
        ``prev`` None continues the chain sent last. False: the process is not in use
        (the chain was not sent). Its answer comes from :meth:`receive`, in order.

        Blocks until the process has read the chain, that is until it is done with
        the one before: so at most one chain waits while another is being sealed."""
        with self._lock:
            pool = self._pool
            if not self._enabled or pool is None:
                return False
            within = _allowance(len(parts))
            if not self._outstanding:
                self._deadline = time.monotonic() + within
            self._outstanding.append(within)
        try:
            pool.submit((signer.private_key_string(), parts, index, prev, when))
        except Exception as e:
            self._give_up("failed", e)  # the answers outstanding fail with it
            return False
        return True

    def receive(self, count: int) -> list[tuple[bytes, bytes]] | None:
        """The answer to the oldest chain sent (``count`` records); None if the process
        failed, in which case it is not used again and every other answer is None."""
        pool = self._pool
        chain: list[tuple[bytes, bytes]] | None = None
        try:
            if pool is None or not self._enabled:
                raise RuntimeError("the sealing process is not running")
            chain = pool.result()
            if len(chain) != count:
                raise RuntimeError(f"{len(chain)} records sealed of {count}")
        except Exception as e:
            self._give_up("failed", e)
            chain = None
        finally:
            with self._lock:
                if self._outstanding:
                    self._outstanding.popleft()
                # The next chain's sealing starts about now: it is due a full allowance.
                self._deadline = (
                    time.monotonic() + self._outstanding[0] if self._outstanding else 0.0
                )
        return chain

    def start(self, signer: NoteSigner) -> None:
        """Start the worker now rather than at the first chunk it would sign, and wait
        until it answers: its start (about 0.3 s of imports) then stays out of the first
        burst of appends."""
        with self._lock:
            if not self._enabled or self._pool is not None:
                return
            try:
                self._launch()
                # An empty chain: the answer says it is up and has the key.
                args: tuple[Any, ...] = (signer.private_key_string(), [], 0, ZERO_HASH, "")
                if self._ask(args, _START_DEADLINE) != []:
                    raise RuntimeError("the sealing process answered an empty chain")
            except Exception as e:
                self._give_up("did not start", e)

    def _ask(self, args: tuple[Any, ...], within: float) -> Any:
        """The worker's answer to ``args``; the watchdog kills a worker that has not
        answered within ``within`` seconds (the read then fails)."""
        assert self._pool is not None
        self._deadline = time.monotonic() + within
        try:
            self._pool.submit(args)
            return self._pool.result()
        finally:
            self._deadline = 0.0

    def _give_up(self, what: str, e: Exception) -> None:
        """Stop using the worker for good: records are signed in this process from now on."""
        if self._enabled:  # not stopped by abort(), which says nothing
            _log.warning(
                "the sealing process %s (%s); sealing in this process", what, type(e).__name__
            )
        self._enabled = False
        self._stop(kill=True)

    def abort(self) -> None:
        """Stop the worker now, from any thread, without waiting for the call that holds it
        (a start the caller gave up on): that call's read fails and it lets go."""
        self._enabled = False
        pool = self._pool
        if pool is not None:
            pool.kill()

    def _launch(self) -> None:
        self._pool = ScanPool(1, _SEAL_TASK)
        self._stop_watch = threading.Event()
        args = (self._pool, self._stop_watch)
        threading.Thread(target=self._watch, args=args, daemon=True).start()

    def close(self) -> None:
        with self._lock:
            self._enabled = False
            self._stop(kill=True)  # it holds nothing: no need to wait for it to read EOF
        if self._io is not None:
            self._io.shutdown(wait=False)  # a call blocked on the pipes failed with the kill

    def _stop(self, *, kill: bool) -> None:
        self._stop_watch.set()
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.close(kill=kill)


@dataclass(frozen=True)
class LedgerConfig:
    """Tunables, with limits as defaults."""

    checkpoint_every: int = 1000  # records; 0 turns count-triggered checkpoints off
    checkpoint_interval: float = 1.0  # seconds; 0 turns timed checkpoints off
    max_batch: int = 1024  # records per transaction
    max_pending: int = 65_536  # appends waiting; beyond this append() waits for room
    checkpoint_on_close: bool = True  # sign the final size when closing
    # Sign in a worker process (on another core) rather than in a thread.
    seal_process: bool = True
    # Start that process with the ledger (a server) rather than at the first chunk
    # of _PROCESS_MIN appends (short jobs, tests: most never need it).
    seal_process_at_start: bool = False
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


@dataclass(frozen=True)
class _Plan:
    """What sealing a chunk after some head will do, before any signing: which drafts go
    in (claims), the key that signs each, the batch's time."""

    accepted: list[_Pending]
    signers: list[NoteSigner]
    results: list[Record | Exception | None]  # one per live item; None: to be sealed
    checked: frozenset[str]
    rotated: bool
    signer: NoteSigner  # the key after the chunk
    when: str

    def head_after(self, head: Head) -> Head:
        """The head the chunk leaves, but for its last leaf (known once it is signed)."""
        return Head(head.size + len(self.accepted), b"", self.when, self.signer.key_id)


@dataclass(frozen=True)
class _Ahead:
    """The head the chains handed to the sealing process will leave, their last leaf
    not yet known: the next chain continues them there."""

    head: Head
    signer: NoteSigner
    rotated = False  # chunks that rotate the key are never pipelined


@dataclass(frozen=True)
class _Ticket:
    """A chunk whose chain the sealing process is signing (``plan``), or, with ``plan``
    None, a chunk that only waits its turn behind such chunks."""

    chunk: _Chunk
    plan: _Plan | None
    head: Head  # the head it was planned after (last leaf unknown if it follows a ticket)
    base: _Built | None  # the batch it follows; None: the ticket before it


@dataclass(frozen=True)
class _Chunk:
    """Appends taken from the queue together, sealed ahead or (``built`` None) to be
    sealed in their transaction."""

    items: list[_Pending]  # every item taken, for the queue's accounting
    live: list[_Pending]  # those whose callers still wait
    built: _Built | None


def _joined(parts: list[_Built | None]) -> _Built:
    """Chunks sealed one after another, as one batch."""
    built = [p for p in parts if p is not None]
    assert built
    assert len(built) == len(parts)
    if len(built) == 1:
        return built[0]
    first, last = built[0], built[-1]
    batch = Batch(
        [r for b in built for r in b.batch.records],
        [n for b in built for n in b.batch.nodes],
        last.batch.head,
        last.batch.frontier,
        [c for b in built for c in b.batch.claims],
        frozenset().union(*(b.batch.checked for b in built)),
    )
    results = [r for b in built for r in b.results]
    return _Built(first.base, batch, results, last.signer, any(b.rotated for b in built))


@dataclass
class _Pending:
    draft: Prepared  # canonicalised by the caller: sealing is a chain, this is not
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
        self._seal_process = _SealProcess(self._config.seal_process)
        self._writer: asyncio.Task[None] | None = None
        # Between the sealer (in _write_loop) and the committer:
        self._sealed: collections.deque[_Chunk] = collections.deque()
        self._sealed_records = 0  # live appends in self._sealed
        self._holding: list[_Pending] = []  # taken from the queue, not yet in self._sealed
        self._wake_committer = asyncio.Event()
        self._caught_up = asyncio.Event()  # the committer took chunks, or has none left
        self._committing = 0  # live appends in the transaction being written
        self._committed: _Built | None = None  # what the last transaction wrote
        self._epoch = 0  # bumped when a transaction did not write what was sealed ahead
        # Between the sealer and the finisher: chunks the sealing process is signing.
        self._ahead: collections.deque[_Ticket] = collections.deque()
        self._ahead_built: _Built | None = None  # the last chunk the finisher read back
        self._wake_finisher = asyncio.Event()
        self._settle = asyncio.Event()  # the finisher handed a chunk on
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
        try:
            head, _ = await self._store.snapshot()
            if head.key_id and head.key_id != self._signer.key_id:
                raise StoreConflictError(
                    f"the log's active key is {head.key_id}, not this key "
                    f"({self._signer.key_id}); use the current key (keys rotate through the "
                    "ledger only)"
                )
            latest = await self._store.checkpoint()
        except BaseException:
            await self._store.close()  # its connection and threads with it
            raise
        self._last_checkpoint_size = latest.size if latest else 0
        if self._config.seal_process_at_start:
            try:
                await asyncio.to_thread(self._seal_process.start, self._signer)
            except BaseException:  # cancelled: leave no process behind, and do not wait
                self._seal_process.abort()
                try:
                    await asyncio.to_thread(self._seal_process.close)
                finally:
                    await self._store.close()
                raise
        self._writer = asyncio.create_task(self._write_loop(), name="ledger-writer")
        if self._config.checkpoint_interval:
            self._ticker = asyncio.create_task(self._tick_loop(), name="ledger-checkpoints")
        if head.size == 0:
            loop = asyncio.get_running_loop()
            # One genesis even when several replicas start on one new store together.
            genesis = Draft("key", self._key_body(self._signer, "genesis"), claims=("genesis",))
            try:
                await self._submit(_Pending(prepare(genesis), loop.create_future()))
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
        await asyncio.to_thread(self._seal_process.close)  # after any sealing in flight
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
        # Canonicalising here, not in the sealing thread, keeps it out of the chain
        # of records that must be sealed one after another (each names the last's
        # hash). A body that has no RFC 8785 form fails this append alone.
        prepared = prepare(draft, self._salt)
        return await self._submit(_Pending(prepared, asyncio.get_running_loop().create_future()))

    async def append_many(self, drafts: Sequence[Draft]) -> list[Record]:
        return list(await asyncio.gather(*(self.append(d) for d in drafts)))

    async def rotate_key(self, new_signer: NoteSigner, reason: str = "rotation") -> Record:
        """Append a ``key`` record signed by the current key naming ``new_signer``;
        every record after it is signed by the new key."""
        if new_signer.name != self._signer.name:
            raise ValueError("a rotated key must keep the log's name (its origin)")
        draft = prepare(Draft("key", self._key_body(new_signer, reason)))
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
        """The next chunk: half of the appends in flight (see ``_MIN_CHUNK``). What it
        takes is in ``self._holding`` from the moment it is taken."""
        items = self._holding = [await self._queue.get()]
        # Let writers woken by the last commit enqueue before taking the chunk:
        # without this, chunks shrink to whoever happened to be first.
        most = self._config.max_batch
        seen = -1
        while self._queue.qsize() != seen and self._queue.qsize() < most:
            seen = self._queue.qsize()
            await asyncio.sleep(0)
        in_flight = 1 + self._queue.qsize() + self._sealed_records + self._committing
        limit = min(max(_MIN_CHUNK, (in_flight + 1) // 2), most)
        while len(items) < limit and not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    async def _write_loop(self) -> None:
        """Seal chunks of queued appends one after another; a committer task writes them.

        Three stages run at once: callers preparing their next appends (event
        loop), sealing (records form a chain, so one chunk at a time), and the
        store's transaction (the store's thread). A chunk is sealed on the head
        the chunk before it will leave, before that one is written; the
        committer writes every chunk sealed meanwhile in one transaction.

        Chunks long enough go to the sealing process as soon as they are taken,
        each continuing the chain of the last (:meth:`_send_ahead`), and a
        finisher task reads the signed chains back in order: the process signs
        one chain after another without waiting for this process between them.

        The store's transaction still decides: chunks sealed on a head that did
        not come to be (a commit failed, another process appended, a claim was
        taken) are sealed again inside the transaction, and sealing waits for
        the committer to catch up before it predicts again.
        """
        committer = asyncio.create_task(self._commit_loop(), name="ledger-committer")
        finisher = asyncio.create_task(self._finish_loop(), name="ledger-finisher")
        stages = (committer, finisher)
        # The last chunk sealed ahead in this epoch, or handed to the sealing process.
        predicted: _Built | _Ahead | None = None
        epoch = self._epoch
        try:
            while True:
                items = await self._collect()
                live = [i for i in items if not i.future.done()]  # callers may have given up
                if not live:  # nothing to seal: the committer only accounts for them
                    self._hand_on(_Chunk(items, live, None))
                    continue
                if predicted is not None and epoch != self._epoch:
                    predicted = None  # a commit went otherwise than predicted
                pipelined = len(live) >= _PROCESS_MIN and not any(i.new_signer for i in live)
                if isinstance(predicted, _Ahead) and not (pipelined and self._seal_process.ready):
                    predicted = await self._settled(stages)  # its chain is needed here
                if predicted is not None and epoch != self._epoch:
                    predicted = None
                if predicted is None:
                    await self._until_committed(stages)
                    predicted, epoch = self._committed, self._epoch
                await self._until_room(stages)
                if predicted is None or predicted.rotated:
                    self._hand_on(_Chunk(items, live, None))  # sealed in its transaction
                    continue
                if pipelined and self._seal_process.ready:
                    ahead = await self._send_ahead(items, live, predicted)
                    if ahead is not None:
                        predicted = ahead
                        continue
                if isinstance(predicted, _Ahead):
                    # Not sent after all: the process failed, perhaps while this waited for
                    # room. Seal here, after the chains it held are read back (or failed).
                    predicted = await self._settled(stages)
                    if predicted is None or epoch != self._epoch:
                        predicted = None
                        self._hand_on(_Chunk(items, live, None))  # sealed in its transaction
                        continue
                base = predicted.batch
                args = (live, base.head, base.frontier.copy(), predicted.signer, frozenset[str]())
                built: _Built | None = None
                try:
                    # A few records seal faster than a hop to a thread and back.
                    if len(live) <= _INLINE_SEAL:
                        built = self._build(*args)
                    else:
                        built = await asyncio.to_thread(self._build, *args)
                except Exception:  # the transaction will seal them again, and decide
                    built = None
                self._hand_on(_Chunk(items, live, built))
                predicted = built
        finally:
            # Stopped by close() (nothing is left then), by a bug here, or by the
            # committer's or finisher's failure: nobody must be left waiting.
            for task in stages:
                task.cancel()
            for task in stages:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            while self._ahead:  # handed to the sealing process, not yet read back
                self._sealed.append(self._ahead.popleft().chunk)
            held, self._holding = self._holding, []
            self._sealed.append(_Chunk(held, held, None))  # taken, not yet handed on
            self._fail_sealed()
            self._fail_queued()

    def _hand_on(self, chunk: _Chunk) -> None:
        """Pass a chunk just taken on to the committer, behind any sealed ahead."""
        if self._ahead:
            self._ahead.append(_Ticket(chunk, None, Head(), None))
            self._wake_finisher.set()
        else:
            self._sealed.append(chunk)
            self._wake_committer.set()
        self._holding = []
        self._sealed_records += len(chunk.live)

    async def _send_ahead(
        self, items: list[_Pending], live: list[_Pending], predicted: _Built | _Ahead
    ) -> _Ahead | None:
        """Hand ``live`` to the sealing process, to be signed after ``predicted``; the head
        it will leave, or None if it was not sent (seal it here)."""
        head = predicted.head if isinstance(predicted, _Ahead) else predicted.batch.head
        try:
            plan = self._plan(live, head, predicted.signer, frozenset())
        except Exception:
            return None
        if plan.rotated or len(plan.accepted) < _PROCESS_MIN:
            return None
        # After a batch sealed here, from its last leaf; after chains sent, continuing them.
        base = predicted if isinstance(predicted, _Built) else None
        parts = [item.draft.parts for item in plan.accepted]
        prev = None if base is None else head.last_leaf
        sent = await self._seal_process.in_thread(
            self._seal_process.send, plan.signer, parts, head.size, prev, plan.when
        )
        if not sent:
            return None
        self._ahead.append(_Ticket(_Chunk(items, live, None), plan, head, base))
        self._holding = []
        self._sealed_records += len(live)
        self._wake_finisher.set()
        return _Ahead(plan.head_after(head), plan.signer)

    async def _finish_loop(self) -> None:
        """Read the chains signed ahead back, in order, and hand their chunks on."""
        try:
            while True:
                while not self._ahead:
                    self._wake_finisher.clear()
                    await self._wake_finisher.wait()
                ticket = self._ahead[0]
                chunk, plan = ticket.chunk, ticket.plan
                if plan is not None:
                    chain = await self._seal_process.in_thread(
                        self._seal_process.receive, len(plan.accepted)
                    )
                    base = ticket.base if ticket.base is not None else self._ahead_built
                    built = None
                    if (
                        chain is not None
                        and base is not None
                        and base.batch.head.size == ticket.head.size
                    ):
                        frontier = base.batch.frontier.copy()
                        built = self._finish(plan, chain, base.batch.head, frontier)
                    else:
                        self._epoch += 1  # the chain broke: predict again from what is written
                    chunk = _Chunk(chunk.items, chunk.live, built)
                    self._ahead_built = built
                self._ahead.popleft()
                self._sealed.append(chunk)
                self._wake_committer.set()
                self._settle.set()
        except Exception:
            if self._writer is not None:
                self._writer.cancel()  # its cleanup fails every caller still waiting
            raise

    async def _settled(self, stages: tuple[asyncio.Task[None], ...]) -> _Built | None:
        """Wait until every chain handed to the sealing process is read back; the last
        (None if one failed)."""
        while self._ahead:
            self._settle.clear()
            await self._wait_on(self._settle, stages)
        return self._ahead_built

    async def _until_committed(self, stages: tuple[asyncio.Task[None], ...]) -> None:
        """Wait until every chunk sealed so far is committed (or failed)."""
        while self._ahead or self._sealed or self._committing:
            self._caught_up.clear()
            await self._wait_on(self._caught_up, stages)

    async def _until_room(self, stages: tuple[asyncio.Task[None], ...]) -> None:
        """Bound what is sealed but not yet written to two transactions' worth."""
        while self._sealed_records >= 2 * self._config.max_batch:
            self._caught_up.clear()
            await self._wait_on(self._caught_up, stages)

    @staticmethod
    async def _wait_on(event: asyncio.Event, stages: tuple[asyncio.Task[None], ...]) -> None:
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait((waiter, *stages), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if any(task.done() for task in stages):
            raise LedgerError("the ledger's committer or finisher stopped")

    async def _commit_loop(self) -> None:
        """Write sealed chunks: every chunk waiting, in one transaction where they chain."""
        try:
            await self._commit_chunks()
        except Exception:
            if self._writer is not None:
                self._writer.cancel()  # its cleanup fails every caller still waiting
            raise

    async def _commit_chunks(self) -> None:
        while True:
            while not self._sealed:
                self._committing = 0
                self._caught_up.set()
                self._wake_committer.clear()
                await self._wake_committer.wait()
            group = [self._sealed.popleft()]
            if group[0].built is not None:
                while self._sealed and self._joins(group, self._sealed[0]):
                    group.append(self._sealed.popleft())
            self._committing = max(1, sum(len(c.live) for c in group))
            self._sealed_records -= sum(len(c.live) for c in group)
            self._caught_up.set()  # room for more
            await self._commit(group)

    def _joins(self, group: list[_Chunk], nxt: _Chunk) -> bool:
        """Whether ``nxt`` can go into the same transaction as ``group``: it was sealed
        right after the group's last chunk, within the batch size, and assumes free
        no key that the group takes."""
        last = group[-1].built
        if nxt.built is None or last is None or nxt.built.base != last.batch.head:
            return False
        if sum(len(c.live) for c in group) + len(nxt.live) > self._config.max_batch:
            return False
        checked = nxt.built.batch.checked
        if not checked:
            return True
        taken = {k for c in group if c.built is not None for k, _ in c.built.batch.claims}
        return taken.isdisjoint(checked)

    def _fail_sealed(self) -> None:
        while self._sealed:
            c = self._sealed.popleft()
            for item in c.live:
                if not item.future.done():
                    item.future.set_exception(LedgerClosedError("the ledger writer stopped"))
            for _ in c.items:
                self._queue.task_done()
        self._sealed_records = 0

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
        plan = self._plan(live, head, signer, taken)
        # The chain, in the sealing process when there is one.
        parts = [item.draft.parts for item in plan.accepted]
        chain = None
        if not plan.rotated and len(parts) >= _PROCESS_MIN:
            chain = self._seal_process.seal(
                plan.signer, parts, head.size, head.last_leaf, plan.when
            )
        if chain is None:
            chain = seal_chain(
                parts, plan.signers, index=head.size, prev=head.last_leaf, time=plan.when
            )
        return self._finish(plan, chain, head, frontier)

    @staticmethod
    def _plan(live: list[_Pending], head: Head, signer: NoteSigner, taken: frozenset[str]) -> _Plan:
        """The claims of ``live`` after ``head`` (which need not know its last leaf): which
        drafts go in, and the key that signs each."""
        if head.key_id and head.key_id != signer.key_id:
            raise StoreConflictError(
                f"the log's key changed to {head.key_id} in another process; restart"
            )
        now = utc_now()
        if head.last_time and parse_time(head.last_time) > now:
            now = parse_time(head.last_time)  # the clock stepped back: never back-date
        when = format_time(now)  # one time for the whole batch: it commits as one
        accepted: list[_Pending] = []
        signers: list[NoteSigner] = []
        results: list[Record | Exception | None] = []  # None: sealed below
        claimed: set[str] = set(taken)
        checked: set[str] = set()
        rotated = False
        for item in live:
            draft = item.draft.draft
            if draft.claims or draft.unclaimed:
                keys = (*draft.claims, *draft.unclaimed)
                checked.update(keys)
                clash = next((k for k in keys if k in claimed), None)
                if clash is not None or len(set(draft.claims)) != len(draft.claims):
                    results.append(ClaimedError(clash or draft.claims[0]))
                    continue
                claimed.update(draft.claims)
            results.append(None)
            accepted.append(item)
            signers.append(signer)
            if item.new_signer is not None:
                signer, rotated = item.new_signer, True
        return _Plan(accepted, signers, results, frozenset(checked), rotated, signer, when)

    @staticmethod
    def _finish(
        plan: _Plan, chain: list[tuple[bytes, bytes]], head: Head, frontier: Frontier
    ) -> _Built:
        """The records of ``plan``'s signed ``chain`` after ``head``, their Merkle nodes
        (``frontier``, at ``head``, is advanced) and their claims."""
        results = list(plan.results)
        records: list[Record] = []
        nodes: list[tuple[int, int, bytes]] = []
        claims: list[tuple[str, int]] = []
        prev = head.last_leaf
        pos = 0
        for k, result in enumerate(results):
            if result is not None:
                continue
            item, (envelope, leaf) = plan.accepted[pos], chain[pos]
            index = head.size + pos
            key_id = plan.signers[pos].key_id
            rec = sealed_record(
                item.draft, index=index, prev=prev, time=plan.when, key_id=key_id,
                envelope=envelope, leaf=leaf,
            )  # fmt: skip
            results[k] = rec
            records.append(rec)
            nodes.extend(frontier.append(leaf))
            claims.extend((key, index) for key in item.draft.draft.claims)
            prev = leaf
            pos += 1
        new_head = Head(head.size + len(records), prev, plan.when, plan.signer.key_id)
        batch = Batch(records, nodes, new_head, frontier, claims, plan.checked)
        done = [r for r in results if r is not None]
        return _Built(head, batch, done, plan.signer, plan.rotated)

    async def _commit(self, group: list[_Chunk]) -> None:
        """Write chunks in one transaction; resolve their callers."""
        live = [i for c in group for i in c.live]
        try:
            if not live:
                return
            built = _joined([c.built for c in group]) if group[0].built is not None else None
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
                self._epoch += 1  # nothing sealed after this chunk can be right
                self._committed = None
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(e)
                return
            assert done is not None
            if done is not built:
                self._epoch += 1
            self._committed = done
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
        finally:
            for item in live:  # only if something failed on the way: tell them
                if not item.future.done():
                    item.future.set_exception(LedgerClosedError("the ledger writer stopped"))
            for c in group:
                for _ in c.items:
                    self._queue.task_done()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.checkpoint_interval)
            try:
                await self._sign()
            except Exception:  # retried at the next tick; but a cancel (close()) stops it
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from None

    # -- checkpoints and proofs ------------------------------------------------

    async def checkpoint(self, size: int | None = None) -> StoredCheckpoint:
        """The signed checkpoint for the current size (signing it if needed), or
        the stored one for ``size``.

        Where several processes share the store, only the elected one signs
        (:meth:`LedgerStore.lead`); the others wait up to ``follow_timeout`` for a
        checkpoint that covers the size they saw, then answer with the latest."""
        if size is not None:
            head, _ = await self._store.snapshot()
            if not 0 <= size <= head.size:  # (and never a number too big for the store)
                raise NotFoundError(f"size {size} is beyond the log's size {head.size}")
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
            # The key of the head read above: a rotation committed while this awaits the
            # store below must not have an older size signed with the next key.
            signer = self._signer
            if head.key_id and head.key_id != signer.key_id:
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
            note = sign_checkpoint(Checkpoint(self.origin, head.size, root), signer)
            try:
                kept = await self._store.save_checkpoint(
                    StoredCheckpoint(head.size, root, note, format_time(utc_now()))
                )
            except CheckpointError:
                # Another process on the same file signed a larger size meanwhile (the
                # store checked it): that one covers what this one saw.
                newer = await self._store.checkpoint()
                if newer is None or newer.size <= head.size:
                    raise
                self._last_checkpoint_size = newer.size
                return newer, newer, head.size
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
