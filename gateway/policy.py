"""The approval policy: from a risk score to execute, ask humans, or deny.

A policy is a TOML file (``gateway/policies/default.toml`` is the annotated example;
``docs/policy.md`` the reference). Its id is the SHA-256 of the file's bytes:
every decision names the policy it was made under, and activating a policy is
a ledger record with that id.

Evaluation (:meth:`Policy.evaluate`) is pure. Given the verb, the target's
runtime and labels, the risk (or ``None`` when the model could not score)
and the engine's confidence, it returns a :class:`Verdict`:

1. a matching rule that forbids the verb denies it, whatever the risk;
2. without a score, the fallback applies: by default approval, and denial
   for irreversible verbs;
3. with a score, the thresholds apply: execute below ``execute_below``,
   approval below ``approve_below``, and ``above`` (deny, or approval by
   ``approvals_above`` people) from there. Rules may override the thresholds
   for their scope;
4. a confidence below ``min_confidence`` (or none given, when a minimum is set)
   turns an execution into an approval;
5. a rule's ``approvals = N`` raises the approvals a non-denied action needs
   to at least ``N``, and so forces approval where it would have executed.

Example::

    policy = Policy.load(Path("policy.toml"))
    verdict = policy.evaluate(PolicyInput("delete", "libvirt", {"env": "prod"}, risk=0.42))
    assert verdict.kind is VerdictKind.APPROVAL and verdict.approvals == 2
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from adapters.action import RUNTIMES, VERBS, Reversibility, Verb
from gateway.selector import Selector, parse_selector, selector_matches

__all__ = ["Policy", "PolicyError", "PolicyInput", "Rule", "Thresholds", "Verdict", "VerdictKind"]

MAX_POLICY_BYTES = 1 << 20
_MAX_COMBINED = 12  # threshold-setting rules whose every combination is checked at load
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d)?")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_LABEL = re.compile(r"[A-Za-z0-9_.\-/]{1,128}")


class PolicyError(ValueError):
    """A policy file is malformed; the message names the key and what is wrong."""


class VerdictKind(enum.StrEnum):
    EXECUTE = "execute"
    APPROVAL = "approval"
    DENY = "deny"


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    approvals: int  # people needed (0 unless kind is APPROVAL)
    reasons: tuple[str, ...]
    ttl: float  # seconds approvals may take before the decision expires
    fallback: bool = False  # decided without a risk score
    reason_required: bool = True  # approvers must give a reason (the matching rules' say)


@dataclass(frozen=True)
class PolicyInput:
    verb: str
    runtime: str
    # None: not known (the target could not be described). Every rule that may apply is
    # then taken as applying, and the decision is made as one without a score.
    labels: Mapping[str, str] | None
    risk: float | None  # None: the model could not score
    confidence: float | None = None


@dataclass(frozen=True)
class Thresholds:
    execute_below: float = 0.3
    approve_below: float = 0.8
    above: VerdictKind = VerdictKind.DENY  # deny, or approval by approvals_above people
    approvals: int = 1
    approvals_above: int = 2
    min_confidence: float = 0.0
    approval_ttl: float = 3600.0
    reason_required: bool = True  # overseers must give a reason to approve, not just to deny
    fallback: VerdictKind = VerdictKind.APPROVAL
    fallback_irreversible: VerdictKind = VerdictKind.DENY


@dataclass(frozen=True)
class Rule:
    name: str
    verbs: frozenset[str]  # empty: every verb
    runtime: str  # "": every runtime
    selector: Selector  # label equalities, all must hold
    forbid: bool = False
    approvals: int = 0  # at least this many approvers for what matches
    overrides: Mapping[str, Any] = field(default_factory=dict)  # typed threshold settings

    def matches(self, p: PolicyInput) -> bool:
        if self.verbs and p.verb not in self.verbs:
            return False
        if self.runtime and p.runtime != self.runtime:
            return False
        return p.labels is None or selector_matches(self.selector, p.labels)


_MAX_DURATION = 366 * 86_400.0  # a year (and a day): an approval can wait no longer


def _duration(value: Any, where: str) -> float:
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())) is not None:
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds is None or not 0 < seconds < math.inf:
        raise PolicyError(f'{where}: {value!r} is not a duration (e.g. 900, "15m", "1h")')
    if seconds > _MAX_DURATION:
        raise PolicyError(f"{where}: {value!r} is longer than a year (366 days)")
    return seconds


def _fraction(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise PolicyError(f"{where}: must be a number in [0, 1], not {value!r}")
    return float(value)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16:
        raise PolicyError(f"{where}: must be a whole number of people, 1..16, not {value!r}")
    return value


def _kind(value: Any, where: str, allowed: Sequence[VerdictKind]) -> VerdictKind:
    try:
        kind = VerdictKind(value)
    except ValueError:
        kind = None
    if kind not in allowed:
        names = " or ".join(repr(k.value) for k in allowed)
        raise PolicyError(f"{where}: must be {names}, not {value!r}")
    assert kind is not None
    return kind


_THRESHOLD_KEYS = {
    "execute_below": _fraction,
    "approve_below": _fraction,
    "min_confidence": _fraction,
    "approvals": _count,
    "approvals_above": _count,
    "approval_ttl": _duration,
}
_CHOICES = {
    "above": (VerdictKind.DENY, VerdictKind.APPROVAL),
    "fallback": (VerdictKind.APPROVAL, VerdictKind.DENY),
    "fallback_irreversible": (VerdictKind.APPROVAL, VerdictKind.DENY),
}


def _settings(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Threshold settings from a policy table, typed and checked one by one."""
    values: dict[str, Any] = {}
    for key, value in raw.items():
        at = f"{where}.{key}"
        if key in _THRESHOLD_KEYS:
            values[key] = _THRESHOLD_KEYS[key](value, at)
        elif key in _CHOICES:
            values[key] = _kind(value, at, _CHOICES[key])
        elif key == "reason_required":
            if not isinstance(value, bool):
                raise PolicyError(f"{at}: must be true or false")
            values[key] = value
        else:
            known = ", ".join(sorted([*_THRESHOLD_KEYS, *_CHOICES, "reason_required"]))
            raise PolicyError(f"{at}: unknown setting (known: {known})")
    return values


def _apply(base: Thresholds, values: Mapping[str, Any], where: str) -> Thresholds:
    """``base`` with typed ``values`` laid over it, checked as a whole."""
    out = replace(base, **values)
    if out.execute_below > out.approve_below:
        raise PolicyError(f"{where}: execute_below must not exceed approve_below")
    if out.above is VerdictKind.APPROVAL and out.approvals_above < out.approvals:
        raise PolicyError(
            f"{where}: approvals_above ({out.approvals_above}) must not be below approvals "
            f"({out.approvals}): more risk never needs fewer approvers"
        )
    return out


def _selector(text: Any, where: str) -> Selector:
    if not isinstance(text, str) or not text.strip():
        raise PolicyError(f'{where}: must be a label selector such as "env=prod"')
    try:
        return parse_selector(text, allowed=_LABEL)
    except ValueError as err:
        raise PolicyError(f"{where}: {err}") from None


def _rule(raw: Any, n: int) -> Rule:
    where = f"rules[{n}]"
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: must be a table")
    name = raw.get("name", f"rule {n + 1}")
    if not isinstance(name, str) or not name:
        raise PolicyError(f"{where}.name: must be a non-empty string")
    match = raw.get("match", {})
    if not isinstance(match, Mapping):
        raise PolicyError(f"{where}.match: must be a table")
    unknown = set(match) - {"verbs", "runtime", "selector"}
    if unknown:
        raise PolicyError(f"{where}.match: unknown key {sorted(unknown)[0]!r} "
                          "(known: verbs, runtime, selector)")  # fmt: skip
    verbs = match.get("verbs", [])
    if not isinstance(verbs, list) or not all(isinstance(v, str) for v in verbs):
        raise PolicyError(f"{where}.match.verbs: must be a list of verbs")
    if "verbs" in match and not verbs:  # an empty list would match every verb
        raise PolicyError(f"{where}.match.verbs: must name a verb (leave it out for every verb)")
    for v in verbs:
        if v not in {x.value for x in Verb}:
            raise PolicyError(f"{where}.match.verbs: unknown verb {v!r}")
    runtime = match.get("runtime", "")
    if not isinstance(runtime, str) or ("runtime" in match and not runtime):
        raise PolicyError(f"{where}.match.runtime: must name a runtime ({', '.join(RUNTIMES)})")
    if runtime and runtime not in RUNTIMES:
        raise PolicyError(f"{where}.match.runtime: unknown runtime {runtime!r}")
    selector = (
        _selector(match["selector"], f"{where}.match.selector") if "selector" in match else ()
    )
    forbid = raw.get("forbid", False)
    if not isinstance(forbid, bool):
        raise PolicyError(f"{where}.forbid: must be true or false")
    approvals = _count(raw["approvals"], f"{where}.approvals") if "approvals" in raw else 0
    rest = {k: v for k, v in raw.items() if k not in ("name", "match", "forbid", "approvals")}
    overrides = _settings(rest, where)  # typed once here, laid over the thresholds per call
    if overrides.get("execute_below", 0.0) > overrides.get("approve_below", 1.0):
        raise PolicyError(f"{where}: execute_below must not exceed approve_below")
    return Rule(name, frozenset(verbs), runtime, selector, forbid, approvals, overrides)


@dataclass(frozen=True)
class Policy:
    id: str  # SHA-256 of the file's bytes (hex)
    defaults: Thresholds
    rules: tuple[Rule, ...]
    source: str = ""

    @classmethod
    def parse(cls, raw: bytes, source: str = "<policy>") -> Policy:
        if len(raw) > MAX_POLICY_BYTES:
            raise PolicyError(f"{source}: larger than {MAX_POLICY_BYTES} bytes")
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise PolicyError(f"{source}: not valid TOML: {err}") from None
        unknown = set(doc) - {"version", "defaults", "rules"}
        if unknown:
            raise PolicyError(f"{source}: unknown section {sorted(unknown)[0]!r} "
                              "(known: version, defaults, rules)")  # fmt: skip
        version = doc.get("version")
        if type(version) is not int or version != 1:  # (true is an int to Python)
            raise PolicyError(f"{source}: version must be 1")
        defaults = doc.get("defaults", {})
        if not isinstance(defaults, Mapping):
            raise PolicyError(f"{source}: defaults must be a table")
        rules = doc.get("rules", [])
        if not isinstance(rules, list):
            raise PolicyError(f"{source}: rules must be an array of tables ([[rules]])")
        policy = cls(
            id=hashlib.sha256(raw).hexdigest(),
            defaults=_apply(Thresholds(), _settings(defaults, "defaults"), "defaults"),
            rules=tuple(_rule(r, n) for n, r in enumerate(rules)),
            source=source,
        )
        policy._check_combinations(source)
        return policy

    def _check_combinations(self, source: str) -> None:
        """Refuse, at load, rules whose thresholds clash with the defaults or each other.

        Several rules can match one proposal, and their overrides are laid over the
        defaults in file order. Every such combination is tried (rules that set neither
        threshold cannot clash); beyond :data:`_MAX_COMBINED` threshold rules, each rule
        alone and all of them together, and :meth:`evaluate` denies a clash it meets.
        """
        # (A rule's "approvals" is its own minimum, not a threshold it overrides.)
        keys = ("execute_below", "approve_below", "above", "approvals_above")
        setting = [r for r in self.rules if any(k in r.overrides for k in keys)]
        if len(setting) <= _MAX_COMBINED:
            combos: Iterable[Sequence[Rule]] = (
                c for n in range(1, len(setting) + 1) for c in itertools.combinations(setting, n)
            )
        else:
            combos = [*((r,) for r in setting), setting]
        for combo in combos:
            t = self.defaults
            for rule in combo:
                try:
                    t = _apply(t, rule.overrides, rule.name)
                except PolicyError as err:
                    names = " + ".join(repr(r.name) for r in combo)
                    why = str(err).split(": ", 1)[-1]
                    raise PolicyError(
                        f"{source}: rules {names} can match one proposal and together clash: {why}"
                    ) from None

    @classmethod
    def load(cls, path: Path) -> Policy:
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise PolicyError(f"cannot read policy {path}: {err.strerror or err}") from None
        return cls.parse(raw, str(path))

    def evaluate(self, p: PolicyInput) -> Verdict:
        matched = [r for r in self.rules if r.matches(p)]
        t = self.defaults
        try:
            for rule in matched:
                t = _apply(t, rule.overrides, rule.name)
        except PolicyError as err:  # only past _MAX_COMBINED rules: fail closed
            return Verdict(VerdictKind.DENY, 0, (f"the policy's rules clash: {err}",),
                           self.defaults.approval_ttl)  # fmt: skip
        unknown = p.labels is None
        for rule in matched:
            if rule.forbid:
                reason = f"{p.verb} is forbidden here by rule {rule.name!r}"
                if unknown and rule.selector:
                    reason += " (the target's labels could not be read, and it may apply)"
                return Verdict(VerdictKind.DENY, 0, (reason,), t.approval_ttl)
        reasons: list[str] = []
        irreversible = (
            p.verb in {v.value for v in Verb}
            and VERBS[Verb(p.verb)].reversibility is Reversibility.IRREVERSIBLE
        )
        reason_required = t.reason_required
        if p.risk is None or unknown:
            setting = "fallback_irreversible" if irreversible else "fallback"
            kind = t.fallback_irreversible if irreversible else t.fallback
            ttl = t.approval_ttl
            if unknown:
                # Several rules may apply, or none: the strictest of what the defaults and
                # each of them say (laid over one another, the last would win, and a rule
                # that relaxes its scope would relax every scope).
                said = [vars(self.defaults), *(r.overrides for r in matched)]
                if any(x.get(setting) is VerdictKind.DENY for x in said):
                    kind = VerdictKind.DENY
                reason_required = any(x.get("reason_required") for x in said)
                ttl = min(x["approval_ttl"] for x in said if "approval_ttl" in x)
                reasons.append(
                    "the target could not be described: not scored, and every rule that "
                    f"may apply applies; fallback is {kind.value}"
                )
            else:
                reasons.append(
                    "the model could not score: fallback "
                    + ("for irreversible verbs " if irreversible else "")
                    + f"is {kind.value}"
                )
            approvals = t.approvals if kind is VerdictKind.APPROVAL else 0
            verdict = Verdict(kind, approvals, tuple(reasons), ttl, fallback=True,
                              reason_required=reason_required)  # fmt: skip
            return verdict if kind is VerdictKind.DENY else _raise_for_rules(verdict, matched)
        if p.risk < t.execute_below:
            kind, approvals = VerdictKind.EXECUTE, 0
            reasons.append(f"risk {p.risk:.3f} is below {t.execute_below:g}: execute")
        elif p.risk < t.approve_below:
            kind, approvals = VerdictKind.APPROVAL, t.approvals
            reasons.append(
                f"risk {p.risk:.3f} is in [{t.execute_below:g}, {t.approve_below:g}): approval"
            )
        elif t.above is VerdictKind.DENY:
            reason = f"risk {p.risk:.3f} is at or above {t.approve_below:g}: deny"
            return Verdict(VerdictKind.DENY, 0, (reason,), t.approval_ttl)
        else:
            kind, approvals = VerdictKind.APPROVAL, t.approvals_above
            reasons.append(
                f"risk {p.risk:.3f} is at or above {t.approve_below:g}: approval by {approvals}"
            )
        if t.min_confidence > 0 and (p.confidence is None or p.confidence < t.min_confidence):
            given = "none given" if p.confidence is None else f"{p.confidence:.2f}"
            reasons.append(f"engine confidence ({given}) is below {t.min_confidence:g}")
            if kind is VerdictKind.EXECUTE:
                kind, approvals = VerdictKind.APPROVAL, t.approvals
        verdict = Verdict(kind, approvals, tuple(reasons), t.approval_ttl,
                          reason_required=reason_required)  # fmt: skip
        return _raise_for_rules(verdict, matched)


def _raise_for_rules(verdict: Verdict, matched: Sequence[Rule]) -> Verdict:
    """Apply the rules' minimum approvals to a verdict that is not a denial."""
    need = max((r.approvals for r in matched), default=0)
    if need == 0 or verdict.kind is VerdictKind.DENY:
        return verdict
    named = ", ".join(repr(r.name) for r in matched if r.approvals == need)
    if verdict.kind is VerdictKind.EXECUTE or verdict.approvals < need:
        return replace(
            verdict,
            kind=VerdictKind.APPROVAL,
            approvals=max(need, verdict.approvals),
            reasons=(*verdict.reasons, f"rule {named} requires {need} approver(s)"),
        )
    return verdict
