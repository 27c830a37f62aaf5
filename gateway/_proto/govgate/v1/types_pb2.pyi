import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecisionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_STATE_UNSPECIFIED: _ClassVar[DecisionState]
    PENDING_APPROVAL: _ClassVar[DecisionState]
    EXECUTED: _ClassVar[DecisionState]
    DENIED: _ClassVar[DecisionState]
    FAILED: _ClassVar[DecisionState]
    EXPIRED: _ClassVar[DecisionState]
    ROLLED_BACK: _ClassVar[DecisionState]
    DRY_RUN: _ClassVar[DecisionState]
    EXECUTING: _ClassVar[DecisionState]
    HALTED: _ClassVar[DecisionState]
DECISION_STATE_UNSPECIFIED: DecisionState
PENDING_APPROVAL: DecisionState
EXECUTED: DecisionState
DENIED: DecisionState
FAILED: DecisionState
EXPIRED: DecisionState
ROLLED_BACK: DecisionState
DRY_RUN: DecisionState
EXECUTING: DecisionState
HALTED: DecisionState

class Target(_message.Message):
    __slots__ = ("runtime", "resource")
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    runtime: str
    resource: str
    def __init__(self, runtime: _Optional[str] = ..., resource: _Optional[str] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("verb", "target", "parameters", "justification", "confidence", "engine")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERB_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    JUSTIFICATION_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    verb: str
    target: Target
    parameters: _containers.ScalarMap[str, str]
    justification: str
    confidence: float
    engine: str
    def __init__(self, verb: _Optional[str] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., parameters: _Optional[_Mapping[str, str]] = ..., justification: _Optional[str] = ..., confidence: _Optional[float] = ..., engine: _Optional[str] = ...) -> None: ...

class Contribution(_message.Message):
    __slots__ = ("feature", "value", "contribution", "text")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    feature: str
    value: float
    contribution: float
    text: str
    def __init__(self, feature: _Optional[str] = ..., value: _Optional[float] = ..., contribution: _Optional[float] = ..., text: _Optional[str] = ...) -> None: ...

class Review(_message.Message):
    __slots__ = ("reviewer", "approved", "reason", "time", "ledger_index")
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    APPROVED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    LEDGER_INDEX_FIELD_NUMBER: _ClassVar[int]
    reviewer: str
    approved: bool
    reason: str
    time: _timestamp_pb2.Timestamp
    ledger_index: int
    def __init__(self, reviewer: _Optional[str] = ..., approved: _Optional[bool] = ..., reason: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ledger_index: _Optional[int] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("status", "detail", "ledger_index", "time")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    LEDGER_INDEX_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    status: str
    detail: str
    ledger_index: int
    time: _timestamp_pb2.Timestamp
    def __init__(self, status: _Optional[str] = ..., detail: _Optional[str] = ..., ledger_index: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("decision_id", "state", "risk", "contributions", "model_id", "policy_id", "reasons", "ledger_index", "leaf_hash", "request_id", "action", "base_value", "schema_version", "created", "outcome", "reviews", "approvals_required", "trace_id", "fallback", "requester", "request_digest", "approval_deadline")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RISK_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_ID_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    LEDGER_INDEX_FIELD_NUMBER: _ClassVar[int]
    LEAF_HASH_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    BASE_VALUE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REVIEWS_FIELD_NUMBER: _ClassVar[int]
    APPROVALS_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    state: DecisionState
    risk: float
    contributions: _containers.RepeatedCompositeFieldContainer[Contribution]
    model_id: str
    policy_id: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    ledger_index: int
    leaf_hash: bytes
    request_id: str
    action: Action
    base_value: float
    schema_version: str
    created: _timestamp_pb2.Timestamp
    outcome: Outcome
    reviews: _containers.RepeatedCompositeFieldContainer[Review]
    approvals_required: int
    trace_id: str
    fallback: bool
    requester: str
    request_digest: bytes
    approval_deadline: _timestamp_pb2.Timestamp
    def __init__(self, decision_id: _Optional[str] = ..., state: _Optional[_Union[DecisionState, str]] = ..., risk: _Optional[float] = ..., contributions: _Optional[_Iterable[_Union[Contribution, _Mapping]]] = ..., model_id: _Optional[str] = ..., policy_id: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., ledger_index: _Optional[int] = ..., leaf_hash: _Optional[bytes] = ..., request_id: _Optional[str] = ..., action: _Optional[_Union[Action, _Mapping]] = ..., base_value: _Optional[float] = ..., schema_version: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., outcome: _Optional[_Union[Outcome, _Mapping]] = ..., reviews: _Optional[_Iterable[_Union[Review, _Mapping]]] = ..., approvals_required: _Optional[int] = ..., trace_id: _Optional[str] = ..., fallback: _Optional[bool] = ..., requester: _Optional[str] = ..., request_digest: _Optional[bytes] = ..., approval_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Scope(_message.Message):
    __slots__ = ("all", "runtime", "selector")
    ALL_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    all: bool
    runtime: str
    selector: str
    def __init__(self, all: _Optional[bool] = ..., runtime: _Optional[str] = ..., selector: _Optional[str] = ...) -> None: ...
