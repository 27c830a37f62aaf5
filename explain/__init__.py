"""govgate's risk model: features, training, model registry, scoring with exact SHAP, drift.

The gateway calls this package as a library: featurize a proposal
(:mod:`explain.features`), score it with exact TreeSHAP contributions through
the async :class:`MicroBatcher`, word the explanation, and watch drift. Models
are content-addressed files kept by the :class:`Registry`; a default model,
trained on the documented bootstrap rules, ships in ``explain/models/``.
Imports ``adapters`` for the action and state types, nothing else of govgate's.

Example::

    model = Registry(data_dir / "models").load()
    async with MicroBatcher(Scorer(model)) as batcher:
        explanation = await batcher.score(featurize(action, state, Context()))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from explain.errors import (
    ExplainError,
    ModelCorruptError,
    ModelNotFoundError,
    ModelUnavailableError,
    SchemaMismatchError,
    ScorerOverloadedError,
    ScoringFailedError,
    ScoringTimeoutError,
    TrainingDataError,
)

if TYPE_CHECKING:
    from explain.batcher import BatcherConfig, MicroBatcher
    from explain.drift import FeatureDrift, Profile, Thresholds, drift
    from explain.explanation import Contribution, Explanation
    from explain.features import FEATURE_NAMES, FEATURES, SCHEMA_VERSION, Context, featurize
    from explain.model import Model, ModelId, load_model
    from explain.registry import Registry
    from explain.scorer import Scorer, Scores
    from explain.train import DataSource, Trained, TrainParams, train

# Importing XGBoost takes about a second; the errors above are cheap, and the
# rest is imported on first use, so that the command line's ledger commands,
# which import ``explain.errors`` to report failures, stay fast.
_LAZY = {
    "BatcherConfig": "batcher", "MicroBatcher": "batcher",
    "FeatureDrift": "drift", "Profile": "drift", "Thresholds": "drift", "drift": "drift",
    "Contribution": "explanation", "Explanation": "explanation",
    "FEATURE_NAMES": "features", "FEATURES": "features", "SCHEMA_VERSION": "features",
    "Context": "features", "featurize": "features",
    "Model": "model", "ModelId": "model", "load_model": "model",
    "Registry": "registry", "Scorer": "scorer", "Scores": "scorer",
    "DataSource": "train", "TrainParams": "train", "Trained": "train", "train": "train",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'explain' has no attribute {name!r}")
    return getattr(importlib.import_module(f"explain.{module}"), name)


__all__ = [
    "FEATURES",
    "FEATURE_NAMES",
    "SCHEMA_VERSION",
    "BatcherConfig",
    "Context",
    "Contribution",
    "DataSource",
    "ExplainError",
    "Explanation",
    "FeatureDrift",
    "MicroBatcher",
    "Model",
    "ModelCorruptError",
    "ModelId",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "Profile",
    "Registry",
    "SchemaMismatchError",
    "Scorer",
    "ScorerOverloadedError",
    "Scores",
    "ScoringFailedError",
    "ScoringTimeoutError",
    "Thresholds",
    "TrainParams",
    "Trained",
    "TrainingDataError",
    "drift",
    "featurize",
    "load_model",
    "train",
]
