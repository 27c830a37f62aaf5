"""Model files: content-addressed XGBoost boosters tied to one feature schema.

A model file is the booster in XGBoost's UBJSON format (``.ubj``). Its id is
the lowercase hex SHA-256 of the file's bytes, so a model id in a ledger
record names exactly one model, and a file that does not hash to its id is
refused. The booster carries its feature names and the attribute
``govgate_schema`` (the :data:`~explain.features.SCHEMA_VERSION` it was trained on);
a model from another schema is refused rather than fed misaligned features.

Loading is all or nothing: the bytes are hashed, parsed, checked against the
schema and made to score one probe row before a :class:`Model` exists.

Example::

    model = load_model(raw, expected_id=model_id)
    assert model.id == model_id and model.schema == SCHEMA_VERSION
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NewType

import numpy as np

from explain.errors import ModelCorruptError, SchemaMismatchError
from explain.features import FEATURE_NAMES, SCHEMA_VERSION

if TYPE_CHECKING:  # imported when a model is loaded: reading cards needs no XGBoost
    import xgboost as xgb

__all__ = ["SCHEMA_ATTR", "Model", "ModelId", "load_model", "model_bytes", "model_id_of"]

ModelId = NewType("ModelId", str)  # lowercase hex SHA-256 of the model file
SCHEMA_ATTR = "govgate_schema"
MAX_MODEL_BYTES = 64 << 20  # a default model is ~100 KB; anything near this is not ours


def model_id_of(raw: bytes) -> ModelId:
    return ModelId(hashlib.sha256(raw).hexdigest())


def model_bytes(booster: xgb.Booster) -> bytes:
    """Serialise a trained booster as a govgate model file (stamps the schema)."""
    booster.feature_names = list(FEATURE_NAMES)
    booster.set_attr(**{SCHEMA_ATTR: SCHEMA_VERSION})
    return bytes(booster.save_raw(raw_format="ubj"))


@dataclass(frozen=True)
class Model:
    """A verified model, ready to score. Thread-safe for prediction."""

    id: ModelId
    booster: xgb.Booster = field(repr=False)
    schema: str
    size: int  # bytes
    trees: int


# Fixed probe rows (one per feature's scale: flags, counts, log sizes, fractions).
_PROBES = np.array(
    [[(i * 7 + r * 3) % 5 * (0.25 if r % 2 else 1.0) for i in range(len(FEATURE_NAMES))]
     for r in range(4)],
)  # fmt: skip


def _check_structure(booster: Any, mid: str) -> None:
    """A model govgate can explain: gradient-boosted trees (gbtree, what `govgate model
    train` makes) with the logistic objective (risk is the sigmoid of the margin), every
    split on one of the schema's features."""
    try:
        config = json.loads(booster.save_config())["learner"]
        objective = config["objective"]["name"]
        kind = config["gradient_booster"]["name"]
    except (KeyError, TypeError, ValueError) as err:
        raise ModelCorruptError(f"model {mid[:12]}: its settings cannot be read ({err})") from err
    if objective != "binary:logistic" or kind != "gbtree":
        raise ModelCorruptError(
            f"model {mid[:12]} is {kind} with objective {objective}: govgate explains "
            "gradient-boosted trees (gbtree) with binary:logistic"
        )
    try:
        model = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]
        highest = max(
            (index for tree in model["trees"]
             for index, left in zip(tree["split_indices"], tree["left_children"], strict=True)
             if left != -1),
            default=-1,
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as err:
        raise ModelCorruptError(f"model {mid[:12]}: its trees cannot be read ({err})") from err
    if highest >= len(FEATURE_NAMES):
        raise ModelCorruptError(
            f"model {mid[:12]} splits on feature {highest}; the schema has {len(FEATURE_NAMES)}"
        )


def load_model(raw: bytes, expected_id: str | None = None, *, nthread: int = 1) -> Model:
    """Verify and load model bytes; raise rather than return a half-usable model."""
    if len(raw) > MAX_MODEL_BYTES:
        raise ModelCorruptError(f"model file is {len(raw)} bytes, over {MAX_MODEL_BYTES}")
    mid = model_id_of(raw)
    if expected_id is not None and mid != expected_id:
        raise ModelCorruptError(
            f"model file hashes to {mid[:12]}..., not its id {expected_id[:12]}...: "
            "it was changed or is not the file it claims to be"
        )
    import xgboost as xgb

    try:
        booster = xgb.Booster(params={"nthread": nthread}, model_file=bytearray(raw))
    except xgb.core.XGBoostError as err:
        raise ModelCorruptError(f"model {mid[:12]} is not a readable XGBoost model") from err
    schema = booster.attr(SCHEMA_ATTR)
    if schema != SCHEMA_VERSION:
        raise SchemaMismatchError(
            f"model {mid[:12]} was trained on feature schema {schema or '(none)'}, "
            f"this govgate uses {SCHEMA_VERSION}: retrain it with 'govgate model train'"
        )
    if tuple(booster.feature_names or ()) != FEATURE_NAMES or (
        booster.num_features() != len(FEATURE_NAMES)
    ):
        raise SchemaMismatchError(
            f"model {mid[:12]} claims schema {schema} but its features "
            f"{booster.feature_names} are not {list(FEATURE_NAMES)}"
        )
    _check_structure(booster, mid)
    # Probes: all missing, and a few fixed rows. The exact SHAP values must add up to the
    # model's own margin on each (they do for any sound tree model).
    probe = np.vstack([np.full(len(FEATURE_NAMES), np.nan), _PROBES]).astype(np.float32)
    try:
        matrix = xgb.DMatrix(probe, feature_names=list(FEATURE_NAMES))
        out = booster.predict(matrix)
        margin = booster.predict(matrix, output_margin=True)
        contributions = booster.predict(matrix, pred_contribs=True)
    except xgb.core.XGBoostError as err:
        raise ModelCorruptError(f"model {mid[:12]} cannot score") from err
    if out.shape != (len(probe),) or not np.isfinite(out).all():
        raise ModelCorruptError(f"model {mid[:12]} gives non-finite or mis-shaped output")
    if not np.allclose(contributions.sum(axis=1), margin, rtol=0, atol=1e-4):
        raise ModelCorruptError(
            f"model {mid[:12]}: its SHAP values do not add up to its own margin"
        )
    trees = booster.num_boosted_rounds()
    return Model(id=mid, booster=booster, schema=schema, size=len(raw), trees=trees)
