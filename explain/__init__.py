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

from explain.batcher import BatcherConfig, MicroBatcher
from explain.drift import FeatureDrift, Profile, Thresholds, drift
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
from explain.explanation import Contribution, Explanation
from explain.features import FEATURE_NAMES, FEATURES, SCHEMA_VERSION, Context, featurize
from explain.model import Model, ModelId, load_model
from explain.registry import Registry
from explain.scorer import Scorer, Scores
from explain.train import DataSource, Trained, TrainParams, train

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
