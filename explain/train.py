"""Training: an XGBoost binary classifier with monotone constraints, evaluated on held-out data.

:func:`train` splits the labelled matrix deterministically (``holdout`` of
the rows, by a seeded permutation), fits on the rest with the monotone
constraints of :data:`~explain.features.MONOTONE` (a more destructive verb
never lowers risk, a snapshot never raises it, ...), and evaluates on the
held-out rows: ROC-AUC, PR-AUC (average precision), Brier score, log loss and
a ten-bin calibration table. It returns the model file's bytes and its card;
:class:`~explain.registry.Registry` stores them.

Same data, parameters and seed give the same model bytes on the same
platform and XGBoost version (the split is seeded and XGBoost's CPU histogram
method is deterministic; ``tests/explain`` checks it).

Example::

    x, y = to_matrix(generate(50_000, seed=1))
    trained = train(x, y, TrainParams(), DataSource("bootstrap", "seed=1"))
    print(trained.model_id, trained.metrics["roc_auc"])
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from explain.card import build_card
from explain.drift import Profile
from explain.errors import TrainingDataError
from explain.features import FEATURE_NAMES, MONOTONE
from explain.model import ModelId, model_bytes, model_id_of

__all__ = ["DataSource", "TrainParams", "Trained", "data_digest", "evaluate", "train"]

MIN_ROWS = 50
MIN_CLASS = 5  # rows of each label in each split


@dataclass(frozen=True)
class TrainParams:
    """Model shape and fitting. The defaults are the bundled model's (see docs/explain.md)."""

    max_depth: int = 3
    n_estimators: int = 150
    learning_rate: float = 0.1
    min_child_weight: float = 2.0
    reg_lambda: float = 1.0
    holdout: float = 0.2
    seed: int = 1
    nthread: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= 12:
            raise ValueError("max_depth must be in 1..12")
        if not 1 <= self.n_estimators <= 5000:
            raise ValueError("n_estimators must be in 1..5000")
        if not 0 < self.learning_rate <= 1:
            raise ValueError("learning_rate must be in (0, 1]")
        if not 0.05 <= self.holdout <= 0.5:
            raise ValueError("holdout must be in [0.05, 0.5]")
        if self.nthread < 1:
            raise ValueError("nthread must be >= 1")


@dataclass(frozen=True)
class DataSource:
    kind: str  # bootstrap, history or ledger
    detail: str  # seed, file name and SHA-256, or data directory
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Trained:
    raw: bytes  # the model file
    card: dict[str, Any]

    @property
    def model_id(self) -> ModelId:
        return model_id_of(self.raw)

    @property
    def metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = self.card["metrics"]
        return metrics


def data_digest(x: npt.NDArray[np.float32], y: npt.NDArray[np.uint8]) -> str:
    """SHA-256 of the training data as featurized: float32 rows, then uint8 labels."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x, dtype="<f4").tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.uint8).tobytes())
    return h.hexdigest()


def _check(x: npt.NDArray[np.float32], y: npt.NDArray[np.uint8]) -> None:
    if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES) or len(x) != len(y):
        raise TrainingDataError(f"need an (n, {len(FEATURE_NAMES)}) matrix and n labels")
    if len(y) < MIN_ROWS:
        raise TrainingDataError(f"only {len(y)} labelled rows; at least {MIN_ROWS} are needed")
    if not np.isin(y, (0, 1)).all():
        raise TrainingDataError("labels must be 0 or 1")
    positives = int(y.sum())
    if min(positives, len(y) - positives) < 2 * MIN_CLASS:
        raise TrainingDataError(
            f"{positives} harmful and {len(y) - positives} harmless rows: "
            f"each label needs at least {2 * MIN_CLASS} to train and evaluate"
        )
    if np.isinf(x).any():
        raise TrainingDataError("features contain infinities")


def evaluate(y: npt.NDArray[np.uint8], p: npt.NDArray[np.float64]) -> dict[str, Any]:
    """Held-out metrics, with a ten-bin calibration table."""
    from sklearn.metrics import (
        average_precision_score,
        brier_score_loss,
        log_loss,
        roc_auc_score,
    )

    bins = np.minimum((p * 10).astype(int), 9)
    table = []
    for b in range(10):
        sel = bins == b
        n = int(sel.sum())
        table.append(
            {
                "bin": f"{b / 10:.1f}-{(b + 1) / 10:.1f}",
                "rows": n,
                "mean_predicted": float(p[sel].mean()) if n else None,
                "observed_rate": float(y[sel].mean()) if n else None,
            }
        )
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "holdout_rows": len(y),
        "holdout_positive_rate": float(y.mean()),
        "calibration": table,
    }


def split(n: int, holdout: float, seed: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Deterministic train/held-out row indices."""
    order = np.random.default_rng(seed).permutation(n)
    cut = round(n * (1 - holdout))
    return np.sort(order[:cut]), np.sort(order[cut:])


def booster_params(params: TrainParams) -> dict[str, Any]:
    return {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "max_depth": params.max_depth,
        "eta": params.learning_rate,
        "min_child_weight": params.min_child_weight,
        "lambda": params.reg_lambda,
        "monotone_constraints": "(" + ",".join(str(m) for m in MONOTONE) + ")",
        "seed": params.seed,
        "nthread": params.nthread,
    }


def train(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.uint8],
    params: TrainParams,
    source: DataSource,
    *,
    progress: Callable[[int, int], None] | None = None,
    now: dt.datetime | None = None,
) -> Trained:
    """Fit, evaluate and package one model. ``progress(round, rounds)`` is called per round."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.uint8)
    _check(x, y)
    fit_rows, held_rows = split(len(y), params.holdout, params.seed)
    for name, rows in (("training", fit_rows), ("held-out", held_rows)):
        pos = int(y[rows].sum())
        if min(pos, len(rows) - pos) < MIN_CLASS:
            raise TrainingDataError(f"the {name} split has fewer than {MIN_CLASS} of one label")
    names = list(FEATURE_NAMES)
    dtrain = xgb.DMatrix(x[fit_rows], label=y[fit_rows], feature_names=names)
    callbacks: list[xgb.callback.TrainingCallback] = []
    if progress is not None:
        callbacks.append(_Progress(progress, params.n_estimators))
    booster = xgb.train(
        booster_params(params),
        dtrain,
        num_boost_round=params.n_estimators,
        callbacks=callbacks,
    )
    held = xgb.DMatrix(x[held_rows], feature_names=names)
    p = booster.predict(held).astype(np.float64)
    metrics = evaluate(y[held_rows], p)
    raw = model_bytes(booster)
    card = build_card(
        model_id=model_id_of(raw),
        params=asdict(params),
        booster_params=booster_params(params),
        source=source,
        digest=data_digest(x, y),
        rows=len(y),
        positives=int(y.sum()),
        train_rows=len(fit_rows),
        metrics=metrics,
        profile=Profile.from_matrix(x[fit_rows]),
        created=now or dt.datetime.now(dt.UTC),
    )
    return Trained(raw, card)


class _Progress(xgb.callback.TrainingCallback):
    def __init__(self, report: Callable[[int, int], None], total: int) -> None:
        super().__init__()
        self.report = report
        self.total = total

    def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
        self.report(epoch + 1, self.total)
        return False
