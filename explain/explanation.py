"""Explanations people can read: a score, its base value and per-feature contributions.

Contributions are exact TreeSHAP values in log-odds: ``base_value`` plus the
sum of ``contributions`` is the model's margin, and ``risk`` is its sigmoid.
:meth:`Explanation.top` orders them by size and words each one
("+0.93 log-odds (raises risk): target is production (or unlabelled)").

Example::

    exp = scores.explanation(0, x)
    for c in exp.top(3):
        print(c.text())
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from explain.features import FEATURE_INDEX, FEATURES

__all__ = ["Contribution", "Explanation", "sigmoid"]


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclass(frozen=True)
class Contribution:
    feature: str
    value: float  # the feature's value (NaN: unknown)
    contribution: float  # log-odds this feature adds to the margin

    def phrase(self) -> str:
        return FEATURES[FEATURE_INDEX[self.feature]].phrase(self.value)

    def text(self) -> str:
        direction = "raises" if self.contribution >= 0 else "lowers"
        return f"{self.contribution:+.2f} log-odds ({direction} risk): {self.phrase()}"


@dataclass(frozen=True)
class Explanation:
    """One scored proposal."""

    risk: float
    base_value: float  # log-odds, the same for every row of one model
    contributions: Mapping[str, float]  # feature name -> log-odds, in schema order
    values: Mapping[str, float]  # feature name -> value
    model_id: str
    schema_version: str

    @property
    def margin(self) -> float:
        return self.base_value + math.fsum(self.contributions.values())

    def top(self, k: int = 5) -> list[Contribution]:
        """The ``k`` largest contributions by magnitude, largest first."""
        ranked = sorted(self.contributions.items(), key=lambda kv: (-abs(kv[1]), kv[0]))
        return [Contribution(n, self.values[n], c) for n, c in ranked[: max(k, 0)]]

    def to_record(self) -> dict[str, Any]:
        """The explanation for a ledger record body: every number a decimal string.

        Floats are written in Python's shortest round-trip form, so an auditor
        gets back exactly the float64 values, and the payload stays float-free.
        ``features`` is the vector the model scored, an unknown value (NaN) as
        ``null``: what the model saw, recorded, rather than re-derived later.
        """
        return {
            "risk": repr(self.risk),
            "base_value": repr(self.base_value),
            "contributions": {n: repr(c) for n, c in self.contributions.items()},
            "features": {n: None if math.isnan(v) else repr(v) for n, v in self.values.items()},
            "model_id": self.model_id,
            "schema_version": self.schema_version,
        }

    def to_json(self, *, top: int = 5) -> dict[str, Any]:
        """The documented JSON form (``govgate model explain --json``)."""
        return {
            "risk": self.risk,
            "base_value": self.base_value,
            "margin": self.margin,
            "contributions": dict(self.contributions),
            "features": {n: None if math.isnan(v) else v for n, v in self.values.items()},
            "top": [
                {
                    "feature": c.feature,
                    "contribution": c.contribution,
                    "value": None if math.isnan(c.value) else c.value,
                    "text": c.text(),
                }
                for c in self.top(top)
            ],
            "model_id": self.model_id,
            "schema_version": self.schema_version,
        }
