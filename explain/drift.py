"""Drift: population stability index (PSI) of recent decisions against training.

Training stores a :class:`Profile` in the model card: for every feature, bin
edges at the training data's deciles and the fraction of training rows in
each bin, plus the fraction that was missing (NaN). :func:`drift` bins recent
feature vectors the same way and computes, per feature::

    PSI = sum over bins of (recent% - reference%) * ln(recent% / reference%)

with missing values as one more bin and empty bins floored at ``EPSILON`` so
the logarithm stays finite. Conventional reading, used as the default
thresholds: below 0.1 stable, 0.1 to 0.25 moderate shift, above 0.25
significant shift (retrain, or find out what changed).

Example::

    profile = Profile.from_matrix(x_train)
    for d in drift(profile, x_recent):
        print(d.feature, round(d.psi, 3), d.level)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from explain.errors import ExplainError
from explain.features import FEATURE_NAMES

__all__ = ["EPSILON", "FeatureDrift", "FeatureProfile", "Profile", "Thresholds", "drift", "psi"]

EPSILON = 1e-4
BINS = 10


@dataclass(frozen=True)
class Thresholds:
    moderate: float = 0.1
    significant: float = 0.25

    def level(self, value: float) -> str:
        if value >= self.significant:
            return "significant"
        if value >= self.moderate:
            return "moderate"
        return "stable"


@dataclass(frozen=True)
class FeatureProfile:
    edges: tuple[float, ...]  # inner cut points, ascending; bins are (-inf, e0], (e0, e1], ...
    fractions: tuple[float, ...]  # len(edges) + 1 bins, then the missing fraction last

    def histogram(self, column: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Fractions of ``column`` per bin, missing last (same layout as ``fractions``)."""
        missing = np.isnan(column)
        present = column[~missing]
        counts = np.bincount(
            np.searchsorted(np.asarray(self.edges), present, side="left"),
            minlength=len(self.edges) + 1,
        ).astype(np.float64)
        counts = np.append(counts, missing.sum())
        return counts / max(len(column), 1)


@dataclass(frozen=True)
class Profile:
    """The training distribution of every feature, as stored in the model card."""

    features: Mapping[str, FeatureProfile]
    rows: int

    @classmethod
    def from_matrix(cls, x: npt.NDArray[np.float32], bins: int = BINS) -> Profile:
        out = {}
        for i, name in enumerate(FEATURE_NAMES):
            col = x[:, i]
            present = col[~np.isnan(col)]
            if len(present):
                qs = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])
                edges = tuple(float(e) for e in np.unique(qs))
            else:
                edges = ()
            prof = FeatureProfile(edges, ())
            fractions = tuple(float(f) for f in prof.histogram(col))
            out[name] = FeatureProfile(edges, fractions)
        return cls(out, len(x))

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "features": {
                n: {"edges": list(p.edges), "fractions": list(p.fractions)}
                for n, p in self.features.items()
            },
        }

    @classmethod
    def from_json(cls, obj: Any) -> Profile:
        try:
            feats = {
                name: FeatureProfile(
                    tuple(float(e) for e in obj["features"][name]["edges"]),
                    tuple(float(f) for f in obj["features"][name]["fractions"]),
                )
                for name in FEATURE_NAMES
            }
            rows = int(obj["rows"])
        except (KeyError, TypeError, ValueError) as err:
            raise ExplainError(f"model card has no usable drift reference: {err}") from err
        for name, p in feats.items():
            if (
                len(p.fractions) != len(p.edges) + 2
                or list(p.edges) != sorted(p.edges)
                or not all(math.isfinite(e) for e in p.edges)
                or not all(0.0 <= f <= 1.0 for f in p.fractions)
                or abs(math.fsum(p.fractions) - 1.0) > 1e-6
            ):
                raise ExplainError(f"model card's drift reference for {name} is malformed")
        return cls(feats, rows)


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    psi: float
    level: str  # stable, moderate or significant


def psi(reference: Sequence[float], recent: Sequence[float]) -> float:
    """PSI between two histograms given as fractions over the same bins."""
    total = 0.0
    for r, q in zip(reference, recent, strict=True):
        r, q = max(r, EPSILON), max(q, EPSILON)
        total += (q - r) * math.log(q / r)
    return total


def drift(
    profile: Profile,
    recent: npt.NDArray[np.float32],
    thresholds: Thresholds | None = None,
) -> list[FeatureDrift]:
    """PSI per feature of ``recent`` (rows of feature vectors) against ``profile``."""
    thresholds = thresholds or Thresholds()
    x = np.asarray(recent, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"recent must have shape (n, {len(FEATURE_NAMES)})")
    if len(x) == 0:
        raise ValueError("no recent rows to compare")
    out = []
    for i, name in enumerate(FEATURE_NAMES):
        prof = profile.features[name]
        value = psi(prof.fractions, prof.histogram(x[:, i]).tolist())
        out.append(FeatureDrift(name, value, thresholds.level(value)))
    return out
