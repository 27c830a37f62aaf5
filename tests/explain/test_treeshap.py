"""TreeSHAP from per-tree tables (explain.treeshap) against XGBoost's own pred_contribs."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import xgboost as xgb

import explain.treeshap as treeshap
from explain.bootstrap import generate, to_matrix
from explain.features import FEATURE_NAMES
from explain.model import Model
from explain.treeshap import TOLERANCE, TreeShap

F = len(FEATURE_NAMES)


def _fit(params: dict[str, object], rounds: int = 30, seed: int = 3) -> xgb.Booster:
    """A model on random data with missing values and features that repeat along paths."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(3000, F)).astype(np.float32)
    x[rng.random(x.shape) < 0.15] = np.nan
    y = ((np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 0]) ** 2 - np.nan_to_num(x[:, 3])
          + rng.normal(scale=0.5, size=len(x))) > 0.5).astype(np.uint8)  # fmt: skip
    base: dict[str, object] = {"objective": "binary:logistic", "nthread": 1, "seed": seed}
    return xgb.train(base | params, xgb.DMatrix(x, label=y), num_boost_round=rounds)


def _theirs(booster: xgb.Booster, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return booster.predict(xgb.DMatrix(x), pred_contribs=True, validate_features=False)


def _rows(n: int, seed: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, F)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = np.nan
    x[0] = np.nan
    x[1] = 1e30  # past every threshold: every split's right side
    x[2] = -1e30
    return x


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_tables_give_pred_contribs_values(depth: int):
    booster = _fit({"max_depth": depth})
    shap = TreeShap.build(booster, F)
    assert shap is not None
    x = _rows(500, seed=depth)
    theirs = _theirs(booster, x)
    np.testing.assert_allclose(shap.contributions(x), theirs[:, :-1], rtol=0, atol=TOLERANCE)
    assert shap.base_value == pytest.approx(float(theirs[0, -1]), abs=1e-7)


def test_thresholds_themselves_and_the_values_just_below(bundled_model: Model):
    """A split sends ``value < threshold`` left: a row exactly at a threshold goes right."""
    shap = TreeShap.build(bundled_model.booster, F)
    assert shap is not None
    x = to_matrix(generate(200, seed=5))[0]
    at = x.copy()
    thresholds = {(f, t) for tree_f, tree_t in zip(shap._feature.ravel(), shap._threshold.ravel(),
                                                   strict=True)
                  for f, t in [(int(tree_f), float(tree_t))] if np.isfinite(t)}  # fmt: skip
    for i, (f, t) in enumerate(sorted(thresholds)):
        at[i % len(at), f] = t
        x[i % len(x), f] = np.nextafter(np.float32(t), np.float32(-np.inf))
    for rows in (at, x):
        theirs = _theirs(bundled_model.booster, rows)
        np.testing.assert_allclose(shap.contributions(rows), theirs[:, :-1], rtol=0,
                                   atol=TOLERANCE)  # fmt: skip


def test_a_row_gets_the_same_bits_alone_and_in_a_batch(bundled_model: Model):
    """What an auditor re-scoring one recorded vector relies on."""
    shap = TreeShap.build(bundled_model.booster, F)
    assert shap is not None
    x = to_matrix(generate(64, seed=9))[0]
    batch = shap.contributions(x)
    alone = np.vstack([shap.contributions(x[i : i + 1]) for i in range(len(x))])
    assert np.array_equal(alone, batch)


def test_trees_of_single_leaves_put_everything_in_the_bias():
    booster = _fit({"max_depth": 3, "min_child_weight": 1e9})  # no split is ever allowed
    shap = TreeShap.build(booster, F)
    assert shap is not None
    x = _rows(10, seed=4)
    assert not shap.contributions(x).any()
    assert shap.base_value == pytest.approx(float(_theirs(booster, x)[0, -1]), abs=1e-7)


def test_deep_trees_and_other_models_are_left_to_xgboost():
    assert TreeShap.build(_fit({"max_depth": 5}, rounds=5), F) is None  # > MAX_SPLITS splits
    multi = _fit({"objective": "multi:softprob", "num_class": 3, "max_depth": 2}, rounds=3)
    assert TreeShap.build(multi, F) is None
    dart = _fit({"booster": "dart", "max_depth": 2}, rounds=3)
    assert TreeShap.build(dart, F) is None


def test_tables_that_disagree_with_xgboost_are_not_used(monkeypatch: pytest.MonkeyPatch):
    booster = _fit({"max_depth": 2}, rounds=5)
    assert TreeShap.build(booster, F) is not None
    real = treeshap._shares

    def off(value: float, zero: tuple[float, ...]) -> npt.NDArray[np.float64]:
        return real(value, zero) * 1.001  # a small error, past the tolerance

    monkeypatch.setattr(treeshap, "_shares", off)
    assert TreeShap.build(booster, F) is None


def test_tables_past_their_bounds_are_left_to_xgboost(monkeypatch: pytest.MonkeyPatch):
    booster = _fit({"max_depth": 3}, rounds=10)
    assert TreeShap.build(booster, F) is not None
    with monkeypatch.context() as m:
        m.setattr(treeshap, "MAX_TABLE", 10 * 2**7 * F - 1)  # one number short
        assert TreeShap.build(booster, F) is None
    monkeypatch.setattr(treeshap, "MAX_PATH_FEATURES", 1)  # its paths split on 2 or 3
    assert TreeShap.build(booster, F) is None
