"""The metric instruments, read through OpenTelemetry's in-memory reader."""

from __future__ import annotations

from typing import Any

import numpy as np
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from explain.bootstrap import generate
from explain.drift import Profile
from explain.features import FEATURE_NAMES, Context, featurize
from gateway.metrics import Metrics


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = list(m.data.data_points)
    return out


def rows(n: int, seed: int) -> np.ndarray:
    examples = generate(n, seed=seed)
    return np.stack([featurize(e.action, e.state, Context(now=e.time)) for e in examples])


def test_drift_is_zero_ish_for_the_training_distribution_and_high_for_another():
    profile = Profile.from_matrix(rows(2000, seed=1))
    reader = InMemoryMetricReader()
    metrics = Metrics(MeterProvider(metric_readers=[reader]).get_meter("t"), profile, window=500)
    assert "govgate.model.drift.psi" not in points(reader)  # nothing scored yet
    for row in rows(500, seed=2):  # fresh rows from the same generator
        metrics.decided("EXECUTED", "resize", fallback=False, features=row.tolist())
    same = {p.attributes["govgate.feature"]: p.value
            for p in points(reader)["govgate.model.drift.psi"]}  # fmt: skip
    assert set(same) == set(FEATURE_NAMES)
    assert max(same.values()) < 0.1, same  # stable
    shifted = rows(500, seed=3)
    shifted[:, FEATURE_NAMES.index("engine_confidence")] = 0.05  # every engine unsure now
    for row in shifted:
        metrics.decided("PENDING_APPROVAL", "delete", fallback=True, features=row.tolist())
    moved = {p.attributes["govgate.feature"]: p.value
             for p in points(reader)["govgate.model.drift.psi"]}  # fmt: skip
    assert moved["engine_confidence"] > 0.25  # significant
    got = points(reader)
    [fallbacks] = got["govgate.model.fallbacks"]
    assert fallbacks.value == 500
    by_state = {(p.attributes["govgate.decision.state"], p.attributes["govgate.decision.verb"]):
                p.value for p in got["govgate.decisions"]}  # fmt: skip
    assert by_state == {("EXECUTED", "resize"): 500, ("PENDING_APPROVAL", "delete"): 500}


def test_pending_ledger_size_waits_and_refusals():
    reader = InMemoryMetricReader()
    metrics = Metrics(MeterProvider(metric_readers=[reader]).get_meter("t"))
    waiting = [1, 2, 3]
    metrics.watch_pending(lambda: len(waiting))
    metrics.appended(41, 0.002)
    metrics.appended(40, 0.003)  # out of order: the size is the largest index + 1
    metrics.reviewed(12.5)
    metrics.refused.add(2)
    metrics.stage("describe", 0.0004)
    got = points(reader)
    assert [p.value for p in got["govgate.approvals.pending"]] == [3]
    assert [p.value for p in got["govgate.ledger.size"]] == [42]
    assert [p.count for p in got["govgate.ledger.append.duration"]] == [2]
    assert [p.sum for p in got["govgate.approval.wait"]] == [12.5]
    assert [p.value for p in got["govgate.overload.refused"]] == [2]
    [stage] = got["govgate.decision.duration"]
    assert stage.attributes == {"govgate.stage": "describe"}
    assert "govgate.model.drift.psi" not in got  # no profile, no drift
