"""The approval policy: parsing with clear errors, and every step of evaluation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.policy import Policy, PolicyError, PolicyInput, Verdict, VerdictKind

EXAMPLE = Path(__file__).resolve().parents[2] / "gateway" / "policies" / "default.toml"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.load(EXAMPLE)


def ask(
    policy: Policy,
    verb: str = "resize",
    risk: float | None = 0.1,
    confidence: float | None = 0.9,
    runtime: str = "libvirt",
    **labels: str,
) -> Verdict:
    return policy.evaluate(PolicyInput(verb, runtime, labels, risk, confidence))


def test_example_loads_and_its_id_is_the_file_hash(policy: Policy):
    assert policy.id == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
    assert policy.defaults.approval_ttl == 3600
    assert policy.rules[0].name == "production deletes need two people"


@pytest.mark.parametrize(
    ("risk", "kind", "approvals"),
    [(0.0, "execute", 0), (0.299, "execute", 0), (0.3, "approval", 1), (0.799, "approval", 1),
     (0.8, "deny", 0), (1.0, "deny", 0)],
)  # fmt: skip
def test_threshold_bands(policy: Policy, risk: float, kind: str, approvals: int):
    v = ask(policy, risk=risk, env="staging")
    assert (v.kind.value, v.approvals) == (kind, approvals)
    assert f"risk {risk:.3f}" in v.reasons[0]
    assert not v.fallback


def test_low_or_missing_confidence_never_auto_executes(policy: Policy):
    v = ask(policy, risk=0.1, confidence=0.4, env="staging")
    assert (v.kind, v.approvals) == (VerdictKind.APPROVAL, 1)
    assert "confidence (0.40) is below 0.5" in v.reasons[-1]
    assert ask(policy, risk=0.1, confidence=None, env="staging").kind is VerdictKind.APPROVAL
    assert ask(policy, risk=0.1, confidence=0.5, env="staging").kind is VerdictKind.EXECUTE
    # The development rule lowers the minimum to zero and raises the execute band.
    assert ask(policy, risk=0.5, confidence=None, env="dev").kind is VerdictKind.EXECUTE


def test_rule_minimum_approvals(policy: Policy):
    v = ask(policy, verb="delete", risk=0.05, env="prod")
    assert (v.kind, v.approvals) == (VerdictKind.APPROVAL, 2)
    assert "requires 2 approver(s)" in v.reasons[-1]
    # "environment" and "env" are the same label.
    assert ask(policy, verb="delete", risk=0.05, environment="PROD").approvals == 2
    assert ask(policy, verb="delete", risk=0.05, env="staging").kind is VerdictKind.EXECUTE
    # A denial stays a denial.
    assert ask(policy, verb="delete", risk=0.9, env="prod").kind is VerdictKind.DENY


def test_forbidden_verb_is_denied_whatever_the_risk(policy: Policy):
    v = ask(policy, verb="exec", risk=0.0, runtime="kata", env="prod")
    assert v.kind is VerdictKind.DENY
    assert "forbidden" in v.reasons[0]
    assert ask(policy, verb="exec", risk=0.0, runtime="kata", env="staging").kind is (
        VerdictKind.EXECUTE
    )


def test_rule_threshold_overrides(policy: Policy):
    assert ask(policy, risk=0.2, criticality="critical").kind is VerdictKind.APPROVAL
    v = ask(policy, risk=0.95, criticality="critical")
    assert (v.kind, v.approvals) == (VerdictKind.APPROVAL, 2)


def test_fallback_without_a_score(policy: Policy):
    v = ask(policy, risk=None, env="staging")
    assert (v.kind, v.approvals, v.fallback) == (VerdictKind.APPROVAL, 1, True)
    assert "could not score" in v.reasons[0]
    irreversible = ask(policy, verb="delete", risk=None, env="staging")
    assert (irreversible.kind, irreversible.fallback) == (VerdictKind.DENY, True)
    assert "irreversible" in irreversible.reasons[0]
    # The rules' minimums apply to a fallback approval too.
    assert ask(policy, verb="resize", risk=None, criticality="critical").approvals == 1
    assert ask(policy, verb="delete", risk=None, env="prod").kind is VerdictKind.DENY


def test_unknown_labels_take_every_rule_that_may_apply(policy: Policy):
    """A target that could not be described has unknown labels: no label-scoped rule may
    be escaped that way. A forbidding rule that may apply denies; otherwise the decision
    is a fallback (unscored, whatever risk was given) with the strictest minimums."""

    def unknown(verb: str, runtime: str = "libvirt", risk: float | None = 0.01) -> Verdict:
        return policy.evaluate(PolicyInput(verb, runtime, None, risk, 0.99))

    exec_ = unknown("exec", runtime="kata")
    assert exec_.kind is VerdictKind.DENY
    assert "no exec in production sandboxes" in exec_.reasons[0]
    assert "labels could not be read" in exec_.reasons[0]
    resize = unknown("resize")  # a low risk would execute; unknown labels do not
    assert (resize.kind, resize.approvals, resize.fallback) == (VerdictKind.APPROVAL, 1, True)
    assert "could not be described" in resize.reasons[0]
    assert unknown("delete").kind is VerdictKind.DENY  # irreversible: the fallback denies
    strict = Policy.parse(
        b"""version = 1
[defaults]
fallback = "approval"
reason_required = false
[[rules]]
name = "prod resizes need three"
match = { verbs = ["resize"], selector = "env=prod" }
approvals = 3
reason_required = true
[[rules]]
name = "no blind suspends in prod"
match = { verbs = ["suspend"], selector = "env=prod" }
fallback = "deny"
"""
    )
    v = strict.evaluate(PolicyInput("resize", "libvirt", None, 0.01, 0.99))
    assert (v.kind, v.approvals, v.reason_required) == (VerdictKind.APPROVAL, 3, True)
    assert strict.evaluate(PolicyInput("suspend", "libvirt", None, None, 0.99)).kind is (
        VerdictKind.DENY
    )
    known = strict.evaluate(PolicyInput("resize", "libvirt", {"env": "staging"}, 0.01, 0.99))
    assert known.kind is VerdictKind.EXECUTE


def _relaxed_in_dev(fallback: str) -> Policy:
    return Policy.parse(
        f"""version = 1
[defaults]
fallback = "{fallback}"
reason_required = true
approval_ttl = "1h"
[[rules]]
name = "relaxed in development"
match = {{ selector = "environment=dev" }}
fallback = "approval"
reason_required = false
approval_ttl = "7d"
""".encode()
    )


def test_unknown_labels_never_take_a_scoped_relaxation():
    """A rule that relaxes its own scope (development) must not relax a target whose
    labels are unknown, which may be production: the defaults' stricter word holds."""
    strict = _relaxed_in_dev("deny")
    assert strict.evaluate(PolicyInput("resize", "libvirt", None, None, 0.9)).kind is (
        VerdictKind.DENY
    )
    lenient = _relaxed_in_dev("approval")
    v = lenient.evaluate(PolicyInput("resize", "libvirt", None, None, 0.9))
    assert (v.kind, v.reason_required, v.ttl) == (VerdictKind.APPROVAL, True, 3600)
    dev = lenient.evaluate(PolicyInput("resize", "libvirt", {"env": "dev"}, None, 0.9))
    assert (dev.reason_required, dev.ttl) == (False, 7 * 86400)  # where it does apply


def test_a_rules_reason_required_is_the_verdicts():
    policy = Policy.parse(
        b"""version = 1
[defaults]
execute_below = 0.0
reason_required = false
[[rules]]
name = "reasons in prod"
match = { selector = "env=prod" }
reason_required = true
"""
    )
    assert ask(policy, risk=0.5, env="prod").reason_required
    assert not ask(policy, risk=0.5, env="staging").reason_required


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "version must be 1"),
        ("version = 2", "version must be 1"),
        ("version = 1\n[defaults]\nexecute_below = 1.5", "defaults.execute_below: must be"),
        ("version = 1\n[defaults]\nexecute_below = 0.9\napprove_below = 0.5", "must not exceed"),
        ("version = 1\n[defaults]\nabove = 'maybe'", "above: must be 'deny' or 'approval'"),
        ("version = 1\n[defaults]\napprovals = 0", "defaults.approvals: must be a whole number"),
        ("version = 1\n[defaults]\napproval_ttl = 'soon'", "defaults.approval_ttl"),
        # Past what a deadline can be (the datetime overflows): refused at load, not at use.
        ("version = 1\n[defaults]\napproval_ttl = inf", "not a duration"),
        ("version = 1\n[defaults]\napproval_ttl = nan", "not a duration"),
        ("version = 1\n[defaults]\napproval_ttl = 1e12", "longer than a year"),
        ("version = 1\n[defaults]\napproval_ttl = '99999999d'", "longer than a year"),
        ("version = 1\n[defaults]\napproval_ttl = '367d'", "longer than a year"),
        ("version = 1\n[defaults]\nexecte_below = 0.1", "defaults.execte_below: unknown setting"),
        ("version = 1\n[surprise]", "unknown section 'surprise'"),
        ("version = 1\n[[rules]]\nmatch = { verbs = ['nuke'] }", "match.verbs: unknown verb"),
        ("version = 1\n[[rules]]\nmatch = { selector = 'prod' }", "'prod' is not key=value"),
        ("version = 1\n[[rules]]\nmatch = { runtime = 'xen' }", "unknown runtime 'xen'"),
        ("version = 1\n[[rules]]\nforbid = 'yes'", "rules[0].forbid"),
        ("version = 1\n[[rules]]\nname = 'r'\nexecute_below = -1", "rules[0].execute_below"),
        ("version = 1\n[[rules]]\nmatch = { hosts = 1 }", "unknown key 'hosts'"),
        ("version = [", "not valid TOML"),
        ("version = true", "version must be 1"),
        ("version = 1\n[[rules]]\nmatch = { verbs = [] }", "match.verbs: must name a verb"),
        ("version = 1\n[[rules]]\nmatch = { runtime = false }", "match.runtime: must name"),
        ("version = 1\n[[rules]]\nmatch = { runtime = '' }", "match.runtime: must name"),
        ("version = 1\n[defaults]\nabove = 'approval'\napprovals = 3\napprovals_above = 2",
         "approvals_above (2) must not be below approvals (3)"),
        ("version = 1\n[defaults]\nabove = 'approval'\napprovals = 3\napprovals_above = 4\n"
         "[[rules]]\nname = 'r'\n"
         "approvals_above = 2", "rules 'r' can match one proposal and together clash"),
    ],
)  # fmt: skip
def test_bad_policies_are_refused_with_the_key_named(text: str, needle: str):
    with pytest.raises(PolicyError) as info:
        Policy.parse(text.encode(), "p.toml")
    assert needle in str(info.value)


def test_unreadable_policy(tmp_path: Path):
    with pytest.raises(PolicyError, match="cannot read policy"):
        Policy.load(tmp_path / "missing.toml")


def test_rules_are_checked_against_the_files_defaults_and_each_other():
    head = b"version = 1\n[defaults]\nexecute_below = 0.2\napprove_below = 0.95\n"
    # Fine against this file's defaults, though not against the built-in approve_below.
    ok = Policy.parse(head + b'[[rules]]\nname = "a"\nmatch = { verbs = ["start"] }\n'
                      b"execute_below = 0.9\n")  # fmt: skip
    assert ok.evaluate(PolicyInput("start", "libvirt", {}, 0.85, 0.99)).kind.value == "execute"
    clash = head + (
        b'[[rules]]\nname = "lenient"\nmatch = { verbs = ["start"] }\nexecute_below = 0.9\n'
        b'[[rules]]\nname = "strict"\nmatch = { selector = "env=prod" }\napprove_below = 0.5\n'
    )
    with pytest.raises(PolicyError, match="'lenient' \\+ 'strict' can match one proposal"):
        Policy.parse(clash)
    own = head + b'[[rules]]\nname = "x"\nexecute_below = 0.7\napprove_below = 0.6\n'
    with pytest.raises(PolicyError, match="rules\\[0\\]: execute_below must not exceed"):
        Policy.parse(own)
