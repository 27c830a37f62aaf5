"""The versioned feature schema: how an action on a target becomes numbers.

:data:`FEATURES` is a fixed, ordered list. Every model records the schema
version and the feature names it was trained on, and every explanation
carries the version, so a score can always be reproduced from the recorded
action and state. Changing a feature's meaning, order or encoding means a new
:data:`SCHEMA_VERSION` and retraining; the registry refuses a model whose schema
differs from this one.

Unknown inputs have defined encodings. Where risk has a safe direction, the
unknown takes the risky side (an unlabelled environment counts as production,
an unknown criticality as high). Elsewhere it is ``NaN``, which XGBoost treats
as *missing* and routes down the branch it learned for missing values.

Everything here is pure: the same action, state and context always give the
same vector.

Example::

    x = featurize(action, state, Context(now=dt.datetime(2026, 11, 25, 3, tzinfo=dt.UTC)))
    assert x.shape == (len(FEATURES),) and x[FEATURE_INDEX["environment"]] == 2
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from adapters.action import VERBS, Action, PowerState, Reversibility, RuntimeState, Verb

__all__ = [
    "DESTRUCTIVENESS",
    "FEATURES",
    "FEATURE_INDEX",
    "FEATURE_NAMES",
    "MONOTONE",
    "SCHEMA_VERSION",
    "Context",
    "Feature",
    "featurize",
    "featurize_many",
]

SCHEMA_VERSION = "govgate.features/v1"

Vector = npt.NDArray[np.float32]
Matrix = npt.NDArray[np.float32]

# How much a verb can break by itself, 0..1. Ordered by what is lost if the
# verb goes wrong: nothing (snapshot) < availability for a while (suspend,
# reboot) < in-memory state (destroy, reset) < data (revert, delete).
DESTRUCTIVENESS: Mapping[Verb, float] = MappingProxyType(
    {
        Verb.SNAPSHOT: 0.05,
        Verb.START: 0.1,
        Verb.RESUME: 0.1,
        Verb.CREATE: 0.1,
        Verb.SAVE: 0.3,
        Verb.SUSPEND: 0.3,
        Verb.RESIZE: 0.35,
        Verb.MIGRATE: 0.4,
        Verb.REBOOT: 0.45,
        Verb.SHUTDOWN: 0.5,
        Verb.EXEC: 0.5,
        Verb.RESET: 0.55,
        Verb.SNAPSHOT_DELETE: 0.6,
        Verb.REVERT: 0.75,
        Verb.DESTROY: 0.8,
        Verb.DELETE: 1.0,
    }
)

_ENVIRONMENTS = {
    **dict.fromkeys(("dev", "development", "test", "testing", "sandbox", "lab", "ci"), 0),
    **dict.fromkeys(("staging", "stage", "stg", "preprod", "pre-prod", "qa", "uat"), 1),
    **dict.fromkeys(("production", "prod", "prd", "live"), 2),
}
_ENV_UNKNOWN = 2  # an unlabelled target is treated as production
_CRITICALITY = {
    **dict.fromkeys(("low", "minor"), 0),
    **dict.fromkeys(("medium", "normal", "moderate"), 1),
    **dict.fromkeys(("high", "major"), 2),
    **dict.fromkeys(("critical", "mission-critical", "tier0", "tier-0"), 3),
}
_CRITICALITY_UNKNOWN = 2  # unknown criticality is treated as high
_LIVE = (PowerState.RUNNING, PowerState.PAUSED, PowerState.PMSUSPENDED)
_DOWN = (PowerState.SHUTOFF, PowerState.CRASHED, PowerState.ABSENT)
NAN = float("nan")


@dataclass(frozen=True)
class Context:
    """What the featurizer needs besides the action and state: when, and where."""

    now: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    tz: dt.tzinfo = dt.UTC  # the timezone whose working hours count (08:00-18:00, Mon-Fri)

    def __post_init__(self) -> None:
        if self.now.tzinfo is None:
            raise ValueError("Context.now must be timezone-aware")


@dataclass(frozen=True)
class Feature:
    name: str
    description: str
    unknown: str  # what an unknown input encodes as, for the docs
    monotone: int  # +1: a higher value never lowers risk; -1: never raises it; 0: free
    phrase: Callable[[float], str]  # the value in words, for explanations


def _words(kind: str) -> Callable[[float], str]:
    def say(v: float) -> str:
        if math.isnan(v):
            return f"{kind} unknown"
        return f"{kind} {v:.3g}"

    return say


def _flag(yes: str, no: str, unknown: str = "") -> Callable[[float], str]:
    def say(v: float) -> str:
        if math.isnan(v):
            return unknown or f"unknown whether {yes}"
        return yes if v >= 0.5 else no

    return say


def _clock(v: float) -> str:
    # Round to the minute: the value went through float32, so 14:05 may be 14.0833325.
    minutes = round(v * 60) % (24 * 60)
    return f"at {minutes // 60:02d}:{minutes % 60:02d}"


def _environment(v: float) -> str:
    return {0: "target is development/test", 1: "target is staging"}.get(
        round(v), "target is production (or unlabelled)"
    )


def _criticality(v: float) -> str:
    names = {0: "low", 1: "medium", 2: "high (or unlabelled)", 3: "critical"}
    return f"target criticality is {names.get(round(v), '?')}"


def _ratio(kind: str) -> Callable[[float], str]:
    def say(v: float) -> str:
        if math.isnan(v):
            return f"{kind} change against unknown current size"
        if v == 0:
            return f"{kind} unchanged"
        return f"{kind} x{2.0**v:.3g}"

    return say


def _log_count(kind: str) -> Callable[[float], str]:
    def say(v: float) -> str:
        if math.isnan(v):
            return f"{kind} unknown"
        return f"{kind}: {round(2.0**v - 1)}"

    return say


FEATURES: tuple[Feature, ...] = (
    Feature("destructiveness", "how much the verb can break, 0..1 (table in docs/explain.md)",
            "never unknown", +1, lambda v: f"verb destructiveness {v:.2f} of 1"),
    Feature("irreversible", "1 if the verb cannot be undone (delete, revert, snapshot-delete, "
            "exec; destroy of a transient domain), else 0",
            "never unknown", +1, _flag("action cannot be undone", "action can be undone")),
    Feature("environment", "label environment/env: 0 dev/test, 1 staging, 2 production",
            "missing or unrecognised: 2 (production)", +1, _environment),
    Feature("criticality", "label criticality: 0 low, 1 medium, 2 high, 3 critical",
            "missing or unrecognised: 2 (high)", +1, _criticality),
    Feature("blast_radius", "log2(1 + dependents) from the label dependents",
            "NaN", +1, _log_count("dependent services")),
    Feature("changes_state", "0 if the action is a no-op in the current state "
            "(start a running VM, resize to the same size), else 1",
            "power unknown: 1", +1, _flag("action changes the target", "action is a no-op")),
    Feature("running", "1 if the target is running, paused or PM-suspended, 0 if off",
            "NaN", 0, _flag("target is live", "target is not running")),
    Feature("vcpu_change", "resize: log2(new vCPUs / current vCPUs); 0 for other verbs",
            "current vCPUs unknown: NaN", 0, _ratio("vCPUs")),
    Feature("memory_change", "resize: log2(new memory / current memory); 0 for other verbs",
            "current memory unknown: NaN", 0, _ratio("memory")),
    Feature("shrink", "how far a resize shrinks the target: max(0, -min(vcpu_change, "
            "memory_change))", "both changes unknown: NaN", +1,
            lambda v: "shrink unknown" if math.isnan(v) else
            ("does not shrink" if v == 0 else f"shrinks to {2.0 ** -v:.0%} of current size")),
    Feature("has_snapshot", "1 if the target has at least one snapshot to fall back on",
            "NaN", -1, _flag("a snapshot exists", "no snapshot to fall back on")),
    Feature("engine_confidence", "the engine's own confidence, 0..1",
            "NaN", -1, lambda v: "engine gave no confidence" if math.isnan(v) else
            f"engine confidence {v:.2f}"),
    Feature("justification_words", "log2(1 + words in the engine's justification)",
            "empty: 0", 0, lambda v: "no justification given" if v == 0 else
            f"justification of {round(2.0**v - 1)} words"),
    Feature("hour_of_day", "hour of the decision in the configured timezone, 0..24",
            "never unknown", 0, lambda v: _clock(v)),
    Feature("off_hours", "1 outside 08:00-18:00 Monday-Friday in the configured timezone",
            "never unknown", 0, _flag("outside working hours", "within working hours")),
    Feature("recent_actions", "log2(1 + actions on this target in the last hour)",
            "NaN", +1, _log_count("actions on target in the last hour")),
    Feature("uptime_hours", "log2(1 + uptime in hours)", "NaN", 0,
            lambda v: "uptime unknown" if math.isnan(v) else f"up {2.0**v - 1:.3g} h"),
    Feature("vcpus", "log2(current vCPUs)", "NaN", 0, _words("log2 vCPUs")),
    Feature("memory_gib", "log2(current memory in GiB)", "NaN", 0, _words("log2 GiB memory")),
)  # fmt: skip

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
FEATURE_INDEX: Mapping[str, int] = MappingProxyType({n: i for i, n in enumerate(FEATURE_NAMES)})
MONOTONE: tuple[int, ...] = tuple(f.monotone for f in FEATURES)


def _log2_count(n: int | None) -> float:
    return NAN if n is None else math.log2(1 + n)


def _change(new: int | None, old: int | None, resizing: bool) -> float:
    if not resizing or new is None:
        return 0.0
    if old is None or old <= 0:
        return NAN
    return math.log2(new / old)


def _changes_state(action: Action, state: RuntimeState) -> float:
    power = state.power
    match action.verb:
        case Verb.START:
            noop = power in _LIVE
        case Verb.SHUTDOWN | Verb.DESTROY | Verb.SAVE:
            noop = power in _DOWN
        case Verb.SUSPEND:
            noop = power is PowerState.PAUSED
        case Verb.RESUME:
            noop = power is PowerState.RUNNING
        case Verb.RESIZE:
            vcpus, mem = action.int_param("vcpus"), action.int_param("memory_mib")
            noop = (vcpus is None or vcpus == state.vcpus) and (
                mem is None or mem == state.memory_mib
            )
        case _:
            noop = False
    return 0.0 if noop else 1.0


def _irreversible(action: Action, state: RuntimeState) -> float:
    if VERBS[action.verb].reversibility is Reversibility.IRREVERSIBLE:
        return 1.0
    # A transient domain is gone once destroyed: nothing is left to start again.
    return 1.0 if action.verb is Verb.DESTROY and state.persistent is False else 0.0


def _dependents(state: RuntimeState) -> float:
    raw = state.label("dependents")
    # ASCII digits only: str.isdigit() is true for "²" and "①", which int() refuses.
    if raw is None or not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        return NAN
    return math.log2(1 + int(raw))


def featurize(action: Action, state: RuntimeState, context: Context) -> Vector:
    """The feature vector (float32, in :data:`FEATURES` order) for one proposal."""
    resizing = action.verb is Verb.RESIZE
    vcpu_change = _change(action.int_param("vcpus"), state.vcpus, resizing)
    memory_change = _change(action.int_param("memory_mib"), state.memory_mib, resizing)
    changes = [c for c in (vcpu_change, memory_change) if not math.isnan(c)]
    shrink = max(0.0, -min(changes)) if changes else NAN
    local = context.now.astimezone(context.tz)
    hour = local.hour + local.minute / 60
    env = state.label("environment", "env")
    crit = state.label("criticality")
    power = state.power
    values = (
        DESTRUCTIVENESS[action.verb],
        _irreversible(action, state),
        _ENVIRONMENTS.get(env, _ENV_UNKNOWN) if env is not None else _ENV_UNKNOWN,
        _CRITICALITY.get(crit, _CRITICALITY_UNKNOWN) if crit is not None else _CRITICALITY_UNKNOWN,
        _dependents(state),
        _changes_state(action, state),
        1.0 if power in _LIVE else 0.0 if power in _DOWN else NAN,
        vcpu_change,
        memory_change,
        shrink,
        NAN if state.snapshots is None else float(state.snapshots > 0),
        NAN if action.confidence is None else action.confidence,
        math.log2(1 + len(action.justification.split())),
        hour,
        float(local.weekday() >= 5 or not 8 <= local.hour < 18),
        _log2_count(state.recent_actions),
        NAN if state.uptime_s is None else math.log2(1 + state.uptime_s / 3600),
        NAN if not state.vcpus else math.log2(state.vcpus),
        NAN if not state.memory_mib else math.log2(state.memory_mib / 1024),
    )
    return np.asarray(values, dtype=np.float32)


def featurize_many(
    rows: Sequence[tuple[Action, RuntimeState, Context]],
) -> Matrix:
    """Feature vectors for many proposals, one row each."""
    out = np.empty((len(rows), len(FEATURES)), dtype=np.float32)
    for i, (action, state, context) in enumerate(rows):
        out[i] = featurize(action, state, context)
    return out
