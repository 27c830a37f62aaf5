from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class QueryRequest(_message.Message):
    __slots__ = ("from_index", "to_index", "since", "until", "kind", "actor", "target", "decision_id", "trace_id", "limit")
    FROM_INDEX_FIELD_NUMBER: _ClassVar[int]
    TO_INDEX_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    from_index: int
    to_index: int
    since: str
    until: str
    kind: str
    actor: str
    target: str
    decision_id: str
    trace_id: str
    limit: int
    def __init__(self, from_index: _Optional[int] = ..., to_index: _Optional[int] = ..., since: _Optional[str] = ..., until: _Optional[str] = ..., kind: _Optional[str] = ..., actor: _Optional[str] = ..., target: _Optional[str] = ..., decision_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("index", "time", "kind", "actor", "target", "decision_id", "trace_id", "key_id", "prev", "leaf_hash", "body_json", "envelope")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PREV_FIELD_NUMBER: _ClassVar[int]
    LEAF_HASH_FIELD_NUMBER: _ClassVar[int]
    BODY_JSON_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    index: int
    time: str
    kind: str
    actor: str
    target: str
    decision_id: str
    trace_id: str
    key_id: str
    prev: bytes
    leaf_hash: bytes
    body_json: str
    envelope: bytes
    def __init__(self, index: _Optional[int] = ..., time: _Optional[str] = ..., kind: _Optional[str] = ..., actor: _Optional[str] = ..., target: _Optional[str] = ..., decision_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., key_id: _Optional[str] = ..., prev: _Optional[bytes] = ..., leaf_hash: _Optional[bytes] = ..., body_json: _Optional[str] = ..., envelope: _Optional[bytes] = ...) -> None: ...

class GetCheckpointRequest(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("note", "size", "root")
    NOTE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ROOT_FIELD_NUMBER: _ClassVar[int]
    note: str
    size: int
    root: bytes
    def __init__(self, note: _Optional[str] = ..., size: _Optional[int] = ..., root: _Optional[bytes] = ...) -> None: ...

class GetInclusionProofRequest(_message.Message):
    __slots__ = ("index", "tree_size")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    index: int
    tree_size: int
    def __init__(self, index: _Optional[int] = ..., tree_size: _Optional[int] = ...) -> None: ...

class InclusionProof(_message.Message):
    __slots__ = ("index", "tree_size", "leaf", "leaf_hash", "proof")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEAF_FIELD_NUMBER: _ClassVar[int]
    LEAF_HASH_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    index: int
    tree_size: int
    leaf: bytes
    leaf_hash: bytes
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, index: _Optional[int] = ..., tree_size: _Optional[int] = ..., leaf: _Optional[bytes] = ..., leaf_hash: _Optional[bytes] = ..., proof: _Optional[_Iterable[bytes]] = ...) -> None: ...

class GetConsistencyProofRequest(_message.Message):
    __slots__ = ("old_size", "tree_size")
    OLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    old_size: int
    tree_size: int
    def __init__(self, old_size: _Optional[int] = ..., tree_size: _Optional[int] = ...) -> None: ...

class ConsistencyProof(_message.Message):
    __slots__ = ("old_size", "tree_size", "proof")
    OLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    old_size: int
    tree_size: int
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, old_size: _Optional[int] = ..., tree_size: _Optional[int] = ..., proof: _Optional[_Iterable[bytes]] = ...) -> None: ...
