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

from google.protobuf.timestamp_pb2 import Timestamp

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


def action_to_proto(action: Action) -> types_pb2.Action:
    return types_pb2.Action(
        verb=action.verb.value,
        target=types_pb2.Target(runtime=action.target.runtime, resource=action.target.resource),
        parameters=dict(action.parameters),
        justification=action.justification,
        confidence=action.confidence or 0.0,
        engine=action.engine,
    )


def _ts(when: Any) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def decision_to_proto(d: Decision) -> types_pb2.Decision:
    msg = types_pb2.Decision(
        decision_id=d.decision_id,
        state=types_pb2.DecisionState.Value(d.state),
        risk=d.risk if d.risk is not None else 0.0,
        model_id=d.explanation.model_id if d.explanation else "",
        policy_id=d.policy_id,
        reasons=d.reasons,
        ledger_index=max(d.ledger_index, 0),
        leaf_hash=d.leaf_hash,
        request_id=d.request_id,
        action=action_to_proto(d.action),
        base_value=d.explanation.base_value if d.explanation else 0.0,
        schema_version=d.explanation.schema_version if d.explanation else "",
        created=_ts(d.created),
        approvals_required=d.approvals_required,
        trace_id=d.trace_id,
        fallback=d.fallback,
        requester=d.requester,
        request_digest=d.digest,
    )
    if d.explanation is not None:  # every feature, largest first; sentences for the top few
        for n, c in enumerate(d.explanation.top(len(d.explanation.contributions))):
            msg.contributions.append(
                types_pb2.Contribution(
                    feature=c.feature, value=c.value, contribution=c.contribution,
                    text=c.text() if n < EXPLAINED else "",
                )
            )  # fmt: skip
    if d.approval_deadline is not None:
        msg.approval_deadline.CopyFrom(_ts(d.approval_deadline))
    if d.outcome is not None:
        msg.outcome.CopyFrom(
            types_pb2.Outcome(
                status=str(d.outcome.get("status", "")),
                detail=str(d.outcome.get("detail", "")),
                ledger_index=int(d.outcome.get("ledger_index", 0)),
            )
        )
    for r in d.reviews:
        msg.reviews.append(
            types_pb2.Review(reviewer=r["reviewer"], approved=r["approved"], reason=r["reason"],
                             ledger_index=r["ledger_index"])
        )  # fmt: skip
    return msg


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
