"""A deterministic, documented training set so govgate can score on day one.

A site has no labelled history when it first installs govgate, so the bundled
model is trained on proposals drawn from :func:`generate`: random but
plausible actions on random but plausible targets, each labelled by a coin
whose bias is :func:`true_logit`, a written-down rule of thumb of what goes
wrong in operations. Same seed, same examples, same bytes.

The rules, in log-odds (``docs/explain.md`` explains each)::

    -5.0
    + 3.2 * destructiveness              the verb can break more
    + 1.0 * irreversible                 and it cannot be undone
    + 0.8 * environment                  dev 0 < staging 1 < production 2
    + 0.35 * criticality                 low 0 .. critical 3
    + 0.3 * blast_radius                 log2(1 + dependents); unknown counts as 1.5
    + 1.2 if destructiveness >= 0.5 and no snapshot exists (unknown: none)
    + 2.0 * (0.7 - confidence)           unsure engines are wrong more often; unknown 0.5
    + 0.7 if no justification was given
    + 0.9 if outside working hours in production (nobody to catch it)
    + 0.5 * recent_actions               log2(1 + actions in the last hour): flapping
    + 1.6 * shrink if the target is live  taking memory/vCPUs from a running guest
    + 0.4 * max(0, vcpu_change - 1)      more than doubling at once
    + 0.6 * destructiveness if production and critical
    - 2.5 if the action is a no-op

These rules agree with the model's monotone constraints; the trained model
learns them back from the labels only (``tests/explain`` checks how well).
The labels are synthetic: the bundled model encodes these priors, not any
site's experience, and its model card says so. Retrain on real history
(:mod:`explain.history`) as soon as there is some.

Example::

    examples = generate(20_000, seed=1)
    x, y = to_matrix(examples)
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from adapters.action import Action, PowerState, RuntimeState, Target, Verb
from explain.features import FEATURE_INDEX, Context, featurize

__all__ = ["Example", "generate", "to_matrix", "true_logit"]

_EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

_VERB_WEIGHTS = {
    Verb.START: 10, Verb.SHUTDOWN: 8, Verb.DESTROY: 5, Verb.REBOOT: 8, Verb.RESET: 3,
    Verb.SUSPEND: 4, Verb.RESUME: 4, Verb.RESIZE: 25, Verb.SNAPSHOT: 8, Verb.REVERT: 4,
    Verb.SNAPSHOT_DELETE: 4, Verb.SAVE: 3, Verb.MIGRATE: 6, Verb.DELETE: 5, Verb.CREATE: 2,
    Verb.EXEC: 3,
}  # fmt: skip
_KATA_VERBS = (Verb.START, Verb.SHUTDOWN, Verb.DESTROY, Verb.SUSPEND, Verb.RESUME,
               Verb.RESIZE, Verb.DELETE, Verb.CREATE, Verb.EXEC)  # fmt: skip
_POWER = ((PowerState.RUNNING, 70), (PowerState.SHUTOFF, 15), (PowerState.PAUSED, 7),
          (PowerState.CRASHED, 3), (PowerState.UNKNOWN, 5))  # fmt: skip
_ENV = (("dev", 20), ("test", 10), ("staging", 25), ("production", 25), ("prod", 10), (None, 10))
_CRIT = (("low", 30), ("medium", 30), ("high", 20), ("critical", 10), (None, 10))
_WORDS = (
    "scale", "out", "load", "rising", "queue", "depth", "p99", "latency", "over", "slo",
    "reclaim", "idle", "capacity", "nightly",
)  # fmt: skip


@dataclass(frozen=True)
class Example:
    action: Action
    state: RuntimeState
    time: dt.datetime
    label: int  # 1: the action led to an incident


def _pick(rng: random.Random, table: Sequence[tuple[object, int]]) -> object:
    values, weights = zip(*table, strict=True)
    return rng.choices(values, weights)[0]


def _state(rng: random.Random) -> RuntimeState:
    power = _pick(rng, _POWER)
    assert isinstance(power, PowerState)
    vcpus = rng.choice((1, 2, 4, 8, 16, 32))
    memory = rng.choice((1, 2, 4, 8, 16, 32, 64, 128)) * 1024
    labels: dict[str, str] = {}
    env, crit = _pick(rng, _ENV), _pick(rng, _CRIT)
    if isinstance(env, str):
        labels["environment"] = env
    if isinstance(crit, str):
        labels["criticality"] = crit
    if rng.random() < 0.7:
        labels["dependents"] = str(min(int(rng.expovariate(1 / 3)), 50))
    return RuntimeState(
        power=power,
        vcpus=vcpus,
        max_vcpus=vcpus * rng.choice((1, 2, 4)),
        memory_mib=memory,
        max_memory_mib=memory * rng.choice((1, 2)),
        uptime_s=rng.expovariate(1 / 864_000) if power is PowerState.RUNNING else None,
        snapshots=None if rng.random() < 0.1 else min(int(rng.expovariate(1 / 1.2)), 8),
        disks=rng.choice((1, 1, 2, 3)),
        labels=labels,
        recent_actions=None if rng.random() < 0.1 else min(int(rng.expovariate(1 / 0.8)), 30),
        persistent=rng.random() < 0.9,
    )


def _action(rng: random.Random, state: RuntimeState, n: int) -> Action:
    verb = _pick(rng, tuple(_VERB_WEIGHTS.items()))
    assert isinstance(verb, Verb)
    runtime = (
        "kata" if verb is Verb.EXEC or (verb in _KATA_VERBS and rng.random() < 0.2) else ("libvirt")
    )
    params: dict[str, str] = {}
    if verb is Verb.RESIZE:
        assert state.vcpus is not None
        assert state.memory_mib is not None
        which = rng.choice(("vcpus", "memory", "both"))
        if which != "memory":
            params["vcpus"] = str(max(1, round(state.vcpus * rng.choice((0.25, 0.5, 1, 2, 4)))))
        if which != "vcpus":
            factor = rng.choice((0.25, 0.5, 1, 1.5, 2, 4))
            params["memory_mib"] = str(max(256, round(state.memory_mib * factor)))
    elif verb in (Verb.REVERT, Verb.SNAPSHOT_DELETE):
        params["snapshot"] = "snap-1"
    elif verb is Verb.MIGRATE:
        params["destination"] = "qemu+tls://host-b/system"
    elif verb is Verb.EXEC:
        params["command"] = "df -h"
    words = 0 if rng.random() < 0.15 else rng.randint(1, 40)
    return Action(
        verb=verb,
        target=Target(runtime, f"vm-{n}"),
        parameters=params,
        justification=" ".join(rng.choices(_WORDS, k=words)),
        confidence=None if rng.random() < 0.15 else round(rng.uniform(0.3, 1.0), 3),
        engine=rng.choice(("autoscaler", "aiops-agent", "llm-agent", "scheduler")),
    )


def _or(value: float, default: float) -> float:
    return default if math.isnan(value) else value


def true_logit(x: npt.NDArray[np.float32]) -> float:
    """The generative rule (module docstring) for one feature vector."""
    f = {name: float(x[i]) for name, i in FEATURE_INDEX.items()}
    destructive = f["destructiveness"]
    production = f["environment"] >= 2
    z = -5.0
    z += 3.2 * destructive + 1.0 * f["irreversible"]
    z += 0.8 * f["environment"] + 0.35 * f["criticality"]
    z += 0.3 * _or(f["blast_radius"], 1.5)
    z += 1.2 if destructive >= 0.5 and _or(f["has_snapshot"], 0.0) < 0.5 else 0.0
    z += 2.0 * (0.7 - _or(f["engine_confidence"], 0.5))
    z += 0.7 if f["justification_words"] == 0 else 0.0
    z += 0.9 if f["off_hours"] and production else 0.0
    z += 0.5 * _or(f["recent_actions"], 0.0)
    z += 1.6 * _or(f["shrink"], 0.0) * (f["running"] == 1.0)
    z += 0.4 * max(0.0, _or(f["vcpu_change"], 0.0) - 1.0)
    z += 0.6 * destructive if production and f["criticality"] >= 3 else 0.0
    z -= 2.5 if f["changes_state"] == 0 else 0.0
    return z


def generate(
    n: int, *, seed: int = 1, progress: Callable[[int, int], None] | None = None
) -> list[Example]:
    """``n`` labelled examples; the same ``seed`` always gives the same list.

    ``progress(done, n)`` is called every 1000 examples and at the end.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    rng = random.Random(seed)  # noqa: S311 - a reproducible simulation, not a secret
    out: list[Example] = []
    for i in range(n):
        state = _state(rng)
        action = _action(rng, state, i)
        when = _EPOCH + dt.timedelta(seconds=rng.randrange(365 * 86_400))
        z = true_logit(featurize(action, state, Context(now=when)))
        label = int(rng.random() < 1.0 / (1.0 + math.exp(-z)))
        out.append(Example(action, state, when, label))
        if progress is not None and (i + 1) % 1000 == 0:
            progress(i + 1, n)
    if progress is not None:
        progress(n, n)
    return out


def to_matrix(
    examples: Sequence[Example],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Feature matrix and labels for training."""
    x = np.stack([featurize(e.action, e.state, Context(now=e.time)) for e in examples])
    y = np.fromiter((e.label for e in examples), dtype=np.uint8, count=len(examples))
    return x, y
