"""The feature schema: pinned names, a known-answer vector, unknown encodings, time.

The expected values below are worked out by hand from the documented encodings in
``explain/features.py`` (and ``docs/explain.md``), not copied from ``featurize``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from adapters.action import Action, PowerState, RuntimeState, Target, Verb
from explain.features import (
    DESTRUCTIVENESS,
    FEATURE_INDEX,
    FEATURE_NAMES,
    FEATURES,
    MONOTONE,
    SCHEMA_VERSION,
    Context,
    featurize,
    featurize_many,
)
from explain.history import read_proposal

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "actions"

# A Wednesday, inside working hours in UTC.
WEDNESDAY_10 = dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC)

# Reordering, renaming, adding or removing a feature changes what every stored model
# means: it needs a new SCHEMA_VERSION. Update both together, never this tuple alone.
PINNED_V1 = (
    "destructiveness",
    "irreversible",
    "environment",
    "criticality",
    "blast_radius",
    "changes_state",
    "running",
    "vcpu_change",
    "memory_change",
    "shrink",
    "has_snapshot",
    "engine_confidence",
    "justification_words",
    "hour_of_day",
    "off_hours",
    "recent_actions",
    "uptime_hours",
    "vcpus",
    "memory_gib",
)


def act(verb: Verb = Verb.START, runtime: str = "libvirt", **kw: Any) -> Action:
    return Action(verb=verb, target=Target(runtime, "vm-1"), **kw)


def features(
    action: Action, state: RuntimeState | None = None, now: dt.datetime = WEDNESDAY_10
) -> dict[str, float]:
    x = featurize(action, state or RuntimeState(), Context(now=now))
    assert x.dtype == np.float32
    assert x.shape == (len(FEATURE_NAMES),)
    return {name: float(x[i]) for name, i in FEATURE_INDEX.items()}


def f32(value: float) -> float:
    return float(np.float32(value))


# --------------------------------------------------------------------------- the schema


def test_schema_is_pinned():
    assert SCHEMA_VERSION == "govgate.features/v1"
    assert FEATURE_NAMES == PINNED_V1
    assert tuple(f.name for f in FEATURES) == PINNED_V1
    assert dict(FEATURE_INDEX) == {n: i for i, n in enumerate(PINNED_V1)}
    assert len(MONOTONE) == len(PINNED_V1)
    assert set(MONOTONE) <= {-1, 0, 1}


def test_every_feature_is_documented():
    for f in FEATURES:
        assert f.description, f.name
        assert f.unknown, f.name
        assert isinstance(f.phrase(0.0), str)
        assert isinstance(f.phrase(1.0), str)


def test_destructiveness_table():
    assert set(DESTRUCTIVENESS) == set(Verb)
    for verb, value in DESTRUCTIVENESS.items():
        assert 0.0 <= value <= 1.0, verb
    top = max(DESTRUCTIVENESS.values())
    assert DESTRUCTIVENESS[Verb.DELETE] == top == 1.0
    assert [v for v, d in DESTRUCTIVENESS.items() if d == top] == [Verb.DELETE]
    assert DESTRUCTIVENESS[Verb.SNAPSHOT] == min(DESTRUCTIVENESS.values())


# --------------------------------------------------------------------------- known answer


def test_known_answer_delete_production():
    obj = json.loads((EXAMPLES / "delete-production-high-risk.json").read_text())
    action, state, when = read_proposal(obj, "x")
    assert when == dt.datetime(2026, 11, 28, 2, 40, tzinfo=dt.UTC)  # a Saturday
    x = featurize(action, state, Context(now=when))
    expected = {
        "destructiveness": 1.0,  # delete is the most destructive verb
        "irreversible": 1.0,  # delete cannot be undone
        "environment": 2.0,  # "production"
        "criticality": 3.0,  # "critical"
        "blast_radius": math.log2(1 + 12),  # dependents "12"
        "changes_state": 1.0,  # deleting a running domain is never a no-op
        "running": 1.0,  # power "running"
        "vcpu_change": 0.0,  # not a resize
        "memory_change": 0.0,
        "shrink": 0.0,  # max(0, -min(0, 0))
        "has_snapshot": 0.0,  # snapshots 0
        "engine_confidence": 0.41,
        "justification_words": 0.0,  # empty justification: log2(1 + 0)
        "hour_of_day": 2 + 40 / 60,  # 02:40 UTC
        "off_hours": 1.0,  # Saturday, and 02:40
        "recent_actions": 2.0,  # log2(1 + 3)
        "uptime_hours": math.log2(1 + 4320),  # 15552000 s = 4320 h
        "vcpus": 4.0,  # log2(16)
        "memory_gib": 6.0,  # 65536 MiB = 64 GiB = 2**6
    }
    assert set(expected) == set(FEATURE_NAMES)
    for name, value in expected.items():
        assert float(x[FEATURE_INDEX[name]]) == f32(value), name


def test_known_answer_shrink_production_memory():
    obj = json.loads((EXAMPLES / "shrink-production-memory.json").read_text())
    action, state, when = read_proposal(obj, "x")
    assert when is None
    f = features(action, state)
    assert f["environment"] == 2.0  # "env": "prod"
    assert f["criticality"] == 1.0  # "medium"
    assert f["memory_change"] == -2.0  # 8192 -> 2048
    assert f["vcpu_change"] == 0.0  # vcpus not resized
    assert f["shrink"] == 2.0
    assert f["justification_words"] == f32(math.log2(1 + 10))  # ten words
    assert math.isnan(f["has_snapshot"])
    assert math.isnan(f["uptime_hours"])
    assert f["recent_actions"] == 0.0


# --------------------------------------------------------------------------- unknown encodings


def test_no_labels_counts_as_production_and_high_criticality():
    f = features(act())
    assert f["environment"] == 2.0
    assert f["criticality"] == 2.0
    assert math.isnan(f["blast_radius"])


@pytest.mark.parametrize(
    ("labels", "environment"),
    [
        ({"environment": "banana"}, 2.0),
        ({"environment": "dev"}, 0.0),
        ({"env": "dev"}, 0.0),
        ({"env": "Staging"}, 1.0),
        ({"env": "UAT"}, 1.0),
        ({"environment": "live"}, 2.0),
        ({"environment": "test", "env": "prod"}, 0.0),  # "environment" is read first
        ({"environment": ""}, 2.0),
    ],
)
def test_environment_encoding(labels: dict[str, str], environment: float):
    assert features(act(), RuntimeState(labels=labels))["environment"] == environment


@pytest.mark.parametrize(
    ("value", "criticality"),
    [("low", 0.0), ("moderate", 1.0), ("major", 2.0), ("Tier0", 3.0), ("purple", 2.0)],
)
def test_criticality_encoding(value: str, criticality: float):
    state = RuntimeState(labels={"criticality": value})
    assert features(act(), state)["criticality"] == criticality


def test_missing_confidence_snapshots_and_power_are_nan():
    f = features(act(), RuntimeState(power=PowerState.UNKNOWN))
    assert math.isnan(f["engine_confidence"])
    assert math.isnan(f["has_snapshot"])
    assert math.isnan(f["running"])
    assert math.isnan(f["recent_actions"])
    assert math.isnan(f["uptime_hours"])
    assert math.isnan(f["vcpus"])
    assert math.isnan(f["memory_gib"])
    assert f["changes_state"] == 1.0  # power unknown: assume it changes something


def test_known_confidence_and_snapshots():
    f = features(act(confidence=0.25), RuntimeState(snapshots=3, power=PowerState.SHUTOFF))
    assert f["engine_confidence"] == 0.25
    assert f["has_snapshot"] == 1.0
    assert f["running"] == 0.0


@pytest.mark.parametrize("dependents", ["abc", "-3", "1.5", "", "²", "①", "٣", "9" * 4000])
def test_unparseable_dependents_is_nan(dependents: str):
    state = RuntimeState(labels={"dependents": dependents})
    assert math.isnan(features(act(), state)["blast_radius"])


def test_dependents_zero_and_seven():
    assert features(act(), RuntimeState(labels={"dependents": "0"}))["blast_radius"] == 0.0
    assert features(act(), RuntimeState(labels={"dependents": " 7 "}))["blast_radius"] == 3.0


# ---------------------------------------------------------------- changes_state and resize


def test_start_on_running_is_a_no_op():
    assert features(act(Verb.START), RuntimeState(power=PowerState.RUNNING))["changes_state"] == 0
    assert features(act(Verb.START), RuntimeState(power=PowerState.SHUTOFF))["changes_state"] == 1


@pytest.mark.parametrize(
    ("verb", "power", "changes"),
    [
        (Verb.SHUTDOWN, PowerState.SHUTOFF, 0.0),
        (Verb.SHUTDOWN, PowerState.RUNNING, 1.0),
        (Verb.DESTROY, PowerState.ABSENT, 0.0),
        (Verb.SUSPEND, PowerState.PAUSED, 0.0),
        (Verb.SUSPEND, PowerState.RUNNING, 1.0),
        (Verb.RESUME, PowerState.RUNNING, 0.0),
        (Verb.RESUME, PowerState.PAUSED, 1.0),
        (Verb.REBOOT, PowerState.SHUTOFF, 1.0),
    ],
)
def test_changes_state_by_power(verb: Verb, power: PowerState, changes: float):
    assert features(act(verb), RuntimeState(power=power))["changes_state"] == changes


def test_resize_to_identical_size_is_a_no_op():
    state = RuntimeState(power=PowerState.RUNNING, vcpus=2, memory_mib=4096)
    same = act(Verb.RESIZE, parameters={"vcpus": "2", "memory_mib": "4096"})
    f = features(same, state)
    assert f["changes_state"] == 0.0
    assert f["vcpu_change"] == 0.0
    assert f["memory_change"] == 0.0
    assert f["shrink"] == 0.0
    other = act(Verb.RESIZE, parameters={"vcpus": "2", "memory_mib": "8192"})
    assert features(other, state)["changes_state"] == 1.0


def test_memory_shrink():
    state = RuntimeState(power=PowerState.RUNNING, vcpus=2, memory_mib=8192)
    f = features(act(Verb.RESIZE, parameters={"memory_mib": "2048"}), state)
    assert f["memory_change"] == -2.0
    assert f["vcpu_change"] == 0.0
    assert f["shrink"] == 2.0


def test_vcpu_growth():
    state = RuntimeState(power=PowerState.RUNNING, vcpus=2, memory_mib=8192)
    f = features(act(Verb.RESIZE, parameters={"vcpus": "4"}), state)
    assert f["vcpu_change"] == 1.0
    assert f["shrink"] == 0.0
    assert f["vcpus"] == 1.0  # log2(2), the current size
    assert f["memory_gib"] == 3.0  # log2(8)


def test_grow_one_shrink_other():
    state = RuntimeState(vcpus=8, memory_mib=1024)
    f = features(act(Verb.RESIZE, parameters={"vcpus": "2", "memory_mib": "4096"}), state)
    assert f["vcpu_change"] == -2.0
    assert f["memory_change"] == 2.0
    assert f["shrink"] == 2.0


def test_resize_against_unknown_current_size():
    f = features(act(Verb.RESIZE, parameters={"vcpus": "4"}), RuntimeState())
    assert math.isnan(f["vcpu_change"])
    assert f["memory_change"] == 0.0  # memory is not being resized
    both = act(Verb.RESIZE, parameters={"vcpus": "4", "memory_mib": "1024"})
    f = features(both, RuntimeState())
    assert math.isnan(f["vcpu_change"])
    assert math.isnan(f["memory_change"])
    assert math.isnan(f["shrink"])


def test_other_verbs_do_not_resize():
    # create takes vcpus too, but it is not a resize of the target
    state = RuntimeState(vcpus=2, memory_mib=2048)
    f = features(act(Verb.CREATE, parameters={"vcpus": "8"}), state)
    assert f["vcpu_change"] == 0.0
    assert f["shrink"] == 0.0


def test_destroy_of_transient_domain_is_irreversible():
    destroy = act(Verb.DESTROY)
    assert features(destroy, RuntimeState(persistent=False))["irreversible"] == 1.0
    assert features(destroy, RuntimeState(persistent=True))["irreversible"] == 0.0
    assert features(destroy, RuntimeState(persistent=None))["irreversible"] == 0.0
    # persistence only matters for destroy
    assert features(act(Verb.SHUTDOWN), RuntimeState(persistent=False))["irreversible"] == 0.0
    revert = act(Verb.REVERT, parameters={"snapshot": "s1"})
    assert features(revert, RuntimeState(persistent=True))["irreversible"] == 1.0


def test_justification_words():
    f = features(act(justification="  scale   out now "))
    assert f["justification_words"] == 2.0  # log2(1 + 3)


# --------------------------------------------------------------------------- time


@pytest.mark.parametrize(
    ("now", "off"),
    [
        (dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC), 1.0),  # Saturday noon
        (dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC), 1.0),  # Sunday noon
        (dt.datetime(2026, 11, 25, 3, 0, tzinfo=dt.UTC), 1.0),  # Wednesday 03:00
        (dt.datetime(2026, 11, 25, 10, 0, tzinfo=dt.UTC), 0.0),  # Wednesday 10:00
        (dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.UTC), 0.0),  # opening time
        (dt.datetime(2026, 11, 25, 17, 59, tzinfo=dt.UTC), 0.0),
        (dt.datetime(2026, 11, 25, 18, 0, tzinfo=dt.UTC), 1.0),  # closing time
        (dt.datetime(2026, 11, 25, 7, 59, tzinfo=dt.UTC), 1.0),
    ],
)
def test_off_hours(now: dt.datetime, off: float):
    assert now.weekday() == {28: 5, 29: 6, 25: 2}[now.day]
    assert features(act(), now=now)["off_hours"] == off


def test_hour_of_day_in_configured_timezone():
    now = dt.datetime(2026, 11, 25, 15, 30, tzinfo=dt.UTC)  # Wednesday
    utc = featurize(act(), RuntimeState(), Context(now=now))
    ny = featurize(act(), RuntimeState(), Context(now=now, tz=ZoneInfo("America/New_York")))
    hour, off = FEATURE_INDEX["hour_of_day"], FEATURE_INDEX["off_hours"]
    assert utc[hour] == 15.5
    assert ny[hour] == 10.5  # EST is UTC-5 in November
    # 21:00 UTC on a Wednesday is after hours in UTC but 16:00 in New York
    late = dt.datetime(2026, 11, 25, 21, 0, tzinfo=dt.UTC)
    assert featurize(act(), RuntimeState(), Context(now=late))[off] == 1.0
    ny_late = featurize(act(), RuntimeState(), Context(now=late, tz=ZoneInfo("America/New_York")))
    assert ny_late[off] == 0.0
    assert ny_late[hour] == 16.0


@pytest.mark.parametrize(("hour", "minute"), [(14, 5), (0, 17), (2, 40), (9, 30), (23, 59)])
def test_hour_of_day_phrase_names_the_minute(hour: int, minute: int):
    # Explanations word the stored (float32) value; it must read back as the same minute.
    now = dt.datetime(2026, 11, 25, hour, minute, tzinfo=dt.UTC)
    value = features(act(), now=now)["hour_of_day"]
    assert value == f32(hour + minute / 60)
    assert FEATURES[FEATURE_INDEX["hour_of_day"]].phrase(value) == f"at {hour:02d}:{minute:02d}"


def test_offset_of_now_does_not_matter():
    utc = dt.datetime(2026, 11, 25, 15, 30, tzinfo=dt.UTC)
    tokyo = utc.astimezone(ZoneInfo("Asia/Tokyo"))
    np.testing.assert_array_equal(
        featurize(act(), RuntimeState(), Context(now=utc)),
        featurize(act(), RuntimeState(), Context(now=tokyo)),
    )


def test_naive_now_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        Context(now=dt.datetime(2026, 11, 25, 10, 0))


# --------------------------------------------------------------------------- purity and batching


def test_featurize_many_equals_stacked_featurize():
    rows = [
        (act(), RuntimeState(), Context(now=WEDNESDAY_10)),
        (
            act(Verb.RESIZE, parameters={"vcpus": "4"}, confidence=0.5),
            RuntimeState(power=PowerState.RUNNING, vcpus=2, labels={"env": "dev"}),
            Context(now=dt.datetime(2026, 11, 28, 3, tzinfo=dt.UTC)),
        ),
        (
            act(Verb.DELETE, "kata", justification="gone"),
            RuntimeState(snapshots=0, uptime_s=3600.0, recent_actions=7),
            Context(now=WEDNESDAY_10, tz=ZoneInfo("America/New_York")),
        ),
    ]
    many = featurize_many(rows)
    assert many.dtype == np.float32
    assert many.shape == (3, len(FEATURE_NAMES))
    assert np.isnan(many).any()  # the comparison below must be NaN-aware to pass
    np.testing.assert_array_equal(many, np.stack([featurize(*r) for r in rows]))
    assert featurize_many([]).shape == (0, len(FEATURE_NAMES))


def test_featurize_is_deterministic():
    a, s, c = act(Verb.DELETE), RuntimeState(labels={"dependents": "3"}), Context(now=WEDNESDAY_10)
    np.testing.assert_array_equal(featurize(a, s, c), featurize(a, s, c))
