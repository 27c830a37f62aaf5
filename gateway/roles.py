"""Who may do what: roles for authenticated identities, and what each engine may propose.

A roles file is TOML; ``examples/roles.toml`` is the annotated example::

    version = 1
    [identities."spiffe://govgate.local/engine-1"]
    roles = ["engine"]
    verbs = ["start", "shutdown", "resize", "snapshot"]   # default: every verb
    runtimes = ["libvirt"]                                # default: every runtime
    selectors = ["env=staging", "env=dev"]                # default: every target

    [identities."spiffe://govgate.local/alice"]
    roles = ["approver", "auditor"]

The roles and what they allow:

* ``engine``: propose, and read its decisions;
* ``approver``: list, approve, deny, halt, resume, roll back, report incidents,
  read decisions and the ledger;
* ``auditor``: read decisions and the ledger, report incidents;
* ``admin``: everything but proposing and approving.

An identity that the file does not name has no role. Checks are pure:
:meth:`Roles.check_method` before a call runs, and :meth:`Roles.check_action`
once the target's labels are known. A refusal raises :class:`AccessDeniedError`;
the gateway records it before answering ``PERMISSION_DENIED``.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.action import RUNTIMES, Action, Verb
from gateway.selector import Selector, parse_selector, selector_matches

__all__ = ["METHOD_ROLES", "AccessDeniedError", "Grant", "Roles", "RolesError"]

ROLES = ("engine", "approver", "auditor", "admin")
_READ = frozenset({"engine", "approver", "auditor", "admin"})
METHOD_ROLES: Mapping[str, frozenset[str]] = {
    "Propose": frozenset({"engine"}),
    "ProposeStream": frozenset({"engine"}),
    "GetDecision": _READ,
    "WatchDecision": _READ,
    "Rollback": frozenset({"approver", "admin"}),
    "ReportIncident": frozenset({"approver", "auditor", "admin"}),
    "ListPending": frozenset({"approver", "auditor", "admin"}),
    "Approve": frozenset({"approver"}),
    "Deny": frozenset({"approver"}),
    "Halt": frozenset({"approver", "admin"}),
    "Resume": frozenset({"approver", "admin"}),
    "Query": frozenset({"approver", "auditor", "admin"}),
    "GetCheckpoint": frozenset({"approver", "auditor", "admin"}),
    "GetInclusionProof": frozenset({"approver", "auditor", "admin"}),
    "GetConsistencyProof": frozenset({"approver", "auditor", "admin"}),
}


class RolesError(ValueError):
    """A roles file is malformed; the message names the identity and key."""


class AccessDeniedError(Exception):
    """An identity may not do what it asked."""

    def __init__(self, identity: str, what: str, why: str) -> None:
        super().__init__(f"{identity or 'an unnamed caller'} may not {what}: {why}")
        self.identity = identity
        self.what = what
        self.why = why


@dataclass(frozen=True)
class Grant:
    roles: frozenset[str]
    verbs: frozenset[str]  # empty: every verb
    runtimes: frozenset[str]  # empty: every runtime
    selectors: tuple[Selector, ...]  # any one must match; empty: any target


def _strings(value: Any, where: str, allowed: frozenset[str] | None = None) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RolesError(f"{where}: must be a list of strings")
    if allowed is not None:
        for v in value:
            if v not in allowed:
                raise RolesError(
                    f"{where}: unknown value {v!r} (known: {', '.join(sorted(allowed))})"
                )
    return frozenset(value)


def _selector(text: str, where: str) -> Selector:
    try:
        return parse_selector(text)
    except ValueError as err:
        raise RolesError(f"{where}: {err}") from None


@dataclass(frozen=True)
class Roles:
    id: str  # SHA-256 of the file
    grants: Mapping[str, Grant]

    @classmethod
    def parse(cls, raw: bytes, source: str = "<roles>") -> Roles:
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise RolesError(f"{source}: not valid TOML: {err}") from None
        if doc.get("version") != 1:
            raise RolesError(f"{source}: version must be 1")
        unknown = set(doc) - {"version", "identities"}
        if unknown:
            raise RolesError(f"{source}: unknown section {sorted(unknown)[0]!r}")
        identities = doc.get("identities", {})
        if not isinstance(identities, Mapping):
            raise RolesError(f"{source}: identities must be a table of identity = {{ roles }}")
        grants = {}
        for identity, raw_grant in identities.items():
            where = f"identities.{identity!r}"
            if not isinstance(raw_grant, Mapping):
                raise RolesError(f"{where}: must be a table")
            extra = set(raw_grant) - {"roles", "verbs", "runtimes", "selectors"}
            if extra:
                raise RolesError(f"{where}: unknown key {sorted(extra)[0]!r}")
            roles = _strings(raw_grant.get("roles", []), f"{where}.roles", frozenset(ROLES))
            if not roles:
                raise RolesError(f"{where}.roles: give at least one role")
            for limit in ("verbs", "runtimes", "selectors"):
                # Left out, a limit does not limit; written empty, it would read as "none
                # allowed" and mean "all allowed". Refused rather than guessed.
                if limit in raw_grant and not raw_grant[limit]:
                    raise RolesError(
                        f"{where}.{limit}: an empty list would allow every {limit[:-1]}; "
                        "leave it out to allow all, or name what is allowed"
                    )
            selectors = raw_grant.get("selectors", [])
            grants[identity] = Grant(
                roles=roles,
                verbs=_strings(raw_grant.get("verbs", []), f"{where}.verbs",
                               frozenset(v.value for v in Verb)),
                runtimes=_strings(raw_grant.get("runtimes", []), f"{where}.runtimes",
                                  frozenset(RUNTIMES)),
                selectors=tuple(_selector(s, f"{where}.selectors")
                                for s in _strings(selectors, f"{where}.selectors")),
            )  # fmt: skip
        return cls(hashlib.sha256(raw).hexdigest(), grants)

    @classmethod
    def load(cls, path: Path) -> Roles:
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise RolesError(f"cannot read roles file {path}: {err.strerror or err}") from None
        return cls.parse(raw, str(path))

    def check_method(self, identity: str, method: str) -> None:
        allowed = METHOD_ROLES.get(method)
        if allowed is None:
            raise AccessDeniedError(identity, f"call {method}", "no role may call it")
        grant = self.grants.get(identity)
        if grant is None:
            raise AccessDeniedError(identity, f"call {method}", "the identity has no role")
        if not grant.roles & allowed:
            needs = " or ".join(sorted(allowed))
            raise AccessDeniedError(identity, f"call {method}", f"it needs the role {needs}")

    def check_read(self, identity: str, decision_id: str, requester: str) -> None:
        """May ``identity`` read this decision? An engine reads only what it proposed."""
        grant = self.grants.get(identity)
        if grant is None:
            raise AccessDeniedError(identity, f"read {decision_id}", "the identity has no role")
        if grant.roles & {"approver", "auditor", "admin"} or identity == requester:
            return
        raise AccessDeniedError(
            identity, f"read {decision_id}", "an engine reads only the decisions it proposed"
        )

    def check_action(self, identity: str, action: Action, labels: Mapping[str, str]) -> None:
        """May this engine propose this action on a target with these labels?"""
        grant = self.grants.get(identity)
        what = f"propose {action.verb} on {action.target}"
        if grant is None or "engine" not in grant.roles:
            raise AccessDeniedError(identity, what, "it is not an engine")
        if grant.verbs and action.verb.value not in grant.verbs:
            raise AccessDeniedError(identity, what, f"verb {action.verb} is not granted")
        if grant.runtimes and action.target.runtime not in grant.runtimes:
            raise AccessDeniedError(
                identity, what, f"runtime {action.target.runtime} is not granted"
            )
        if grant.selectors and not any(selector_matches(sel, labels) for sel in grant.selectors):
            raise AccessDeniedError(identity, what, "the target is outside its granted scopes")
