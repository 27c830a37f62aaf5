"""What govgate governs: actions on VMs and sandboxes, and the state of their targets.

These value types are shared by the runtime adapters (which execute actions
and describe targets) and by ``explain`` (which scores them). They are frozen,
validated on construction from JSON, and carry no I/O.

The verb vocabulary follows libvirt's access-control permissions
(``org.libvirt.api.domain.<permission>``) so that an operator who knows libvirt's
ACL model recognises what each verb may do; two sandbox verbs (``create``,
``exec``) cover Kata Containers through containerd. :data:`VERBS` is the table;
``docs/explain.md`` renders it for people.

Example::

    action = Action.from_json({"verb": "resize", "target": {"runtime": "libvirt",
                               "resource": "web-3"}, "parameters": {"vcpus": 4}})
    assert action.int_param("vcpus") == 4 and VERBS[action.verb].mutating
"""

from __future__ import annotations

import enum
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from adapters.errors import InvalidActionError

__all__ = [
    "RUNTIMES",
    "VERBS",
    "Action",
    "PowerState",
    "Reversibility",
    "RuntimeState",
    "Target",
    "Verb",
    "VerbInfo",
]

RUNTIMES = ("libvirt", "kata")
MAX_TEXT = 4096  # justification, identities and parameter values: longer is refused
MAX_PARAMETERS = 32
MAX_LABELS = 64


class Verb(enum.StrEnum):
    START = "start"
    SHUTDOWN = "shutdown"
    DESTROY = "destroy"
    REBOOT = "reboot"
    RESET = "reset"
    SUSPEND = "suspend"
    RESUME = "resume"
    RESIZE = "resize"
    SNAPSHOT = "snapshot"
    REVERT = "revert"
    SNAPSHOT_DELETE = "snapshot-delete"
    SAVE = "save"
    MIGRATE = "migrate"
    DELETE = "delete"
    CREATE = "create"
    EXEC = "exec"


class Reversibility(enum.StrEnum):
    REVERSIBLE = "reversible"  # revert can restore the captured prior state
    NOTHING_TO_UNDO = "nothing-to-undo"  # the target ends where it began (reboot)
    IRREVERSIBLE = "irreversible"  # what it destroys cannot be brought back


class PowerState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    PMSUSPENDED = "pmsuspended"
    ABSENT = "absent"  # not defined on the runtime (yet, or any more)
    UNKNOWN = "unknown"


_BOOL = "bool"
_INT = "int"
_NUM = "number"
_STR = "str"


@dataclass(frozen=True)
class VerbInfo:
    """One row of the verb table."""

    verb: Verb
    permission: str  # libvirt ACL permission, without the org.libvirt.api.domain. prefix
    libvirt_api: str  # the libvirt call that performs it ("" where libvirt cannot)
    kata: str  # the containerd/Kata operation ("" where Kata cannot)
    reversibility: Reversibility
    mutating: bool  # changes the target (everything here does; kept for the stop switch)
    summary: str
    parameters: Mapping[str, str] = field(default_factory=dict)  # name -> type
    required: tuple[str, ...] = ()

    @functools.cached_property
    def runtimes(self) -> tuple[str, ...]:
        return tuple(rt for rt, op in (("libvirt", self.libvirt_api), ("kata", self.kata)) if op)


def _row(
    verb: Verb,
    permission: str,
    libvirt_api: str,
    kata: str,
    reversibility: Reversibility,
    summary: str,
    parameters: Mapping[str, str] | None = None,
    required: tuple[str, ...] = (),
) -> tuple[Verb, VerbInfo]:
    info = VerbInfo(
        verb,
        permission,
        libvirt_api,
        kata,
        reversibility,
        True,
        summary,
        MappingProxyType(dict(parameters or {})),
        required,
    )
    return verb, info


_R = Reversibility
VERBS: Mapping[Verb, VerbInfo] = MappingProxyType(
    dict(
        [
            _row(Verb.START, "start", "virDomainCreateWithFlags", "task start",
                 _R.REVERSIBLE, "boot a defined, stopped domain or sandbox"),
            _row(Verb.SHUTDOWN, "init-control", "virDomainShutdownFlags", "task kill SIGTERM",
                 _R.REVERSIBLE, "ask the guest to power off (ACPI), optionally forced "
                 "after a timeout", {"timeout_s": _NUM, "force": _BOOL}),
            _row(Verb.DESTROY, "stop", "virDomainDestroyFlags", "task kill SIGKILL",
                 _R.REVERSIBLE, "power off at once, like pulling the plug"),
            _row(Verb.REBOOT, "init-control", "virDomainReboot", "",
                 _R.NOTHING_TO_UNDO, "ask the guest to restart"),
            _row(Verb.RESET, "reset", "virDomainReset", "",
                 _R.NOTHING_TO_UNDO, "hard reset, like the reset button"),
            _row(Verb.SUSPEND, "suspend", "virDomainSuspend", "task pause",
                 _R.REVERSIBLE, "pause the vCPUs; memory stays allocated"),
            _row(Verb.RESUME, "suspend", "virDomainResume", "task resume",
                 _R.REVERSIBLE, "continue a paused domain or sandbox"),
            _row(Verb.RESIZE, "write", "virDomainSetVcpusFlags, virDomainSetMemoryFlags",
                 "sandbox update (resources)", _R.REVERSIBLE,
                 "change vCPUs and/or memory, live and/or in the persistent config",
                 {"vcpus": _INT, "memory_mib": _INT, "live": _BOOL, "config": _BOOL}),
            _row(Verb.SNAPSHOT, "snapshot", "virDomainSnapshotCreateXML", "",
                 _R.REVERSIBLE, "take a snapshot", {"name": _STR, "description": _STR}),
            _row(Verb.REVERT, "snapshot", "virDomainRevertToSnapshot", "",
                 _R.IRREVERSIBLE, "return to a snapshot; the current state is lost",
                 {"snapshot": _STR}, ("snapshot",)),
            _row(Verb.SNAPSHOT_DELETE, "snapshot", "virDomainSnapshotDelete", "",
                 _R.IRREVERSIBLE, "delete a snapshot", {"snapshot": _STR}, ("snapshot",)),
            _row(Verb.SAVE, "hibernate", "virDomainManagedSave", "",
                 _R.REVERSIBLE, "save memory to disk and stop; start restores it"),
            _row(Verb.MIGRATE, "migrate", "virDomainMigrateToURI3", "",
                 _R.REVERSIBLE, "move to another host", {"destination": _STR, "live": _BOOL},
                 ("destination",)),
            _row(Verb.DELETE, "delete", "virDomainUndefineFlags", "sandbox delete",
                 _R.IRREVERSIBLE, "remove the definition (and, for a sandbox, the sandbox)",
                 {"snapshots": _STR}),
            _row(Verb.CREATE, "write", "virDomainDefineXML", "sandbox create",
                 _R.REVERSIBLE, "define a new domain or create a sandbox",
                 {"image": _STR, "vcpus": _INT, "memory_mib": _INT}),
            _row(Verb.EXEC, "", "", "task exec",
                 _R.IRREVERSIBLE, "run a command inside a sandbox; its effects are unknown",
                 {"command": _STR}, ("command",)),
        ]
    )
)  # fmt: skip


# C0 controls but tab and newline, DEL, and C1 controls.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def text_problem(value: str, limit: int = MAX_TEXT) -> str | None:
    """What is wrong with free text an overseer or an engine sends (too long, or a control
    character: terminal escapes and NULs reach overseers' screens and logs), or None."""
    if len(value) > limit:
        return f"longer than {limit} characters"
    bad = _CONTROL.search(value)
    if bad is not None:
        return f"control character U+{ord(bad.group()):04X} at position {bad.start()}"
    return None


def _text(value: Any, where: str, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InvalidActionError("must be a string", field=where)
    if required and not value.strip():
        raise InvalidActionError("must not be empty", field=where)
    if (problem := text_problem(value)) is not None:
        raise InvalidActionError(problem, field=where)
    return value


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidActionError("must be a JSON object", field=where)
    return value


_E = TypeVar("_E", bound=enum.StrEnum)


def _choice(kind: type[_E], value: Any, what: str, where: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(member.value for member in kind)
        raise InvalidActionError(
            f"unknown {what} {value!r} (known: {known})", field=where
        ) from None


def _check_keys(obj: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise InvalidActionError(
            f"unknown field {unknown[0]!r} (allowed: {', '.join(allowed)})", field=where
        )


def _parse_param(kind: str, raw: str, where: str) -> bool | int | float | str:
    """Parameters travel as strings (gRPC ``map<string,string>``); this is their typing."""
    if kind == _BOOL:
        low = raw.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise InvalidActionError(f"{raw!r} is not a boolean (true/false)", field=where)
    if kind == _INT:
        try:
            n = int(raw.strip(), 10)
        except ValueError:
            raise InvalidActionError(f"{raw!r} is not an integer", field=where) from None
        if not 1 <= n <= 1 << 40:
            raise InvalidActionError(f"{n} is out of range (1..2^40)", field=where)
        return n
    if kind == _NUM:
        try:
            x = float(raw.strip())
        except ValueError:
            raise InvalidActionError(f"{raw!r} is not a number", field=where) from None
        if not math.isfinite(x) or x < 0:
            raise InvalidActionError(f"{raw!r} must be a finite number >= 0", field=where)
        return x
    return raw


def _float(value: int | float, where: str) -> float:
    try:
        return float(value)
    except OverflowError:  # a JSON integer beyond any double
        raise InvalidActionError("number out of range", field=where) from None


def _param_text(value: Any, where: str) -> str:
    # JSON files may give numbers and booleans directly; they are stored as the
    # strings the gRPC API would carry, so both paths featurize identically.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return _text(value, where, required=True)


@dataclass(frozen=True)
class Target:
    runtime: str  # "libvirt" or "kata"
    resource: str  # domain name or UUID, sandbox id

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise InvalidActionError(
                f"unknown runtime {self.runtime!r} (known: {', '.join(RUNTIMES)})",
                field="target.runtime",
            )
        _text(self.resource, "target.resource", required=True)

    def __str__(self) -> str:
        return f"{self.runtime}/{self.resource}"


@dataclass(frozen=True)
class Action:
    """A proposed change to one target, as a decision engine sends it."""

    verb: Verb
    target: Target
    parameters: Mapping[str, str] = field(default_factory=dict)
    justification: str = ""
    confidence: float | None = None  # the engine's own, 0..1; None when it gave none
    engine: str = ""  # the decision engine's name, as it reports it
    requester: str = ""  # the authenticated identity (from the mTLS certificate)

    def __post_init__(self) -> None:
        info = VERBS[self.verb]
        if self.target.runtime not in info.runtimes:
            raise InvalidActionError(
                f"verb {self.verb!s} is not available on runtime {self.target.runtime!r}",
                field="action.verb",
            )
        if len(self.parameters) > MAX_PARAMETERS:
            raise InvalidActionError(
                f"more than {MAX_PARAMETERS} parameters", field="action.parameters"
            )
        allowed = tuple(info.parameters)
        for name, raw in self.parameters.items():
            where = f"action.parameters.{name}"
            if name not in info.parameters:
                hint = f"allowed: {', '.join(allowed)}" if allowed else "it takes none"
                raise InvalidActionError(
                    f"verb {self.verb!s} has no parameter {name!r} ({hint})", field=where
                )
            _parse_param(info.parameters[name], _text(raw, where, required=True), where)
        for name in info.required:
            if name not in self.parameters:
                raise InvalidActionError(
                    f"verb {self.verb!s} needs this parameter", field=f"action.parameters.{name}"
                )
        if self.verb is Verb.RESIZE and not {"vcpus", "memory_mib"} & set(self.parameters):
            raise InvalidActionError(
                "resize needs vcpus and/or memory_mib", field="action.parameters"
            )
        if self.confidence is not None and not (
            isinstance(self.confidence, float | int)
            and not isinstance(self.confidence, bool)
            and 0.0 <= self.confidence <= 1.0
        ):
            raise InvalidActionError("must be a number in [0, 1]", field="action.confidence")
        _text(self.justification, "action.justification")
        _text(self.engine, "action.engine")
        _text(self.requester, "action.requester")
        object.__setattr__(self, "parameters", MappingProxyType(dict(self.parameters)))

    def param(self, name: str) -> bool | int | float | str | None:
        """The typed value of a parameter, or None when it was not given."""
        raw = self.parameters.get(name)
        if raw is None:
            return None
        return _parse_param(VERBS[self.verb].parameters[name], raw, name)

    def int_param(self, name: str) -> int | None:
        value = self.param(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @classmethod
    def from_json(cls, obj: Any, where: str = "action") -> Action:
        obj = _object(obj, where)
        _check_keys(
            obj,
            ("verb", "target", "parameters", "justification", "confidence", "engine",
             "requester"),
            where,
        )  # fmt: skip
        verb = _choice(Verb, _text(obj.get("verb"), f"{where}.verb", required=True),
                       "verb", f"{where}.verb")  # fmt: skip
        target = _object(obj.get("target"), f"{where}.target")
        _check_keys(target, ("runtime", "resource"), f"{where}.target")
        params = _object(obj.get("parameters", {}), f"{where}.parameters")
        confidence = obj.get("confidence")
        if isinstance(confidence, str):  # ledger bodies carry non-integers as decimal strings
            try:
                confidence = float(confidence)
            except ValueError:
                raise InvalidActionError(
                    f"{confidence!r} is not a number", field=f"{where}.confidence"
                ) from None
        if confidence is not None and (
            isinstance(confidence, bool) or not isinstance(confidence, int | float)
        ):
            raise InvalidActionError("must be a number in [0, 1]", field=f"{where}.confidence")
        try:
            tgt = Target(
                _text(target.get("runtime"), f"{where}.target.runtime", required=True),
                _text(target.get("resource"), f"{where}.target.resource", required=True),
            )
        except InvalidActionError as err:
            if err.field.startswith(where):
                raise
            raise InvalidActionError(err.reason, field=f"{where}.{err.field}") from None
        return cls(
            verb=verb,
            target=tgt,
            parameters={
                str(k): _param_text(v, f"{where}.parameters.{k}") for k, v in params.items()
            },
            justification=_text(obj.get("justification"), f"{where}.justification"),
            confidence=None if confidence is None else _float(confidence, f"{where}.confidence"),
            engine=_text(obj.get("engine"), f"{where}.engine"),
            requester=_text(obj.get("requester"), f"{where}.requester"),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "verb": self.verb.value,
            "target": {"runtime": self.target.runtime, "resource": self.target.resource},
            "parameters": dict(self.parameters),
            "justification": self.justification,
            "engine": self.engine,
            "requester": self.requester,
        }
        if self.confidence is not None:
            out["confidence"] = self.confidence
        return out

    def to_record(self) -> dict[str, Any]:
        """:meth:`to_json` without floats, for ledger bodies (confidence as a decimal string).

        Ledger payloads are RFC 8785 JSON, where floats are exact but easy to get
        wrong in other languages; :meth:`from_json` reads this form back.
        """
        out = self.to_json()
        if self.confidence is not None:
            out["confidence"] = repr(self.confidence)
        return out


_STATE_INTS = (
    "vcpus", "max_vcpus", "memory_mib", "max_memory_mib", "snapshots", "disks",
    "recent_actions",
)  # fmt: skip


@dataclass(frozen=True)
class RuntimeState:
    """What the runtime reports about a target (plus the gateway's recent-activity count).

    ``None`` means "not known": adapters leave a field ``None`` rather than
    guess, and the featurizer has a defined encoding for each unknown.
    """

    power: PowerState = PowerState.UNKNOWN
    vcpus: int | None = None
    max_vcpus: int | None = None
    memory_mib: int | None = None
    max_memory_mib: int | None = None
    uptime_s: float | None = None
    snapshots: int | None = None
    disks: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    recent_actions: int | None = None  # actions on this target in the last hour
    persistent: bool | None = None  # libvirt: defined (True) or transient (False)

    def __post_init__(self) -> None:
        for name in _STATE_INTS:
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 48
            ):
                raise InvalidActionError("must be an integer >= 0", field=f"state.{name}")
        if self.uptime_s is not None and (
            isinstance(self.uptime_s, bool)
            or not isinstance(self.uptime_s, int | float)
            or not math.isfinite(self.uptime_s)
            or self.uptime_s < 0
        ):
            raise InvalidActionError("must be a number >= 0", field="state.uptime_s")
        if len(self.labels) > MAX_LABELS:
            raise InvalidActionError(f"more than {MAX_LABELS} labels", field="state.labels")
        for key, value in self.labels.items():
            _text(key, "state.labels", required=True)
            _text(value, f"state.labels.{key}")
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def label(self, *names: str) -> str | None:
        """The first of ``names`` present in the labels, lower-cased; None if none is."""
        for name in names:
            if name in self.labels:
                return self.labels[name].strip().lower()
        return None

    @classmethod
    def from_json(cls, obj: Any, where: str = "state") -> RuntimeState:
        obj = _object(obj, where)
        _check_keys(obj, (*_STATE_INTS, "power", "uptime_s", "labels", "persistent"), where)
        power = _choice(PowerState, obj.get("power", "unknown"), "power state", f"{where}.power")
        labels = _object(obj.get("labels", {}), f"{where}.labels")
        persistent = obj.get("persistent")
        if persistent is not None and not isinstance(persistent, bool):
            raise InvalidActionError("must be true or false", field=f"{where}.persistent")
        uptime = obj.get("uptime_s")
        if isinstance(uptime, int) and not isinstance(uptime, bool):
            uptime = _float(uptime, f"{where}.uptime_s")
        return cls(
            power=power,
            labels={str(k): _text(v, f"{where}.labels.{k}") for k, v in labels.items()},
            uptime_s=uptime,
            persistent=persistent,
            **{name: obj.get(name) for name in _STATE_INTS},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"power": self.power.value, "labels": dict(self.labels)}
        for name in (*_STATE_INTS, "uptime_s", "persistent"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    def to_record(self) -> dict[str, Any]:
        """:meth:`to_json` without floats, for ledger bodies (uptime in whole seconds)."""
        out = self.to_json()
        if self.uptime_s is not None:
            out["uptime_s"] = round(self.uptime_s)
        return out
