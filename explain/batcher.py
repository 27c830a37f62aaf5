"""Micro-batching: many concurrent ``await score(x)`` calls, few XGBoost calls.

Each XGBoost call has a fixed cost (building a DMatrix, walking the trees)
that a batch shares, so scoring 64 rows costs far less than 64 calls of one.
:class:`MicroBatcher` gathers the feature vectors that arrive within
``window`` seconds of the first one (or until ``max_batch`` have arrived),
scores them in one call on a dedicated worker thread (or, for a small batch
and a scorer with TreeSHAP tables, on the event loop itself: ``inline_rows``),
and resolves each caller's future with its own
:class:`~explain.explanation.Explanation`.

While the workers are busy, arrivals keep accumulating and go out as one
batch when a worker frees up. So at low load a call waits at most ``window``
before it is scored, and at high load batches grow by themselves and
throughput grows with them. Nothing here blocks the event loop for long.

Failures are per batch and explicit: if the scorer raises, every caller in
that batch gets the error (a :class:`~explain.errors.ModelUnavailableError`),
and a call that is not answered within ``timeout`` gets
:class:`~explain.errors.ScoringTimeoutError`. Nobody gets a made-up score.

Example::

    async with MicroBatcher(Scorer(model)) as batcher:
        explanation = await batcher.score(featurize(action, state, Context()))
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import numpy.typing as npt

from explain.errors import (
    ModelUnavailableError,
    ScorerOverloadedError,
    ScoringFailedError,
    ScoringTimeoutError,
)
from explain.explanation import Explanation
from explain.features import FEATURE_NAMES
from explain.scorer import Scorer, Scores

__all__ = ["BatcherConfig", "MicroBatcher"]


@dataclass(frozen=True)
class BatcherConfig:
    window: float = 0.001  # seconds to wait for company after the first arrival
    max_batch: int = 64  # rows per XGBoost call
    workers: int = 1  # scoring threads (each runs XGBoost with the scorer's nthread)
    timeout: float = 2.0  # seconds a caller waits for its score before giving up
    max_pending: int = 10_000  # rows waiting; beyond this score() fails at once
    # Batches this small are scored on the event loop when the scorer has TreeSHAP tables
    # (no XGBoost call: about 30 µs for one row, 400 µs for 32), saving the hop to the
    # worker thread and back, which costs more than that. 0: always on a worker thread.
    inline_rows: int = 32

    def __post_init__(self) -> None:
        if not 0 <= self.window <= 1:
            raise ValueError("window must be in [0, 1] seconds")
        if self.inline_rows < 0:
            raise ValueError("inline_rows must be >= 0")
        if not 1 <= self.max_batch <= 65_536 or self.workers < 1 or self.max_pending < 1:
            raise ValueError("max_batch must be in 1..65536, workers and max_pending >= 1")
        if self.timeout <= 0:
            raise ValueError("timeout must be > 0")


_Item = tuple[npt.NDArray[np.float32], "asyncio.Future[Explanation]"]


class MicroBatcher:
    def __init__(self, scorer: Scorer, config: BatcherConfig | None = None) -> None:
        self.scorer = scorer
        self.config = config or BatcherConfig()
        self._pending: list[_Item] = []
        self._timer: asyncio.TimerHandle | None = None
        self._busy = 0
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.batches = 0  # XGBoost calls made, for metrics and tests
        self.rows = 0

    async def __aenter__(self) -> MicroBatcher:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def start(self) -> None:
        if self._executor is None:
            self._loop = asyncio.get_running_loop()
            self._executor = ThreadPoolExecutor(
                max_workers=self.config.workers, thread_name_prefix="govgate-score"
            )

    async def close(self) -> None:
        """Stop accepting calls, fail the waiting ones, and let running batches finish."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        for _, fut in pending:
            if not fut.done():
                fut.set_exception(ModelUnavailableError("the scorer is shutting down"))
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True)

    async def score(self, features: npt.ArrayLike) -> Explanation:
        """Score one feature vector; waits at most ``window`` plus the batch's scoring time."""
        if self._closed:
            raise ModelUnavailableError("the scorer is shut down")
        self.start()
        x = np.asarray(features, dtype=np.float32)
        if x.shape != (len(FEATURE_NAMES),):
            raise ValueError(f"features must have shape ({len(FEATURE_NAMES)},), not {x.shape}")
        if len(self._pending) >= self.config.max_pending:
            raise ScorerOverloadedError(
                f"{len(self._pending)} scores already waiting; try again shortly"
            )
        assert self._loop is not None
        fut: asyncio.Future[Explanation] = self._loop.create_future()
        self._pending.append((x, fut))
        if len(self._pending) >= self.config.max_batch or self.config.window == 0:
            self._dispatch()
        elif self._timer is None:
            self._timer = self._loop.call_later(self.config.window, self._on_timer)
        try:
            async with asyncio.timeout(self.config.timeout):
                return await fut
        except TimeoutError:
            fut.cancel()
            raise ScoringTimeoutError(
                f"no score within {self.config.timeout:g} s; the model is too slow or stuck"
            ) from None

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _dispatch(self) -> None:
        # Called when a batch is full, the window has passed, or a worker freed up.
        while self._pending and self._busy < self.config.workers and self._executor is not None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            # Rows whose callers gave up (timed out, cancelled) are not scored: they would
            # take the slots of callers still waiting, who would then time out in turn.
            self._pending = [item for item in self._pending if not item[1].done()]
            if not self._pending:
                return
            batch = self._pending[: self.config.max_batch]
            del self._pending[: self.config.max_batch]
            rows = np.stack([x for x, _ in batch])
            # Inline only when this batch is all there is: a backlog (max_batch no larger
            # than inline_rows) is not drained on the loop in one go.
            if (self.scorer.tables is not None and len(batch) <= self.config.inline_rows
                    and not self._pending):  # fmt: skip
                try:
                    scores = self.scorer.score(rows)
                except Exception as err:  # as a worker thread's failure would be
                    self._resolve(batch, None, err)
                else:
                    self._resolve(batch, scores, None)
                continue
            self._busy += 1
            assert self._loop is not None
            job = self._loop.run_in_executor(self._executor, self.scorer.score, rows)
            job.add_done_callback(lambda done, batch=batch: self._finish(done, batch))  # type: ignore[misc]

    def _finish(self, done: asyncio.Future[Scores], batch: list[_Item]) -> None:
        self._busy -= 1
        err = done.exception()
        self._resolve(batch, None if err is not None else done.result(), err)
        if self._pending and self._timer is None:
            # Whatever arrived while we were busy has waited long enough.
            self._dispatch()

    def _resolve(
        self, batch: list[_Item], scores: Scores | None, err: BaseException | None
    ) -> None:
        self.batches += 1
        self.rows += len(batch)
        if scores is not None:
            for i, (_, fut) in enumerate(batch):
                if not fut.done():
                    fut.set_result(scores.explanation(i))
        else:
            if not isinstance(err, ModelUnavailableError):
                failure = ScoringFailedError(f"scoring failed: {type(err).__name__}")
                failure.__cause__ = err
                err = failure
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)

    @property
    def waiting(self) -> int:
        return len(self._pending)
