"""Training, model files, the registry and exact scoring, on real XGBoost models."""

from __future__ import annotations

import hashlib
import json
import math
import warnings

import numpy as np
import numpy.typing as npt
import pytest
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from explain.bootstrap import generate, to_matrix, true_logit
from explain.errors import (
    ModelCorruptError,
    ModelNotFoundError,
    SchemaMismatchError,
    ScoringFailedError,
    TrainingDataError,
)
from explain.features import FEATURE_INDEX, FEATURE_NAMES, FEATURES, MONOTONE, SCHEMA_VERSION
from explain.model import SCHEMA_ATTR, Model, load_model, model_id_of
from explain.registry import BUNDLED_DIR, Registry
from explain.scorer import Scorer
from explain.train import DataSource, Trained, TrainParams, data_digest, train

Data = tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]


def _rows(n: int = 400, seed: int = 11) -> npt.NDArray[np.float32]:
    return to_matrix(generate(n, seed=seed))[0]


# -- exactness ---------------------------------------------------------------------------


@pytest.mark.parametrize("vectorized", [True, False], ids=["tables", "pred_contribs"])
@pytest.mark.parametrize("which", ["bundled_model", "small_model"])
def test_contributions_reproduce_margin_and_risk(
    which: str, vectorized: bool, request: pytest.FixtureRequest
):
    model: Model = request.getfixturevalue(which)
    x = _rows()
    assert np.isnan(x).any(), "the rows should exercise missing values"
    scorer = Scorer(model, vectorized=vectorized)
    assert (scorer.tables is not None) == vectorized  # both models' trees are shallow
    scores = scorer.score(x)
    dm = xgb.DMatrix(x, feature_names=list(FEATURE_NAMES))
    margin = model.booster.predict(dm, output_margin=True)
    prob = model.booster.predict(dm)
    recomposed = scores.base_value + scores.contributions.sum(axis=1)
    np.testing.assert_allclose(recomposed, margin, atol=1e-5, rtol=0)
    np.testing.assert_allclose(scores.risk, prob, atol=1e-6, rtol=0)
    exp = scores.explanation(3)
    assert exp.risk == pytest.approx(1 / (1 + math.exp(-exp.margin)), abs=1e-12)
    assert exp.schema_version == SCHEMA_VERSION
    assert exp.model_id == model.id


@pytest.mark.parametrize("vectorized", [True, False], ids=["tables", "pred_contribs"])
def test_contributions_agree_with_shap_tree_explainer(bundled_model: Model, vectorized: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, PendingDeprecationWarning))
        import shap

    x = _rows(300, seed=12)
    ours = Scorer(bundled_model, vectorized=vectorized).score(x)
    explainer = shap.TreeExplainer(bundled_model.booster)
    theirs = explainer.shap_values(x)
    np.testing.assert_allclose(ours.contributions, theirs, atol=1e-5, rtol=0)
    assert float(np.ravel(explainer.expected_value)[0]) == pytest.approx(ours.base_value, abs=1e-5)


def test_scorer_refuses_bad_shapes_and_nonfinite_output(small_model: Model, monkeypatch):
    scorer = Scorer(small_model, vectorized=False)
    tabled = Scorer(small_model)
    assert tabled.tables is not None
    with pytest.raises(ValueError, match="shape"):
        scorer.score(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="nothing"):
        scorer.score(np.zeros((0, len(FEATURE_NAMES)), dtype=np.float32))

    def nan_predict(*args: object, **kwargs: object) -> npt.NDArray[np.float32]:
        return np.full((1, len(FEATURE_NAMES) + 1), np.nan, dtype=np.float32)

    for which in (scorer, tabled):
        with pytest.raises(ScoringFailedError, match="infinite"):
            which.score(np.full((1, len(FEATURE_NAMES)), np.inf, dtype=np.float32))
    monkeypatch.setattr(small_model.booster, "predict", nan_predict)
    with pytest.raises(ScoringFailedError, match="non-finite"):
        scorer.score(_rows(1))

    def nan_contributions(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        return np.full((len(x), len(FEATURE_NAMES)), np.nan)

    monkeypatch.setattr(tabled.tables, "contributions", nan_contributions)
    with pytest.raises(ScoringFailedError, match="non-finite"):
        tabled.score(_rows(1))


# -- what the model learned --------------------------------------------------------------


def test_bundled_model_learns_the_bootstrap_rules(bundled_model: Model):
    """On fresh data, the model ranks nearly as well as the rule that made the labels."""
    ex = generate(6000, seed=99)
    x, y = to_matrix(ex)
    oracle = roc_auc_score(y, [true_logit(row) for row in x])
    ours = roc_auc_score(y, Scorer(bundled_model).score(x).risk)
    assert ours > oracle - 0.02, (ours, oracle)


@pytest.mark.parametrize("feature", [f.name for f in FEATURES if f.monotone], ids=lambda name: name)
def test_bundled_model_respects_monotone_constraints(bundled_model: Model, feature: str):
    """Raising a +1 feature never lowers risk; raising a -1 feature never raises it."""
    i = FEATURE_INDEX[feature]
    sign = MONOTONE[i]
    x = _rows(200, seed=5)
    present = x[:, i][~np.isnan(x[:, i])]
    grid = np.unique(np.concatenate([present, [present.min() - 1, present.max() + 1]]))
    margins = []
    for v in grid:
        xv = x.copy()
        xv[:, i] = v
        dm = xgb.DMatrix(xv, feature_names=list(FEATURE_NAMES))
        margins.append(bundled_model.booster.predict(dm, output_margin=True))
    # Float addition is monotone, so the trees' sum must be exactly monotone too.
    steps = np.diff(np.stack(margins), axis=0) * sign
    assert steps.min() >= 0


def test_training_is_deterministic_and_card_is_complete(
    bootstrap_data: Data, small_trained: Trained
):
    x, y = bootstrap_data
    again = train(x, y, TrainParams(max_depth=3, n_estimators=40), DataSource("bootstrap", "t"))
    assert again.raw == small_trained.raw
    assert small_trained.model_id == hashlib.sha256(small_trained.raw).hexdigest()
    card = small_trained.card
    assert card["model_id"] == small_trained.model_id
    assert card["schema_version"] == SCHEMA_VERSION
    assert card["data"]["sha256"] == data_digest(x, y)
    assert card["data"]["rows"] == len(y)
    assert card["data"]["positives"] == int(y.sum())
    assert card["data"]["train_rows"] + card["data"]["holdout_rows"] == len(y)
    assert card["constraints"] == {f.name: f.monotone for f in FEATURES if f.monotone}
    m = card["metrics"]
    assert 0.5 < m["roc_auc"] <= 1
    assert 0 < m["pr_auc"] <= 1
    assert 0 < m["brier"] < 0.25
    assert sum(b["rows"] for b in m["calibration"]) == m["holdout_rows"]
    assert [f["name"] for f in card["features"]] == list(FEATURE_NAMES)
    assert set(card["reference"]["features"]) == set(FEATURE_NAMES)
    assert card["intended_use"]
    assert any("synthetic" in limit for limit in card["limits"])


def test_card_metrics_are_the_held_out_metrics(bootstrap_data: Data, small_trained: Trained):
    from explain.train import split

    x, y = bootstrap_data
    _, held = split(len(y), 0.2, 1)
    model = load_model(small_trained.raw)
    p = model.booster.predict(xgb.DMatrix(x[held], feature_names=list(FEATURE_NAMES)))
    assert small_trained.metrics["roc_auc"] == pytest.approx(roc_auc_score(y[held], p), abs=1e-9)
    # A different split would give a different figure: the check can fail.
    _, other = split(len(y), 0.2, 2)
    q = model.booster.predict(xgb.DMatrix(x[other], feature_names=list(FEATURE_NAMES)))
    assert small_trained.metrics["roc_auc"] != pytest.approx(roc_auc_score(y[other], q), abs=1e-9)


def test_training_refuses_unusable_data(bootstrap_data: Data):
    x, y = bootstrap_data
    src = DataSource("history", "t")
    with pytest.raises(TrainingDataError, match="at least"):
        train(x[:10], y[:10], TrainParams(), src)
    with pytest.raises(TrainingDataError, match="harmful"):
        train(x, np.zeros_like(y), TrainParams(), src)
    with pytest.raises(TrainingDataError, match="labels"):
        train(x, y * 2, TrainParams(), src)
    with pytest.raises(TrainingDataError, match="matrix"):
        train(x[:, :5], y, TrainParams(), src)
    with pytest.raises(ValueError, match="max_depth"):
        TrainParams(max_depth=0)


# -- model files and the registry --------------------------------------------------------


def test_bundled_default_is_registered_verified_and_current(bundled_model: Model):
    reg = Registry("/nonexistent-registry")
    default = (BUNDLED_DIR / "DEFAULT").read_text().strip()
    assert bundled_model.id == default == reg.active_id()
    assert bundled_model.schema == SCHEMA_VERSION
    assert model_id_of((BUNDLED_DIR / f"{default}.ubj").read_bytes()) == default
    card = reg.card()
    assert card["model_id"] == default
    assert card["parameters"]["max_depth"] == 3
    assert card["parameters"]["n_estimators"] == 150
    [entry] = reg.entries()
    assert entry.bundled
    assert entry.active


def test_registry_add_activate_and_resolve(tmp_path, small_trained: Trained):
    reg = Registry(tmp_path / "models")
    mid = reg.add(small_trained.raw, small_trained.card)
    assert reg.add(small_trained.raw, small_trained.card) == mid  # idempotent
    assert {e.id for e in reg.entries()} == {mid, reg.default_id()}
    assert reg.active_id() == reg.default_id()
    reg.activate(mid[:8])
    assert reg.active_id() == mid
    assert reg.load().id == mid
    assert reg.resolve("active").id == mid
    assert (tmp_path / "models" / f"{mid}.card.md").read_text().startswith("# Model card")
    with pytest.raises(ModelNotFoundError, match="no model"):
        reg.resolve("abcdef0123")
    with pytest.raises(ModelNotFoundError, match="not a model id"):
        reg.resolve("xyz")


def test_registry_refuses_ambiguous_prefix(tmp_path, small_trained: Trained):
    reg = Registry(tmp_path, bundled=None)
    a = reg.add(small_trained.raw, small_trained.card)
    twin = a[:6] + ("0" if a[6] != "0" else "1") + a[7:]
    (tmp_path / f"{twin}.ubj").write_bytes(small_trained.raw)  # resolving reads no file
    with pytest.raises(ModelNotFoundError, match="ambiguous"):
        reg.resolve(a[:6])
    assert reg.resolve(a[:7]).id == a
    with pytest.raises(ModelNotFoundError, match="not a model id"):
        reg.resolve(a[:3])
    with pytest.raises(ModelCorruptError, match="not its id"):
        reg.load(twin)


def test_tampered_model_file_is_refused(tmp_path, small_trained: Trained):
    reg = Registry(tmp_path, bundled=None)
    mid = reg.add(small_trained.raw, small_trained.card)
    path = tmp_path / f"{mid}.ubj"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelCorruptError, match="not its id"):
        reg.load(mid)
    with pytest.raises(ModelCorruptError):
        reg.activate(mid)
    assert not (tmp_path / "ACTIVE").exists()


def test_corrupt_and_wrong_schema_models_are_refused(small_trained: Trained):
    garbage = b"\x00not a model at all"
    with pytest.raises(ModelCorruptError, match="not a readable"):
        load_model(garbage, model_id_of(garbage))
    truncated = small_trained.raw[: len(small_trained.raw) // 2]
    with pytest.raises(ModelCorruptError):
        load_model(truncated, model_id_of(truncated))

    booster = xgb.Booster(model_file=bytearray(small_trained.raw))
    booster.set_attr(**{SCHEMA_ATTR: "govgate.features/v0"})
    old = bytes(booster.save_raw(raw_format="ubj"))
    with pytest.raises(SchemaMismatchError, match="v0"):
        load_model(old, model_id_of(old))

    booster = xgb.Booster(model_file=bytearray(small_trained.raw))
    booster.feature_names = [f"f{i}" for i in range(len(FEATURE_NAMES))]
    renamed = bytes(booster.save_raw(raw_format="ubj"))
    with pytest.raises(SchemaMismatchError, match="features"):
        load_model(renamed, model_id_of(renamed))


def test_models_govgate_cannot_explain_are_refused(small_trained: Trained):
    """Stamped with the schema and named features, but not what risk and SHAP assume:
    another objective or booster, or a split on a feature the schema does not have (its
    SHAP values then do not add up to its own margin)."""
    x, y = to_matrix(generate(2000, seed=3))
    data = xgb.DMatrix(x, label=y, feature_names=list(FEATURE_NAMES))
    for params, needle in (
        ({"objective": "reg:squarederror"}, "objective reg:squarederror"),
        ({"booster": "dart", "objective": "binary:logistic"}, "is dart"),
        ({"booster": "gblinear", "objective": "binary:logistic"}, "is gblinear"),
    ):
        other = xgb.train(params, data, 10)
        other.set_attr(**{SCHEMA_ATTR: SCHEMA_VERSION})
        raw = bytes(other.save_raw(raw_format="ubj"))
        with pytest.raises(ModelCorruptError, match=needle):
            load_model(raw, model_id_of(raw))

    doc = json.loads(bytes(xgb.Booster(model_file=bytearray(small_trained.raw)).save_raw("json")))
    tree = doc["learner"]["gradient_booster"]["model"]["trees"][0]
    tree["split_indices"][0] = 500  # the root of the first tree
    bad = bytes(xgb.Booster(model_file=bytearray(json.dumps(doc).encode())).save_raw("ubj"))
    with pytest.raises(ModelCorruptError, match="splits on feature 500"):
        load_model(bad, model_id_of(bad))
    load_model(small_trained.raw, model_id_of(small_trained.raw))  # the sound one still loads


def test_registry_refuses_bad_active_marker_and_cards(tmp_path, small_trained: Trained):
    reg = Registry(tmp_path, bundled=None)
    with pytest.raises(ModelNotFoundError, match="train one"):
        reg.active_id()
    mid = reg.add(small_trained.raw, small_trained.card)
    (tmp_path / "ACTIVE").write_text("not-an-id\n")
    with pytest.raises(ModelCorruptError, match="ACTIVE"):
        reg.load()
    (tmp_path / f"{mid}.card.json").write_text('{"model_id": "' + "0" * 64 + '"}')
    with pytest.raises(ModelCorruptError, match="does not describe"):
        reg.verify(mid)
    (tmp_path / f"{mid}.card.json").write_text("{not json")
    with pytest.raises(ModelCorruptError, match="not valid JSON"):
        reg.card(mid)
    with pytest.raises(ValueError, match="card"):
        reg.add(small_trained.raw, {"model_id": "0" * 64})


def test_a_card_without_a_usable_drift_reference_is_refused(tmp_path, small_trained: Trained):
    """The drift metric and the compliance reports read the card's reference: a card
    without one (or with an empty one) must not verify, and so cannot be activated."""
    reg = Registry(tmp_path, bundled=None)
    mid = reg.add(small_trained.raw, small_trained.card)
    reg.verify(mid)
    for reference in (None, [], {"rows": 10, "features": {}}):
        card = dict(small_trained.card)
        if reference is None:
            del card["reference"]
        else:
            card["reference"] = reference
        (tmp_path / f"{mid}.card.json").write_text(json.dumps(card))
        with pytest.raises(ModelCorruptError, match="drift reference"):
            reg.verify(mid)


def test_explanation_record_is_float_free_and_exact(bundled_model: Model):
    exp = Scorer(bundled_model).score(_rows(5)).explanation(2)
    rec = exp.to_record()
    assert all(isinstance(v, str) for v in rec["contributions"].values())
    assert float(rec["risk"]) == exp.risk
    assert float(rec["base_value"]) == exp.base_value
    assert {k: float(v) for k, v in rec["contributions"].items()} == dict(exp.contributions)
    assert rec["model_id"] == bundled_model.id
    # The vector the model scored, exactly, an unknown value as null.
    assert list(rec["features"]) == list(exp.values)
    for name, value in exp.values.items():
        recorded = rec["features"][name]
        assert recorded is None if math.isnan(value) else float(recorded) == value
