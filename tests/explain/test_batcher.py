"""The async micro-batcher, with a real model; failure paths with small stand-in scorers."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import numpy.typing as npt
import pytest

from explain.batcher import BatcherConfig, MicroBatcher
from explain.bootstrap import generate, to_matrix
from explain.errors import (
    ModelUnavailableError,
    ScorerOverloadedError,
    ScoringFailedError,
    ScoringTimeoutError,
)
from explain.features import FEATURE_NAMES
from explain.model import Model
from explain.scorer import Scorer, Scores


@pytest.fixture(scope="module")
def rows() -> npt.NDArray[np.float32]:
    return to_matrix(generate(300, seed=3))[0]


async def test_concurrent_calls_are_batched_and_match_direct_scoring(
    small_model: Model, rows: npt.NDArray[np.float32]
):
    direct = Scorer(small_model).score(rows)
    async with MicroBatcher(Scorer(small_model), BatcherConfig(max_batch=64)) as batcher:
        results = await asyncio.gather(*(batcher.score(r) for r in rows))
    assert batcher.rows == len(rows)
    assert batcher.batches <= len(rows) // 64 + 2  # batched, not one call per row
    for i, exp in enumerate(results):
        assert exp.risk == pytest.approx(float(direct.risk[i]), abs=1e-12)
        assert exp.contributions == direct.explanation(i).contributions


async def test_a_lone_call_is_scored_alone_after_the_window(
    small_model: Model, rows: npt.NDArray[np.float32]
):
    async with MicroBatcher(Scorer(small_model), BatcherConfig(window=0.001)) as batcher:
        first = await batcher.score(rows[0])
        second = await batcher.score(rows[1])
    assert (batcher.batches, batcher.rows) == (2, 2)
    assert first.risk != second.risk


async def test_full_batch_goes_out_without_waiting_for_the_window(
    small_model: Model, rows: npt.NDArray[np.float32]
):
    # A one-minute window: only the max_batch trigger can answer these in time.
    config = BatcherConfig(window=1.0, max_batch=8, timeout=30)
    async with MicroBatcher(Scorer(small_model), config) as batcher:
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.score(r) for r in rows[:8])), timeout=0.9
        )
    assert len(results) == 8
    assert batcher.batches == 1


async def test_rejects_wrong_shapes(small_model: Model):
    async with MicroBatcher(Scorer(small_model)) as batcher:
        with pytest.raises(ValueError, match="shape"):
            await batcher.score(np.zeros(3, dtype=np.float32))


class _Failing(Scorer):
    def __init__(self, model: Model, exc: Exception) -> None:
        super().__init__(model)
        self.exc = exc

    def score(self, features: npt.ArrayLike) -> Scores:
        raise self.exc


class _Stuck(Scorer):
    def __init__(self, model: Model) -> None:
        super().__init__(model)
        self.release = threading.Event()

    def score(self, features: npt.ArrayLike) -> Scores:
        self.release.wait(10)
        return super().score(features)


async def test_scorer_errors_reach_every_caller_as_model_unavailable(
    small_model: Model, rows: npt.NDArray[np.float32]
):
    scorer = _Failing(small_model, RuntimeError("boom"))
    async with MicroBatcher(scorer, BatcherConfig(max_batch=4)) as batcher:
        results = await asyncio.gather(
            *(batcher.score(r) for r in rows[:6]), return_exceptions=True
        )
    assert all(isinstance(r, ScoringFailedError) for r in results)
    assert isinstance(results[0].__cause__, RuntimeError)

    scorer = _Failing(small_model, ScoringFailedError("non-finite"))
    async with MicroBatcher(scorer) as batcher:
        with pytest.raises(ScoringFailedError, match="non-finite"):
            await batcher.score(rows[0])


async def test_stuck_scorer_times_out_and_overload_is_refused(
    small_model: Model, rows: npt.NDArray[np.float32]
):
    scorer = _Stuck(small_model)
    config = BatcherConfig(timeout=0.2, max_batch=1, max_pending=2, inline_rows=0)
    batcher = MicroBatcher(scorer, config)
    try:
        stuck = asyncio.ensure_future(batcher.score(rows[0]))  # occupies the only worker
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(batcher.score(r)) for r in rows[1:3]]
        await asyncio.sleep(0)
        assert batcher.waiting == 2
        with pytest.raises(ScorerOverloadedError):
            await batcher.score(rows[3])
        with pytest.raises(ScoringTimeoutError):
            await stuck
        for w in waiting:
            with pytest.raises(ScoringTimeoutError):
                await w
    finally:
        scorer.release.set()
        await batcher.close()
    with pytest.raises(ModelUnavailableError, match="shut down"):
        await batcher.score(rows[0])


async def test_close_fails_waiting_calls(small_model: Model, rows: npt.NDArray[np.float32]):
    batcher = MicroBatcher(Scorer(small_model), BatcherConfig(window=1.0, max_batch=64))
    pending = asyncio.ensure_future(batcher.score(rows[0]))
    await asyncio.sleep(0.01)
    await batcher.close()
    with pytest.raises(ModelUnavailableError, match="shutting down"):
        await pending


def test_config_limits():
    with pytest.raises(ValueError, match="window"):
        BatcherConfig(window=-1)
    with pytest.raises(ValueError, match="max_batch"):
        BatcherConfig(max_batch=0)
    with pytest.raises(ValueError, match="timeout"):
        BatcherConfig(timeout=0)
    with pytest.raises(ValueError, match="inline_rows"):
        BatcherConfig(inline_rows=-1)
    assert len(FEATURE_NAMES) == 19


async def test_rows_whose_callers_gave_up_are_not_scored(
    small_model: Model, rows: npt.NDArray[np.float32]
):
    """Callers that gave up (timed out, cancelled) leave their rows behind: those must
    not take the scorer's slots ahead of callers still waiting, who would then time out
    in their turn."""
    scorer = _Stuck(small_model)
    batcher = MicroBatcher(scorer, BatcherConfig(timeout=30, max_batch=1, inline_rows=0))
    try:
        first = asyncio.ensure_future(batcher.score(rows[0]))  # occupies the only worker
        await asyncio.sleep(0.05)
        gave_up = [asyncio.ensure_future(batcher.score(r)) for r in rows[1:8]]
        await asyncio.sleep(0)
        for task in gave_up:
            task.cancel()
        await asyncio.gather(*gave_up, return_exceptions=True)
        live = asyncio.ensure_future(batcher.score(rows[8]))
        scorer.release.set()
        await first
        await live
        assert batcher.rows == 2  # the first and the live one: none of the seven dead rows
        assert batcher.waiting == 0
    finally:
        scorer.release.set()
        await batcher.close()


class _Where(Scorer):
    """Notes the thread each batch is scored on."""

    def __init__(self, model: Model, vectorized: bool = True) -> None:
        super().__init__(model, vectorized=vectorized)
        self.threads: list[int] = []

    def score(self, features: npt.ArrayLike) -> Scores:
        self.threads.append(threading.get_ident())
        return super().score(features)


async def test_small_batches_with_tables_are_scored_on_the_event_loop(
    small_model: Model, rows: npt.NDArray[np.float32]
):
    loop_thread = threading.get_ident()
    direct = Scorer(small_model).score(rows[:40])
    for config, vectorized, on_loop in [
        (BatcherConfig(max_batch=8), True, True),
        (BatcherConfig(max_batch=40, window=1.0), True, False),  # a batch past 32 rows
        (BatcherConfig(max_batch=8, inline_rows=0), True, False),
        (BatcherConfig(max_batch=8), False, False),  # XGBoost's own: always on a thread
    ]:
        scorer = _Where(small_model, vectorized)
        async with MicroBatcher(scorer, config) as batcher:
            got = await asyncio.gather(*(batcher.score(r) for r in rows[:40]))
        assert scorer.threads, config
        assert all((t == loop_thread) == on_loop for t in scorer.threads), (config, vectorized)
        assert [g.risk for g in got] == pytest.approx(direct.risk.tolist(), abs=1e-6)
