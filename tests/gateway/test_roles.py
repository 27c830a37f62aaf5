"""Roles: which identity may call which method, and what each engine may propose."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.action import Action
from gateway.roles import METHOD_ROLES, AccessDeniedError, Roles, RolesError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "roles.toml"
ENGINE = "spiffe://govgate.local/engine-1"
ALICE = "spiffe://govgate.local/alice"
CAROL = "spiffe://govgate.local/carol"


@pytest.fixture(scope="module")
def roles() -> Roles:
    return Roles.load(EXAMPLE)


def act(verb: str, runtime: str = "libvirt") -> Action:
    params = {"vcpus": "2"} if verb == "resize" else {}
    return Action.from_json(
        {"verb": verb, "target": {"runtime": runtime, "resource": "x"}, "parameters": params}
    )


@pytest.mark.parametrize(
    ("who", "allowed"),
    [
        (ENGINE, {"Propose", "ProposeStream", "GetDecision", "WatchDecision"}),
        (ALICE, set(METHOD_ROLES) - {"Propose", "ProposeStream"}),
        (CAROL, {"GetDecision", "WatchDecision", "ReportIncident", "ListPending", "Query",
                 "GetCheckpoint", "GetInclusionProof", "GetConsistencyProof"}),
        ("spiffe://govgate.local/stranger", set()),
    ],
)  # fmt: skip
def test_method_matrix(roles: Roles, who: str, allowed: set[str]):
    for method in METHOD_ROLES:
        if method in allowed:
            roles.check_method(who, method)
        else:
            with pytest.raises(AccessDeniedError):
                roles.check_method(who, method)
    with pytest.raises(AccessDeniedError, match="no role may call"):
        roles.check_method(ALICE, "DropTables")


def test_engine_grant(roles: Roles):
    roles.check_action(ENGINE, act("resize"), {"env": "staging"})
    roles.check_action(ENGINE, act("resize"), {"environment": "DEV"})
    with pytest.raises(AccessDeniedError, match="verb delete is not granted"):
        roles.check_action(ENGINE, act("delete"), {"env": "staging"})
    with pytest.raises(AccessDeniedError, match="outside its granted scopes"):
        roles.check_action(ENGINE, act("resize"), {"env": "prod"})
    with pytest.raises(AccessDeniedError, match="runtime kata"):
        roles.check_action(ENGINE, act("start", "kata"), {"env": "staging"})
    with pytest.raises(AccessDeniedError, match="not an engine"):
        roles.check_action(ALICE, act("resize"), {"env": "staging"})


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("version = 2", "version must be 1"),
        ('version = 1\n[identities."a"]\nroles = ["god"]', "unknown value 'god'"),
        ('version = 1\n[identities."a"]\nroles = []', "at least one role"),
        ('version = 1\n[identities."a"]\nroles = ["engine"]\nverbs = ["nuke"]', "unknown value"),
        ('version = 1\n[identities."a"]\nroles = ["engine"]\nselectors = ["prod"]', "key=value"),
        ('version = 1\n[identities."a"]\nroles = ["engine"]\nhosts = []', "unknown key 'hosts'"),
        ("version = 1\n[people]", "unknown section"),
        ("version = 1\nidentities = 5", "identities must be a table"),
        ('version = 1\n[identities."a"]\nroles = ["engine"]\nverbs = []', "would allow every"),
        ('version = 1\n[identities."a"]\nroles = ["engine"]\nruntimes = []', "runtimes: an empty"),
        ('version = 1\n[identities."a"]\nroles = ["engine"]\nselectors = []', "every selector"),
        ('version = 1\nidentities = ["a"]', "identities must be a table"),
        ("version = [", "not valid TOML"),
    ],
)
def test_bad_roles_files(text: str, needle: str):
    with pytest.raises(RolesError) as info:
        Roles.parse(text.encode())
    assert needle in str(info.value)
