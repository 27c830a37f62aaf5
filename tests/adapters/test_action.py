"""The action and runtime-state value types: JSON round trips, typing, validation, verb table.

Every validation failure is an :class:`InvalidActionError` whose ``field`` is the dotted
path of the offending value in the action file (``action.parameters.vcpus``), so that a
caller can report it as a field violation without parsing the message.
"""

from __future__ import annotations

from typing import Any

import pytest

from adapters.action import (
    RUNTIMES,
    VERBS,
    Action,
    PowerState,
    Reversibility,
    RuntimeState,
    Target,
    Verb,
)
from adapters.errors import InvalidActionError


def action_json(verb: str = "start", runtime: str = "libvirt", **extra: Any) -> dict[str, Any]:
    return {"verb": verb, "target": {"runtime": runtime, "resource": "vm-1"}, **extra}


def invalid_field(fn: Any, *args: Any) -> InvalidActionError:
    with pytest.raises(InvalidActionError) as info:
        fn(*args)
    return info.value


# --------------------------------------------------------------------------- round trips


def test_resize_round_trip_and_parameter_typing():
    obj = {
        "verb": "resize",
        "target": {"runtime": "libvirt", "resource": "web-3"},
        "parameters": {"vcpus": 4, "memory_mib": "8192", "live": True, "config": False},
        "justification": "queue depth rising",
        "confidence": 0.93,
        "engine": "autoscaler",
        "requester": "spiffe://example/autoscaler",
    }
    action = Action.from_json(obj)
    assert action.verb is Verb.RESIZE
    assert action.target == Target("libvirt", "web-3")
    assert str(action.target) == "libvirt/web-3"
    # JSON ints and booleans are kept as the strings the gRPC map<string,string> carries.
    assert dict(action.parameters) == {
        "vcpus": "4",
        "memory_mib": "8192",
        "live": "true",
        "config": "false",
    }
    assert action.param("vcpus") == 4
    assert action.int_param("vcpus") == 4
    assert action.int_param("memory_mib") == 8192
    assert action.param("live") is True
    assert action.param("config") is False
    assert action.int_param("live") is None  # a boolean is not an integer
    assert action.param("memory_mib") == 8192
    assert action.confidence == 0.93

    out = action.to_json()
    assert out == {
        "verb": "resize",
        "target": {"runtime": "libvirt", "resource": "web-3"},
        "parameters": {"vcpus": "4", "memory_mib": "8192", "live": "true", "config": "false"},
        "justification": "queue depth rising",
        "confidence": 0.93,
        "engine": "autoscaler",
        "requester": "spiffe://example/autoscaler",
    }
    assert Action.from_json(out) == action


def test_delete_round_trip_without_confidence():
    action = Action.from_json(
        {"verb": "delete", "target": {"runtime": "kata", "resource": "sbx-9"}}
    )
    assert action.verb is Verb.DELETE
    assert action.confidence is None
    assert action.param("snapshots") is None
    assert action.int_param("snapshots") is None
    out = action.to_json()
    assert "confidence" not in out
    assert out == {
        "verb": "delete",
        "target": {"runtime": "kata", "resource": "sbx-9"},
        "parameters": {},
        "justification": "",
        "engine": "",
        "requester": "",
    }
    assert Action.from_json(out) == action


def test_parameters_are_read_only():
    action = Action.from_json(action_json("resize", parameters={"vcpus": 2}))
    with pytest.raises(TypeError):
        action.parameters["vcpus"] = "64"  # type: ignore[index]


def test_numeric_parameter_accepts_json_float():
    action = Action.from_json(action_json("shutdown", parameters={"timeout_s": 2.5}))
    assert action.parameters["timeout_s"] == "2.5"
    assert action.param("timeout_s") == 2.5


def test_state_round_trip():
    obj = {
        "power": "running",
        "vcpus": 16,
        "max_vcpus": 16,
        "memory_mib": 65536,
        "max_memory_mib": 65536,
        "uptime_s": 15552000,
        "snapshots": 0,
        "disks": 3,
        "labels": {"Environment": "x", "environment": " Production ", "dependents": "12"},
        "recent_actions": 3,
        "persistent": True,
    }
    state = RuntimeState.from_json(obj)
    assert state.power is PowerState.RUNNING
    assert state.uptime_s == 15552000.0
    assert isinstance(state.uptime_s, float)
    assert state.snapshots == 0
    assert state.label("environment") == "production"  # stripped and lower-cased
    assert state.label("env", "dependents") == "12"  # the first present name wins
    assert state.label("env") is None
    assert RuntimeState.from_json(state.to_json()) == state


def test_empty_state_is_all_unknown():
    state = RuntimeState.from_json({})
    assert state.power is PowerState.UNKNOWN
    assert state.vcpus is None
    assert state.persistent is None
    assert state.to_json() == {"power": "unknown", "labels": {}}


# ------------------------------------------------------------------ errors name their field


@pytest.mark.parametrize(
    ("obj", "field", "in_message"),
    [
        (action_json("teleport"), "action.verb", "unknown verb 'teleport'"),
        (
            action_json("resize", parameters={"cpus": 4}),
            "action.parameters.cpus",
            "allowed: vcpus, memory_mib, live, config",
        ),
        (action_json("start", parameters={"force": True}), "action.parameters.force", "takes none"),
        (action_json("resize", parameters={"live": True}), "action.parameters", "vcpus"),
        (action_json("revert"), "action.parameters.snapshot", "needs this parameter"),
        (action_json("snapshot", "kata"), "action.verb", "not available on runtime 'kata'"),
        (action_json(confidence=1.5), "action.confidence", "[0, 1]"),
        (action_json(confidence=-0.01), "action.confidence", "[0, 1]"),
        (action_json(confidence=True), "action.confidence", "[0, 1]"),
        (action_json(confidence="high"), "action.confidence", "not a number"),
        (action_json(confidence="1.5"), "action.confidence", "[0, 1]"),
        (
            action_json("resize", parameters={"vcpus": "four"}),
            "action.parameters.vcpus",
            "not an integer",
        ),
        (action_json("resize", parameters={"vcpus": 0}), "action.parameters.vcpus", "range"),
        (action_json("resize", parameters={"vcpus": 4.0}), "action.parameters.vcpus", "integer"),
        (
            action_json("resize", parameters={"vcpus": 2, "live": "maybe"}),
            "action.parameters.live",
            "not a boolean",
        ),
        (
            action_json("shutdown", parameters={"timeout_s": -1}),
            "action.parameters.timeout_s",
            ">= 0",
        ),
        (
            action_json("revert", parameters={"snapshot": None}),
            "action.parameters.snapshot",
            "string",
        ),
        (action_json(priority="high"), "action", "unknown field 'priority'"),
        (
            {"verb": "start", "target": {"runtime": "libvirt", "resource": "a", "host": "h"}},
            "action.target",
            "unknown field 'host'",
        ),
        ({"verb": "start", "target": {"runtime": "libvirt"}}, "action.target.resource", "string"),
        (
            {"verb": "start", "target": {"runtime": "libvirt", "resource": "  "}},
            "action.target.resource",
            "empty",
        ),
        ({"verb": "start"}, "action.target", "JSON object"),
        (action_json(justification="x" * 4097), "action.justification", "4096"),
        (action_json(engine=7), "action.engine", "string"),
    ],
)
def test_action_error_names_its_field(obj: dict[str, Any], field: str, in_message: str):
    err = invalid_field(Action.from_json, obj)
    assert err.field == field
    assert in_message in str(err)
    assert str(err).startswith(f"{field}: ")


def test_unknown_runtime_names_its_field():
    # Every other error from Action.from_json carries the path inside the action document
    # (action.target.resource, action.verb, ...); the runtime sits next to the resource.
    err = invalid_field(Action.from_json, action_json("start", "xen"))
    assert "unknown runtime 'xen'" in str(err)
    assert err.field == "action.target.runtime"


def test_huge_integer_confidence_is_an_invalid_action():
    # A JSON integer too large for a float must be refused like any other
    # out-of-range confidence, not escape as OverflowError.
    err = invalid_field(Action.from_json, action_json(confidence=10**400))
    assert err.field == "action.confidence"


def test_huge_integer_uptime_is_an_invalid_state():
    err = invalid_field(RuntimeState.from_json, {"uptime_s": 10**400})
    assert err.field == "state.uptime_s"


def test_justification_at_the_limit_is_accepted():
    action = Action.from_json(action_json(justification="x" * 4096))
    assert len(action.justification) == 4096


def test_target_constructed_directly_is_validated():
    err = invalid_field(Target, "xen", "vm-1")
    assert err.field == "target.runtime"
    err = invalid_field(Target, "kata", "")
    assert err.field == "target.resource"


def test_reason_is_the_message_without_the_field():
    err = invalid_field(Action.from_json, action_json("teleport"))
    assert err.reason.startswith("unknown verb")
    assert isinstance(err, ValueError)


@pytest.mark.parametrize(
    ("obj", "field", "in_message"),
    [
        ({"vcpus": -1}, "state.vcpus", "integer >= 0"),
        ({"snapshots": True}, "state.snapshots", "integer >= 0"),
        ({"memory_mib": 1.5}, "state.memory_mib", "integer >= 0"),
        ({"recent_actions": 1 << 48}, "state.recent_actions", "integer >= 0"),
        ({"uptime_s": -3}, "state.uptime_s", ">= 0"),
        ({"uptime_s": True}, "state.uptime_s", ">= 0"),
        ({"power": "hibernating"}, "state.power", "unknown power state 'hibernating'"),
        ({"labels": {"environment": 2}}, "state.labels.environment", "string"),
        ({"labels": ["prod"]}, "state.labels", "JSON object"),
        ({"persistent": "yes"}, "state.persistent", "true or false"),
        ({"cpu": 4}, "state", "unknown field 'cpu'"),
        ({"labels": {"note": "x" * 4097}}, "state.labels.note", "4096"),
    ],
)
def test_state_error_names_its_field(obj: dict[str, Any], field: str, in_message: str):
    err = invalid_field(RuntimeState.from_json, obj)
    assert err.field == field
    assert in_message in str(err)


def test_state_constructed_directly_is_validated():
    err = invalid_field(lambda: RuntimeState(vcpus=-2))
    assert err.field == "state.vcpus"
    err = invalid_field(lambda: RuntimeState(max_memory_mib=False))  # type: ignore[arg-type]
    assert err.field == "state.max_memory_mib"


# --------------------------------------------------------------------------- the verb table


def test_every_verb_has_a_row():
    assert set(VERBS) == set(Verb)
    for verb, info in VERBS.items():
        assert info.verb is verb
        assert info.mutating
        assert info.summary


def test_every_row_runs_somewhere():
    for info in VERBS.values():
        assert info.runtimes, info.verb
        assert set(info.runtimes) <= set(RUNTIMES)


def test_libvirt_rows_name_an_acl_permission():
    for info in VERBS.values():
        if "libvirt" in info.runtimes:
            assert info.permission, info.verb
            assert info.permission == info.permission.strip().lower(), info.verb
            assert not info.permission.startswith("org.libvirt"), info.verb


def test_required_parameters_are_declared():
    for info in VERBS.values():
        assert set(info.required) <= set(info.parameters), info.verb
        assert set(info.parameters.values()) <= {"bool", "int", "number", "str"}, info.verb


def test_irreversible_verbs():
    irreversible = {
        v for v, info in VERBS.items() if info.reversibility is Reversibility.IRREVERSIBLE
    }
    assert irreversible == {Verb.REVERT, Verb.SNAPSHOT_DELETE, Verb.DELETE, Verb.EXEC}


def test_exec_is_kata_only_and_snapshot_libvirt_only():
    assert VERBS[Verb.EXEC].runtimes == ("kata",)
    assert VERBS[Verb.SNAPSHOT].runtimes == ("libvirt",)
    assert VERBS[Verb.DELETE].runtimes == ("libvirt", "kata")


def test_confidence_as_decimal_string_as_ledger_bodies_carry_it():
    a = Action.from_json(action_json(confidence="0.25"))
    assert a.confidence == 0.25
    assert Action.from_json(a.to_json()).confidence == 0.25


def test_record_forms_are_float_free_and_read_back():
    a = Action.from_json(action_json(confidence=0.1 + 0.2))
    rec = a.to_record()
    assert rec["confidence"] == "0.30000000000000004"
    assert Action.from_json(rec) == a
    state = RuntimeState.from_json({"power": "running", "uptime_s": 12.6, "vcpus": 2})
    srec = state.to_record()
    assert srec["uptime_s"] == 13
    assert isinstance(srec["uptime_s"], int)
    assert RuntimeState.from_json(srec).vcpus == 2


def test_ids_are_128_random_bits_in_hex_and_do_not_repeat():
    from adapters.runtime import new_id

    ids = [new_id() for _ in range(5000)]  # several refills of the pool
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
