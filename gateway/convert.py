"""Between the wire (``govgate.v1`` messages) and the core's value types.

Decoding validates: a malformed field raises
:class:`~gateway.errors.InvalidRequestError` naming its path, which the
error mapper turns into ``INVALID_ARGUMENT`` with a field violation.
Encoding never fails.
"""

from __future__ import annotations

import json
import math
from typing import Any

from adapters.action import Action
from adapters.errors import InvalidActionError
from gateway._proto.govgate.v1 import ledger_pb2, types_pb2
from gateway.decision import Decision, Halt
from gateway.errors import InvalidRequestError
from gateway.selector import parse_selector
from ledger.record import Record

__all__ = [
    "EXPLAINED",
    "action_from_proto",
    "decision_to_proto",
    "halt_from_proto",
    "record_to_proto",
]

EXPLAINED = 5  # contributions that come with a sentence (Contribution.text)


def action_from_proto(msg: types_pb2.Action) -> Action:
    """The core :class:`Action`; ``confidence`` 0 on the wire means "not given"."""
    confidence = msg.confidence
    if math.isnan(confidence) or not 0.0 <= confidence <= 1.0:
        raise InvalidRequestError("must be a number in [0, 1]", field="action.confidence")
    obj: dict[str, Any] = {
        "verb": msg.verb,
        "target": {"runtime": msg.target.runtime, "resource": msg.target.resource},
        "parameters": dict(msg.parameters),
        "justification": msg.justification,
        "engine": msg.engine,
    }
    if confidence > 0:
        obj["confidence"] = confidence
    try:
        return Action.from_json(obj)
    except InvalidActionError as err:
        raise InvalidRequestError(err.reason, field=err.field or "action") from err


def _action_fields(action: Action) -> dict[str, Any]:
    return {
        "verb": action.verb.value,
        "target": {"runtime": action.target.runtime, "resource": action.target.resource},
        "parameters": dict(action.parameters),
        "justification": action.justification,
        "confidence": action.confidence or 0.0,
        "engine": action.engine,
    }


def decision_to_proto(d: Decision) -> types_pb2.Decision:
    """The wire form of ``d``. Built as one constructor call from plain values (nested
    messages as dicts, times as datetimes): on the hot path, that is about three times
    faster than appending message objects one by one."""
    x = d.explanation
    fields: dict[str, Any] = {
        "decision_id": d.decision_id,
        "state": types_pb2.DecisionState.Value(d.state),
        "risk": d.risk if d.risk is not None else 0.0,
        "model_id": x.model_id if x else "",
        "policy_id": d.policy_id,
        "reasons": d.reasons,
        "ledger_index": max(d.ledger_index, 0),
        "leaf_hash": d.leaf_hash,
        "request_id": d.request_id,
        "action": _action_fields(d.action),
        "base_value": x.base_value if x else 0.0,
        "schema_version": x.schema_version if x else "",
        "created": d.created,
        "approvals_required": d.approvals_required,
        "trace_id": d.trace_id,
        "fallback": d.fallback,
        "requester": d.requester,
        "request_digest": d.digest,
    }
    if x is not None:  # every feature, largest first; sentences for the top few
        fields["contributions"] = [
            {"feature": c.feature, "value": c.value, "contribution": c.contribution,
             "text": c.text() if n < EXPLAINED else ""}
            for n, c in enumerate(x.top(len(x.contributions)))
        ]  # fmt: skip
    if d.approval_deadline is not None:
        fields["approval_deadline"] = d.approval_deadline
    if d.outcome is not None:
        fields["outcome"] = {
            "status": str(d.outcome.get("status", "")),
            "detail": str(d.outcome.get("detail", "")),
            "ledger_index": int(d.outcome.get("ledger_index", 0)),
        }
    if d.reviews:
        fields["reviews"] = [
            {"reviewer": r["reviewer"], "approved": r["approved"], "reason": r["reason"],
             "ledger_index": r["ledger_index"]}
            for r in d.reviews
        ]  # fmt: skip
    return types_pb2.Decision(**fields)


def halt_from_proto(scope: types_pb2.Scope) -> Halt:
    which = scope.WhichOneof("scope")
    if which == "all" and scope.all:
        return Halt(all=True)
    if which == "runtime" and scope.runtime:
        return Halt(runtime=scope.runtime)
    if which == "selector" and scope.selector.strip():
        try:
            return Halt(selector=parse_selector(scope.selector))
        except ValueError as err:
            raise InvalidRequestError(str(err), field="scope.selector") from None
    raise InvalidRequestError("choose all, a runtime or a label selector", field="scope")


def record_to_proto(rec: Record) -> ledger_pb2.Record:
    return ledger_pb2.Record(
        index=rec.index, time=rec.time, kind=rec.kind, actor=rec.actor, target=rec.target,
        decision_id=rec.decision_id, trace_id=rec.trace_id, key_id=rec.key_id, prev=rec.prev,
        leaf_hash=rec.leaf_hash, body_json=json.dumps(rec.body, sort_keys=True),
        envelope=rec.envelope,
    )  # fmt: skip
