"""Scoring: risk in [0, 1] with exact TreeSHAP contributions, a batch at a time.

The contributions are exact (path-dependent) TreeSHAP values, in log-odds, and
the bias is the base value. For shallow trees (the bundled model's) they come
from :class:`~explain.treeshap.TreeShap`, which computes them from per-tree
tables, 7 to 12 times faster than XGBoost's ``pred_contribs``, and checks
itself against ``pred_contribs`` when it is built; otherwise, and with
``vectorized=False``, from ``pred_contribs`` itself (the last column is the
bias). The margin is the base value plus the contributions, and the risk its
sigmoid, so every score comes with an explanation that adds up to it by
construction. ``tests/explain`` checks that the contributions reproduce
XGBoost's own margin and agree with ``shap.TreeExplainer`` to 1e-5, by both
paths.

Scoring never makes up a number: XGBoost errors and NaN or infinite output
raise :class:`~explain.errors.ScoringFailedError`, which the gateway turns into
its safe fallback.

The call blocks (it is C++ work); async callers go through
:class:`~explain.batcher.MicroBatcher`, which runs it off the event loop.

Example::

    scores = Scorer(model).score(featurize_many(rows))
    print(scores.risk[0], scores.explanation(0).top(3))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from explain.errors import ScoringFailedError
from explain.explanation import Explanation
from explain.features import FEATURE_NAMES, SCHEMA_VERSION
from explain.model import Model
from explain.treeshap import TreeShap

__all__ = ["Scorer", "Scores"]

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Scores:
    """A scored batch: row ``i`` of every array belongs to input row ``i``."""

    risk: F64  # (n,)
    margin: F64  # (n,) log-odds: base_value + contributions.sum(axis=1)
    contributions: F64  # (n, features) log-odds
    base_value: float
    features: F32  # (n, features), the inputs
    model_id: str

    def __len__(self) -> int:
        return len(self.risk)

    def explanation(self, i: int) -> Explanation:
        return Explanation(
            risk=float(self.risk[i]),
            base_value=self.base_value,
            contributions=dict(zip(FEATURE_NAMES, self.contributions[i].tolist(), strict=True)),
            values=dict(zip(FEATURE_NAMES, self.features[i].tolist(), strict=True)),
            model_id=self.model_id,
            schema_version=SCHEMA_VERSION,
        )


class Scorer:
    """Scores feature matrices with one verified :class:`Model`.

    ``nthread`` is XGBoost's thread count per call. One thread is the right
    default for the small batches a gateway makes: a second thread costs
    about as much CPU as it saves (``benchmarks/explain_bench.py`` measures
    it), and the other core is better spent on the event loop and the ledger.
    """

    def __init__(self, model: Model, *, nthread: int = 1, vectorized: bool = True) -> None:
        if nthread < 1:
            raise ValueError("nthread must be >= 1")
        self.model = model
        self.nthread = nthread
        model.booster.set_param({"nthread": nthread})
        # None: XGBoost's pred_contribs (asked for, or the trees are not shallow enough).
        self.tables = _tables(model) if vectorized else None

    def score(self, features: npt.ArrayLike) -> Scores:
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"features must have shape (n, {len(FEATURE_NAMES)}), not {x.shape}")
        if len(x) == 0:
            raise ValueError("nothing to score")
        if np.isinf(x).any():  # XGBoost refuses these; NaN is a missing value
            raise ScoringFailedError(f"model {self.model.id[:12]}: infinite feature values")
        if self.tables is not None:
            contribs, base = self.tables.contributions(x), self.tables.base_value
        else:
            contribs, base = self._pred_contribs(x)
        if not np.isfinite(contribs).all():
            raise ScoringFailedError(
                f"model {self.model.id[:12]} returned non-finite contributions"
            )
        margin = base + contribs.sum(axis=1)
        risk = 1.0 / (1.0 + np.exp(-margin))
        return Scores(risk, margin, contribs, base, x, self.model.id)

    def _pred_contribs(self, x: F32) -> tuple[F64, float]:
        try:
            dm = xgb.DMatrix(x, nthread=self.nthread)
            raw = self.model.booster.predict(dm, pred_contribs=True, validate_features=False)
        except xgb.core.XGBoostError as err:
            raise ScoringFailedError(f"model {self.model.id[:12]} failed to score") from err
        if raw.shape != (len(x), len(FEATURE_NAMES) + 1) or not np.isfinite(raw).all():
            raise ScoringFailedError(
                f"model {self.model.id[:12]} returned non-finite or mis-shaped contributions"
            )
        return raw[:, :-1].astype(np.float64), float(raw[0, -1])


_TABLES: dict[str, TreeShap | None] = {}  # model id (its file's hash): its tables


def _tables(model: Model) -> TreeShap | None:
    """The model's TreeSHAP tables, built (and checked) once per model in a process."""
    if model.id not in _TABLES:
        if len(_TABLES) >= 4:
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[model.id] = TreeShap.build(model.booster, len(FEATURE_NAMES))
    return _TABLES[model.id]
