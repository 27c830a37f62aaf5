from gateway._proto.govgate.v1 import types_pb2 as _types_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProposeRequest(_message.Message):
    __slots__ = ("request_id", "action", "dry_run")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    action: _types_pb2.Action
    dry_run: bool
    def __init__(self, request_id: _Optional[str] = ..., action: _Optional[_Union[_types_pb2.Action, _Mapping]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class GetDecisionRequest(_message.Message):
    __slots__ = ("decision_id",)
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    def __init__(self, decision_id: _Optional[str] = ...) -> None: ...

class WatchDecisionRequest(_message.Message):
    __slots__ = ("decision_id",)
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    def __init__(self, decision_id: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("decision_id", "reason")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    reason: str
    def __init__(self, decision_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReportIncidentRequest(_message.Message):
    __slots__ = ("decision_id", "harmful", "severity", "description")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    HARMFUL_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    harmful: bool
    severity: str
    description: str
    def __init__(self, decision_id: _Optional[str] = ..., harmful: _Optional[bool] = ..., severity: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ReportIncidentResponse(_message.Message):
    __slots__ = ("ledger_index",)
    LEDGER_INDEX_FIELD_NUMBER: _ClassVar[int]
    ledger_index: int
    def __init__(self, ledger_index: _Optional[int] = ...) -> None: ...
