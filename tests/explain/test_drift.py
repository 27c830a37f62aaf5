"""Drift: PSI known answers, profiles from bootstrap data, shifts, and the stored profile."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from explain.bootstrap import generate, to_matrix
from explain.drift import EPSILON, FeatureProfile, Profile, Thresholds, drift, psi
from explain.errors import ExplainError
from explain.features import FEATURE_INDEX, FEATURE_NAMES

Matrix = npt.NDArray[np.float32]
N = len(FEATURE_NAMES)


@pytest.fixture(scope="module")
def reference() -> Matrix:
    x, _ = to_matrix(generate(2000, seed=1))
    return x


@pytest.fixture(scope="module")
def recent() -> Matrix:
    x, _ = to_matrix(generate(2000, seed=2))
    return x


@pytest.fixture(scope="module")
def profile(reference: Matrix) -> Profile:
    return Profile.from_matrix(reference)


def by_feature(profile: Profile, x: Matrix) -> dict[str, tuple[float, str]]:
    return {d.feature: (d.psi, d.level) for d in drift(profile, x)}


# --------------------------------------------------------------------------- PSI


def test_psi_known_answer():
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5)
    #   = 0.25 ln 2 + 0.25 ln 1.5 = 0.25 ln 3
    expected = 0.25 * math.log(3)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(expected, rel=1e-12)
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.2746530721670274, rel=1e-12)


def test_psi_is_zero_for_identical_and_symmetric():
    assert psi([0.1, 0.2, 0.7], [0.1, 0.2, 0.7]) == 0.0
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(psi([0.25, 0.75], [0.5, 0.5]))


def test_psi_floors_empty_bins():
    # An empty reference bin counts as EPSILON: (0.5 - 1e-4) ln(0.5 / 1e-4) + ...
    got = psi([1.0, 0.0], [0.5, 0.5])
    expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - EPSILON) * math.log(0.5 / EPSILON)
    assert got == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(got)


def test_psi_needs_equal_bins():
    with pytest.raises(ValueError, match="shorter"):
        psi([0.5, 0.5], [1.0])


# --------------------------------------------------------------------------- histograms


def test_histogram_bins_are_right_closed_with_missing_last():
    prof = FeatureProfile((1.0, 2.0), ())
    column = np.array([0.0, 1.0, 1.5, 2.0, 3.0, np.nan, np.nan, 2.5], dtype=np.float32)
    # (-inf, 1]: 0, 1   (1, 2]: 1.5, 2   (2, inf): 3, 2.5   missing: 2 of 8
    np.testing.assert_array_equal(prof.histogram(column), [0.25, 0.25, 0.25, 0.25])


def test_profile_from_constant_and_missing_columns():
    x = np.ones((10, N), dtype=np.float32)
    x[:, 0] = np.nan  # destructiveness column all missing
    x[:4, 1] = np.nan  # irreversible: 4 of 10 missing
    p = Profile.from_matrix(x)
    assert p.rows == 10
    assert p.features["destructiveness"] == FeatureProfile((), (0.0, 1.0))
    assert p.features["irreversible"].edges == (1.0,)
    assert p.features["irreversible"].fractions == pytest.approx((0.6, 0.0, 0.4))


# --------------------------------------------------------------------------- bootstrap data


def test_profile_has_deciles(profile: Profile):
    assert set(profile.features) == set(FEATURE_NAMES)
    assert profile.rows == 2000
    for name, p in profile.features.items():
        assert len(p.fractions) == len(p.edges) + 2, name
        assert list(p.edges) == sorted(set(p.edges)), name
        assert sum(p.fractions) == pytest.approx(1.0), name
        assert len(p.edges) <= 9, name
    # hour_of_day is continuous: nine distinct inner deciles, about 10% per bin
    hours = profile.features["hour_of_day"]
    assert len(hours.edges) == 9
    for f in hours.fractions[:-1]:
        assert f == pytest.approx(0.1, abs=0.01)
    assert hours.fractions[-1] == 0.0


def test_another_seed_is_stable(profile: Profile, recent: Matrix):
    result = drift(profile, recent)
    assert [d.feature for d in result] == list(FEATURE_NAMES)
    for d in result:
        assert 0.0 <= d.psi < 0.1, d
        assert d.level == "stable", d


def test_own_training_data_has_no_drift(profile: Profile, reference: Matrix):
    for d in drift(profile, reference):
        assert d.psi == pytest.approx(0.0, abs=1e-12), d


def test_all_production_is_a_significant_shift(profile: Profile, recent: Matrix):
    shifted = recent.copy()
    shifted[:, FEATURE_INDEX["environment"]] = 2.0
    result = by_feature(profile, shifted)
    assert result["environment"][1] == "significant"
    assert result["environment"][0] > 0.25
    assert result["destructiveness"][1] == "stable"
    assert result["hour_of_day"][1] == "stable"
    # only that column moved
    before = by_feature(profile, recent)
    for name in FEATURE_NAMES:
        if name != "environment":
            assert result[name] == before[name], name


def test_engine_stops_giving_confidence(profile: Profile, recent: Matrix):
    shifted = recent.copy()
    shifted[:, FEATURE_INDEX["engine_confidence"]] = np.nan
    result = by_feature(profile, shifted)
    assert result["engine_confidence"][1] == "significant"
    assert result["criticality"][1] == "stable"


def test_missing_values_are_their_own_bin():
    ref = np.ones((50, N), dtype=np.float32)  # nothing missing, one value per column
    prof = Profile.from_matrix(ref)
    assert prof.features["vcpus"] == FeatureProfile((1.0,), (1.0, 0.0, 0.0))
    recent = np.full((20, N), np.nan, dtype=np.float32)
    result = drift(prof, recent)
    # bins: reference (1, 0, 0) against recent (0, 0, 1), empty bins floored at EPSILON
    expected = 2 * (1 - EPSILON) * math.log(1 / EPSILON)
    for d in result:
        assert d.psi == pytest.approx(expected, rel=1e-9), d.feature
        assert d.level == "significant"
    assert expected > 18


# --------------------------------------------------------------------------- stored profile


def test_profile_json_round_trip(profile: Profile, recent: Matrix):
    text = json.dumps(profile.to_json())
    back = Profile.from_json(json.loads(text))
    assert back.rows == profile.rows
    assert dict(back.features) == dict(profile.features)
    shifted = recent.copy()
    shifted[:, FEATURE_INDEX["off_hours"]] = 1.0
    assert drift(back, recent) == drift(profile, recent)
    assert drift(back, shifted) == drift(profile, shifted)


def _broken(profile: Profile, edit: Any) -> dict[str, Any]:
    obj = copy.deepcopy(profile.to_json())
    edit(obj)
    return obj


def _unsort(obj: dict[str, Any]) -> None:
    edges = obj["features"]["hour_of_day"]["edges"]
    edges[0], edges[1] = edges[1], edges[0]


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda o: o["features"].pop("shrink"), id="missing-feature"),
        pytest.param(lambda o: o["features"]["vcpus"]["fractions"].pop(), id="short-fractions"),
        pytest.param(
            lambda o: o["features"]["vcpus"]["fractions"].append(0.0), id="long-fractions"
        ),
        pytest.param(_unsort, id="unsorted-edges"),
        pytest.param(lambda o: o.pop("rows"), id="no-rows"),
        pytest.param(lambda o: o["features"]["vcpus"].pop("edges"), id="no-edges"),
        pytest.param(lambda o: o["features"]["vcpus"].update(edges="abc"), id="text-edges"),
        pytest.param(lambda o: o["features"]["vcpus"].update(edges=7), id="number-edges"),
        pytest.param(lambda o: o.update(features=[]), id="features-list"),
    ],
)
def test_malformed_profile_is_refused(profile: Profile, edit: Any):
    with pytest.raises(ExplainError):
        Profile.from_json(_broken(profile, edit))


@pytest.mark.parametrize("obj", [None, [], "profile", 3])
def test_profile_json_not_an_object(obj: Any):
    with pytest.raises(ExplainError):
        Profile.from_json(obj)


# --------------------------------------------------------------------------- bad input, thresholds


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((N,), "shape"),
        ((10, N - 1), "shape"),
        ((10, N + 1), "shape"),
        ((2, 3, N), "shape"),
        ((0, N), "no recent rows"),
    ],
    ids=str,
)
def test_bad_shapes(profile: Profile, shape: tuple[int, ...], message: str):
    with pytest.raises(ValueError, match=message):
        drift(profile, np.zeros(shape, dtype=np.float32))


def test_threshold_boundaries():
    t = Thresholds()
    assert t.level(0.0) == "stable"
    assert t.level(0.0999) == "stable"
    assert t.level(0.1) == "moderate"
    assert t.level(0.2499) == "moderate"
    assert t.level(0.25) == "significant"
    assert t.level(3.0) == "significant"


def test_custom_thresholds_are_used(profile: Profile, recent: Matrix):
    strict = Thresholds(moderate=0.0, significant=1e-9)
    levels = {d.feature: d.level for d in drift(profile, recent, strict)}
    assert set(levels.values()) == {"significant"}
    assert Thresholds(moderate=0.5, significant=0.9).level(0.6) == "moderate"
