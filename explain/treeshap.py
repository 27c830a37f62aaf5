"""Exact TreeSHAP for shallow trees, a whole batch at once: :class:`TreeShap`.

XGBoost's ``pred_contribs`` walks every tree for every row, which costs about
85 µs a row and 250 µs a call on the bundled model (150 trees of depth 3),
more than a governed decision spends anywhere else. This computes the same
numbers (path-dependent TreeSHAP, the algorithm of Lundberg et al. that
``pred_contribs`` and ``shap.TreeExplainer`` implement) another way, suited to
shallow trees:

* Path-dependent TreeSHAP gives the Shapley values of the game
  ``v(S) = sum over leaves l of value(l) * prod over the features j on l's
  path of (o_j if j in S else z_j)``, where ``o_j`` is 1 when the row takes
  every split on feature ``j`` towards ``l`` (NaN goes the default way) and
  ``z_j`` is the product of the cover fractions of those splits.
* Shapley values add up over the leaves, and a leaf's game depends on the
  row only through the bits ``o_j`` of its own (at most a few) features,
  which in turn depend only on which way the row goes at each split of the
  tree. So each tree gets a table, computed once per model: for every
  pattern of ways at its splits (at most ``2 ** MAX_SPLITS``), every
  feature's contribution, summed over the tree's leaves.
* Scoring a batch is then array work: compare each row with every split's
  threshold, form each tree's pattern, look the rows of the tables up, and
  add them over the trees, in an order that does not depend on the batch (a
  row's numbers are the same alone or in company, bit for bit).

:meth:`TreeShap.build` declines (returns None) for what it does not cover:
categorical splits, vector leaves, more than one output, trees of more than
:data:`MAX_SPLITS` splits, paths with more than :data:`MAX_PATH_FEATURES`
distinct features, or tables past :data:`MAX_TABLE` numbers. It also checks
itself against ``pred_contribs`` on probe rows that take every side of every
split, missing values included, and declines when any contribution is off by
more than :data:`TOLERANCE`: the scorer then uses XGBoost. The bias (the base
value) is XGBoost's own.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb

__all__ = ["MAX_PATH_FEATURES", "MAX_SPLITS", "MAX_TABLE", "TOLERANCE", "TreeShap"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

MAX_SPLITS = 8  # a tree's splits (its table has a row for each of their 2**8 patterns)
MAX_PATH_FEATURES = 5  # distinct features on one root-to-leaf path
MAX_TABLE = 1 << 22  # numbers in all the tables together (32 MiB of float64)
TOLERANCE = 1e-5  # log-odds: the most a contribution may differ from pred_contribs
_PROBE_ROWS = 512


@dataclass(frozen=True)
class _Tree:
    feature: list[int]  # of each split, in node order (internal nodes only)
    threshold: list[float]  # value < threshold goes left
    default_left: list[bool]  # where NaN goes
    table: F64  # (2 ** splits, features): the contributions for each pattern of split bits


class TreeShap:
    """Exact path-dependent TreeSHAP contributions of a batch (see the module's docs)."""

    def __init__(self, trees: list[_Tree], n_features: int, base_value: float) -> None:
        width = max((len(t.feature) for t in trees), default=0)
        self.n_features, self.base_value, self.width = n_features, base_value, width
        n = len(trees)
        # Every tree padded to ``width`` splits; a padding split sends everything right
        # (bit 0: its threshold is -inf, and NaN goes right), so only the first 2**m rows
        # of a tree of m splits are ever looked up (the rest stay zero).
        feature = np.zeros((n, width), dtype=np.intp)
        threshold = np.full((n, width), -np.inf, dtype=np.float32)
        default_left = np.zeros((n, width), dtype=bool)
        table = np.zeros((n, 1 << width, n_features), dtype=np.float64)
        for i, t in enumerate(trees):
            m = len(t.feature)
            feature[i, :m], threshold[i, :m], default_left[i, :m] = (
                t.feature, t.threshold, t.default_left)  # fmt: skip
            table[i, : 1 << m] = t.table
        self._feature, self._threshold, self._default_left = feature, threshold, default_left
        self._bits = (1 << np.arange(width)).astype(np.intp)
        self._table = table.reshape(n << width, n_features)
        self._offset = (np.arange(n, dtype=np.intp) << width)[None, :]

    @classmethod
    def build(cls, booster: xgb.Booster, n_features: int) -> TreeShap | None:
        """Tables for ``booster``'s trees, checked against ``pred_contribs``; None where this
        does not apply or does not agree (then use XGBoost)."""
        try:
            model = json.loads(booster.save_raw("json"))
            learner = model["learner"]
            param = learner["learner_model_param"]
            if int(param.get("num_target", "1")) != 1 or int(param.get("num_class", "0")) > 1:
                return None
            gb = learner["gradient_booster"]
            if gb["name"] != "gbtree" or booster.num_boosted_rounds() != len(gb["model"]["trees"]):
                return None
            raw_trees = gb["model"]["trees"]
            width = max((sum(1 for c in t["left_children"] if c != -1) for t in raw_trees),
                        default=0)  # fmt: skip
            if len(raw_trees) << min(width, MAX_SPLITS + 1) > MAX_TABLE // n_features:
                return None
            trees = [_tree(tree, n_features) for tree in raw_trees]
        except (_Unsupported, KeyError, TypeError, ValueError, IndexError, xgb.core.XGBoostError):
            return None
        probe = _probe(trees, n_features)
        try:
            theirs = booster.predict(xgb.DMatrix(probe), pred_contribs=True,
                                     validate_features=False)  # fmt: skip
        except xgb.core.XGBoostError:
            return None
        if theirs.shape != (len(probe), n_features + 1) or not np.isfinite(theirs).all():
            return None
        shap = cls(trees, n_features, float(theirs[0, -1]))
        ours = shap.contributions(probe)
        if not np.allclose(ours, theirs[:, :-1], rtol=0, atol=TOLERANCE):
            return None
        return shap

    def contributions(self, x: F32) -> F64:
        """(n, features) log-odds contributions of the rows of ``x`` (float32, NaN missing)."""
        v = np.asarray(x, dtype=np.float32)[:, self._feature]  # (n, trees, width)
        with np.errstate(invalid="ignore"):
            left = np.where(np.isnan(v), self._default_left, v < self._threshold)
        pattern = left @ self._bits + self._offset  # (n, trees)
        # Summed over the trees in their order, row by row: the same bits alone or batched.
        out: F64 = self._table[pattern].sum(axis=1)
        return out


class _Unsupported(Exception):
    pass


def _tree(tree: dict[str, Any], n_features: int) -> _Tree:
    """One tree's splits and its table: for each pattern of split bits (1: left), the sum
    over its leaves of each feature's Shapley share of that leaf's game."""
    left, right = tree["left_children"], tree["right_children"]
    feature, cond = tree["split_indices"], tree["split_conditions"]
    default_left, cover = tree["default_left"], tree["sum_hessian"]
    if any(int(t) != 0 for t in tree.get("split_type", ())):
        raise _Unsupported("categorical split")
    if int(tree["tree_param"].get("size_leaf_vector", "1")) > 1:
        raise _Unsupported("vector leaf")
    splits = [n for n in range(len(left)) if left[n] != -1]
    if len(splits) > MAX_SPLITS:
        raise _Unsupported("too many splits")
    slot = {node: i for i, node in enumerate(splits)}
    for n in splits:
        if not 0 <= int(feature[n]) < n_features:
            raise _Unsupported("split on an unknown feature")
        if float(cover[n]) <= 0:
            raise _Unsupported("a split without cover")
    # Each leaf: its value and, per distinct feature on its path, the splits it takes (slot,
    # direction) and the product of their cover fractions.
    leaves: list[tuple[float, list[list[tuple[int, bool]]], list[float]]] = []
    stack: list[tuple[int, dict[int, tuple[list[tuple[int, bool]], float]]]] = [(0, {})]
    while stack:
        node, path = stack.pop()
        if len(path) > MAX_PATH_FEATURES:
            raise _Unsupported("too many features on a path")
        if left[node] == -1:
            leaves.append((float(np.float32(cond[node])), [p[0] for p in path.values()],
                           [p[1] for p in path.values()]))  # fmt: skip
            continue
        f = int(feature[node])
        for child, goes_left in ((left[node], True), (right[node], False)):
            taken, zero = path.get(f, ([], 1.0))
            step = dict(path)
            step[f] = ([*taken, (slot[node], goes_left)],
                       zero * float(cover[child]) / float(cover[node]))  # fmt: skip
            stack.append((int(child), step))
    m = len(splits)
    table = np.zeros((1 << m, n_features), dtype=np.float64)
    patterns = np.arange(1 << m)
    bits = (patterns[:, None] >> np.arange(max(m, 1))) & 1  # (patterns, splits): 1 left
    for value, on_path, fractions in leaves:
        if not on_path:  # a tree that is one leaf: its value is all in the bias
            continue
        shares = _shares(value, tuple(fractions))  # (2 ** its features, its features)
        # For each pattern of the tree's bits, the leaf's pattern: which features it takes.
        own = np.zeros(1 << m, dtype=np.intp)
        for j, splits_of_j in enumerate(on_path):
            ok = np.ones(1 << m, dtype=bool)
            for at, goes_left in splits_of_j:
                ok &= bits[:, at] == int(goes_left)
            own |= ok.astype(np.intp) << j
        features = [int(feature[splits[splits_of_j[0][0]]]) for splits_of_j in on_path]
        table[:, features] += shares[own]
    return _Tree([int(feature[n]) for n in splits],
                 [float(np.float32(cond[n])) for n in splits],
                 [bool(default_left[n]) for n in splits], table)  # fmt: skip


def _shares(value: float, zero: tuple[float, ...]) -> F64:
    """For each pattern of bits (bit j: the row takes feature j's splits), each feature's
    Shapley share of the game ``value * prod(o_j if j in S else z_j)``."""
    m = len(zero)
    out = np.zeros((1 << m, m), dtype=np.float64)
    weight = [math.factorial(s) * math.factorial(m - 1 - s) / math.factorial(m) for s in range(m)]
    for pattern in range(1 << m):
        o = [(pattern >> j) & 1 for j in range(m)]
        for i in range(m):
            others = [j for j in range(m) if j != i]
            total = 0.0
            for size in range(m):
                for subset in itertools.combinations(others, size):
                    term = weight[size]
                    for j in others:
                        term *= o[j] if j in subset else zero[j]
                    total += term
            out[pattern, i] = value * (o[i] - zero[i]) * total
    return out


def _probe(trees: list[_Tree], n_features: int) -> F32:
    """Rows that take every side of every split: each feature's column holds each of its
    thresholds, each value just below one, NaN and both ends, at least once each (while
    they fit in the rows), in an order shuffled per feature so that the rows mix them
    (a fixed seed: the check is repeatable)."""
    cuts: list[set[float]] = [set() for _ in range(n_features)]
    for t in trees:
        for f, threshold in zip(t.feature, t.threshold, strict=True):
            cuts[f].add(threshold)
    rng = np.random.default_rng(20261127)
    rows = np.empty((_PROBE_ROWS, n_features), dtype=np.float32)
    for f, values in enumerate(cuts):
        near = [np.float32(c) for c in values]
        near += [np.nextafter(c, np.float32(-np.inf)) for c in near]
        candidates = np.array([*near, np.nan, -1e6, 1e6, 0.0], dtype=np.float32)
        rows[:, f] = rng.permutation(np.resize(candidates, _PROBE_ROWS))
    rows[0] = np.nan  # every feature missing
    return rows
