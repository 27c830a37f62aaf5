"""OTLP trace requests written straight in protobuf's wire format.

:func:`request_bytes` turns the span tuples that :meth:`RecordedSpan.end
<gateway.spans.RecordedSpan.end>` queues into the bytes of one
``ExportTraceServiceRequest``: the message that setting each field through the
protobuf runtime would build, in about half the CPU time (each field set through the
runtime is a call into C and an object for every sub-message). The span exporter
process parses the bytes back into a message (in C, fast) for the SDK's gRPC exporter.

It writes what the runtime would: proto3 scalars at their default value are left
out, ``oneof`` members and the sub-messages that code would touch are written even
when empty, strings that are not UTF-8 (lone surrogates) have those characters
replaced, integers beyond 64 bits become strings. Field numbers and wire types come
from ``opentelemetry-proto``'s descriptors. ``tests/ops/test_otlp_wire.py`` checks the
result against messages built field by field.

Span limits are applied as the SDK applies them: the latest attributes, events and
links are kept and the rest counted as dropped; strings are cut to the attribute
value length limit.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as ResourceMessage
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits

__all__ = ["request_bytes"]

# OTLP's span flags: whether the parent is remote is known, and whether it is.
HAS_IS_REMOTE, IS_REMOTE = 0x100, 0x200

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_WIRE_TYPE = {
    FieldDescriptor.TYPE_FIXED64: _I64,
    FieldDescriptor.TYPE_DOUBLE: _I64,
    FieldDescriptor.TYPE_FIXED32: _I32,
    FieldDescriptor.TYPE_STRING: _LEN,
    FieldDescriptor.TYPE_BYTES: _LEN,
    FieldDescriptor.TYPE_MESSAGE: _LEN,
}
_SMALL = [bytes((n,)) for n in range(0x80)]


def _varint(n: int) -> bytes:
    """``n`` (0 <= n < 2**64) as a protobuf varint."""
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(message: type[Message], name: str) -> bytes:
    field = message.DESCRIPTOR.fields_by_name[name]
    return _varint(field.number << 3 | _WIRE_TYPE.get(field.type, _VARINT))


def _len(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: a string, bytes or a sub-message."""
    return tag + _varint(len(payload)) + payload


_REQUEST_RESOURCE_SPANS = _tag(ExportTraceServiceRequest, "resource_spans")
_RS_RESOURCE = _tag(ResourceSpans, "resource")
_RS_SCOPE_SPANS = _tag(ResourceSpans, "scope_spans")
_RS_SCHEMA_URL = _tag(ResourceSpans, "schema_url")
_RESOURCE_ATTRIBUTES = _tag(ResourceMessage, "attributes")
_SS_SCOPE = _tag(ScopeSpans, "scope")
_SS_SPANS = _tag(ScopeSpans, "spans")
_SS_SCHEMA_URL = _tag(ScopeSpans, "schema_url")
_SCOPE_NAME = _tag(InstrumentationScope, "name")
_SCOPE_VERSION = _tag(InstrumentationScope, "version")
_SCOPE_ATTRIBUTES = _tag(InstrumentationScope, "attributes")
_KV_KEY = _tag(KeyValue, "key")
_KV_VALUE = _tag(KeyValue, "value")
_STRING = _tag(AnyValue, "string_value")
_TRUE = _tag(AnyValue, "bool_value") + b"\x01"
_FALSE = _tag(AnyValue, "bool_value") + b"\x00"
_INT = _tag(AnyValue, "int_value")
_DOUBLE = _tag(AnyValue, "double_value")
_ARRAY = _tag(AnyValue, "array_value")
_BYTES = _tag(AnyValue, "bytes_value")
_ARRAY_VALUES = _tag(ArrayValue, "values")
_TRACE_ID = _tag(Span, "trace_id")
_SPAN_ID = _tag(Span, "span_id")
_TRACE_STATE = _tag(Span, "trace_state")
_PARENT_SPAN_ID = _tag(Span, "parent_span_id")
_FLAGS = _tag(Span, "flags")
_NAME = _tag(Span, "name")
_KIND = _tag(Span, "kind")
_START = _tag(Span, "start_time_unix_nano")
_END = _tag(Span, "end_time_unix_nano")
_ATTRIBUTES = _tag(Span, "attributes")
_DROPPED_ATTRIBUTES = _tag(Span, "dropped_attributes_count")
_EVENTS = _tag(Span, "events")
_DROPPED_EVENTS = _tag(Span, "dropped_events_count")
_LINKS = _tag(Span, "links")
_DROPPED_LINKS = _tag(Span, "dropped_links_count")
_STATUS = _tag(Span, "status")
_EVENT_TIME = _tag(Span.Event, "time_unix_nano")
_EVENT_NAME = _tag(Span.Event, "name")
_EVENT_ATTRIBUTES = _tag(Span.Event, "attributes")
_EVENT_DROPPED = _tag(Span.Event, "dropped_attributes_count")
_LINK_TRACE_ID = _tag(Span.Link, "trace_id")
_LINK_SPAN_ID = _tag(Span.Link, "span_id")
_LINK_TRACE_STATE = _tag(Span.Link, "trace_state")
_LINK_ATTRIBUTES = _tag(Span.Link, "attributes")
_LINK_DROPPED = _tag(Span.Link, "dropped_attributes_count")
_LINK_FLAGS = _tag(Span.Link, "flags")
_STATUS_CODE = _tag(Status, "code")
_STATUS_MESSAGE = _tag(Status, "message")

_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack
_double = struct.Struct("<d").pack
_REMOTE_FLAGS = _fixed32(HAS_IS_REMOTE | IS_REMOTE)
_LOCAL_FLAGS = _fixed32(HAS_IS_REMOTE)
_REMOTE_FLAGS_FIELD = _FLAGS + _REMOTE_FLAGS
_LOCAL_FLAGS_FIELD = _FLAGS + _LOCAL_FLAGS
_INT64_MIN, _INT64_END = -(1 << 63), 1 << 63
_UINT64_MASK = (1 << 64) - 1


def _last(items: Sequence[Any], limit: int | None) -> tuple[Sequence[Any], int]:
    """The latest ``limit`` of ``items`` and how many were dropped, as the SDK keeps them."""
    if limit is None or len(items) <= limit:
        return items, 0
    return items[len(items) - limit :], len(items) - limit


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # lone surrogates (os.fsdecode): replaced, not the span lost
        return text.encode("utf-8", "replace")


def _any(value: Any, max_len: int | None) -> bytes | None:
    """The ``AnyValue`` for ``value``; None when nothing would be set (``None``, ``[]``)."""
    kind = type(value)
    if kind is str:
        return _len(_STRING, _utf8(value if max_len is None else value[:max_len]))
    if kind is bool:
        return _TRUE if value else _FALSE
    if kind is int:
        if _INT64_MIN <= value < _INT64_END:
            return _INT + _varint(value & _UINT64_MASK)
        return _len(_STRING, str(value).encode())  # beyond 64 bits: its digits
    if kind is float:
        return _DOUBLE + _double(value)
    if kind is bytes:
        return _len(_BYTES, value)
    if kind is list or kind is tuple:
        if not value:
            return None
        values = b"".join([_len(_ARRAY_VALUES, _any(v, max_len) or b"") for v in value])
        return _len(_ARRAY, values)
    if value is not None:
        return _len(_STRING, str(value).encode())
    return None


_PAIRS: dict[tuple[bytes, str, type, Any, int | None], bytes] = {}
_MAX_PAIRS = 4096  # encoded attributes kept: most repeat (verbs, targets, states, kinds)
_MAX_CACHED_CHARS = 256


def _pair(tag: bytes, key: str, value: Any, max_len: int | None) -> bytes:
    """One ``KeyValue`` field ``tag``."""
    pair = _len(_KV_KEY, key.encode()) if key else b""
    encoded = _any(value, max_len)
    if encoded is not None:
        pair += _len(_KV_VALUE, encoded)
    return _len(tag, pair)


def _attributes(tag: bytes, attributes: Mapping[str, Any], limit: int | None,
                max_len: int | None) -> tuple[bytes, int]:  # fmt: skip
    """The ``KeyValue`` fields ``tag`` for ``attributes``, and the count dropped."""
    items, dropped = _last(list(attributes.items()), limit)
    out = []
    cache = _PAIRS
    for key, value in items:
        kind = type(value)
        # Not floats (0.0 == -0.0), nor long strings (stack traces): the cache stays small.
        if kind is int or kind is bool or (kind is str and len(value) <= _MAX_CACHED_CHARS):
            memo = (tag, key, kind, value, max_len)
            pair = cache.get(memo)
            if pair is None:
                pair = _pair(tag, key, value, max_len)
                if len(cache) >= _MAX_PAIRS:
                    cache.clear()
                cache[memo] = pair
        else:
            pair = _pair(tag, key, value, max_len)
        out.append(pair)
    return b"".join(out), dropped


# The fields packed by these structs have one-byte tags (field numbers below 16).
assert all(len(tag) == 1 for tag in (_SPAN_ID, _PARENT_SPAN_ID, _START, _END))
_IDS = struct.Struct(">BBQBBQ")  # span_id, then parent_span_id: tag, length 8, big-endian
_TIMES = struct.Struct("<BQBQ")  # start_time_unix_nano, end_time_unix_nano: tag, fixed64
_HEADS: dict[tuple[str, int], bytes] = {}  # the name and kind fields, by (name, kind)


def _head(name: str, kind: int) -> bytes:
    """A span's name and kind fields (few distinct pairs: the pipeline's stages)."""
    head = _HEADS.get((name, kind))
    if head is None:
        head = _len(_NAME, name.encode()) if name else b""
        head += _KIND + _varint(kind + 1)  # OTLP counts from SPAN_KIND_UNSPECIFIED = 0
        if len(_HEADS) >= _MAX_PAIRS or len(name) > _MAX_CACHED_CHARS:
            return head
        _HEADS[(name, kind)] = head
    return head


def _span(item: tuple[Any, ...], limits: SpanLimits, traces: dict[tuple[int, str], bytes]) -> bytes:
    """One span's message; ``traces`` keeps the trace id and state fields of this request's
    traces (a trace's spans mostly come together)."""
    (name, trace_id, span_id, parent_id, parent_remote, _flags, state, kind, start, end,
     attributes, events, links, code, description, _scope) = item  # fmt: skip
    trace = traces.get((trace_id, state))
    if trace is None:
        trace = _TRACE_ID + b"\x10" + trace_id.to_bytes(16, "big")
        if state:
            trace += _len(_TRACE_STATE, state.encode())
        traces[(trace_id, state)] = trace
    try:
        if parent_id:
            ids = _IDS.pack(_SPAN_ID[0], 8, span_id, _PARENT_SPAN_ID[0], 8, parent_id)
        else:
            ids = _SPAN_ID + b"\x08" + span_id.to_bytes(8, "big")
    except struct.error:  # an id outside 64 bits: to_bytes says so as the runtime would
        ids = _SPAN_ID + b"\x08" + span_id.to_bytes(8, "big")
        ids += _PARENT_SPAN_ID + b"\x08" + parent_id.to_bytes(8, "big")
    out = [trace, ids, _REMOTE_FLAGS_FIELD if parent_remote else _LOCAL_FLAGS_FIELD,
           _head(name, kind)]  # fmt: skip
    if start and end:
        out.append(_TIMES.pack(_START[0], start, _END[0], end))
    else:
        if start:
            out += (_START, _fixed64(start))
        if end:
            out += (_END, _fixed64(end))
    if attributes:
        encoded, dropped = _attributes(
            _ATTRIBUTES, attributes, limits.max_span_attributes, limits.max_span_attribute_length
        )
        out.append(encoded)
        if dropped:
            out += (_DROPPED_ATTRIBUTES, _varint(dropped))
    if not events and not links and not code:
        return b"".join(out)
    event_len = limits.max_attribute_length
    kept, dropped = _last(events, limits.max_events)
    for event_name, at, event_attributes in kept:
        encoded, lost = _attributes(
            _EVENT_ATTRIBUTES, event_attributes, limits.max_event_attributes, event_len
        )
        event = [_EVENT_TIME + _fixed64(at) if at else b"",
                 _len(_EVENT_NAME, event_name.encode()) if event_name else b"",
                 encoded, _EVENT_DROPPED + _varint(lost) if lost else b""]  # fmt: skip
        out.append(_len(_EVENTS, b"".join(event)))
    if dropped:
        out += (_DROPPED_EVENTS, _varint(dropped))
    kept, dropped = _last(links, limits.max_links)
    for link_trace, link_span, _, link_state, remote, link_attributes in kept:
        encoded, lost = _attributes(
            _LINK_ATTRIBUTES, link_attributes, limits.max_link_attributes, event_len
        )
        link = [_LINK_TRACE_ID, b"\x10", link_trace.to_bytes(16, "big"),
                _LINK_SPAN_ID, b"\x08", link_span.to_bytes(8, "big"),
                _len(_LINK_TRACE_STATE, link_state.encode()) if link_state else b"",
                encoded, _LINK_DROPPED + _varint(lost) if lost else b"",
                _LINK_FLAGS, _REMOTE_FLAGS if remote else _LOCAL_FLAGS]  # fmt: skip
        out.append(_len(_LINKS, b"".join(link)))
    if dropped:
        out += (_DROPPED_LINKS, _varint(dropped))
    if code:
        status = _STATUS_CODE + _varint(code)
        if description:
            status += _len(_STATUS_MESSAGE, description.encode())
        out.append(_len(_STATUS, status))
    return b"".join(out)


def _scope(scope: tuple[Any, ...]) -> bytes:
    """The ``scope`` field of a ``ScopeSpans``, written even when empty."""
    name, version, _schema_url, attributes = scope
    encoded, _ = _attributes(_SCOPE_ATTRIBUTES, dict(attributes), None, None)
    body = (_len(_SCOPE_NAME, name.encode()) if name else b"") + (
        _len(_SCOPE_VERSION, version.encode()) if version else b""
    )
    return _len(_SS_SCOPE, body + encoded)


def request_bytes(
    spans: list[tuple[Any, ...]],
    resource: Resource,
    limits: SpanLimits,
    dropped: Callable[[str], None],
) -> bytes:
    """One ``ExportTraceServiceRequest`` for ``spans``, serialised. A span that cannot be
    written is left out, and ``dropped`` is told why."""
    encoded, _ = _attributes(_RESOURCE_ATTRIBUTES, resource.attributes, None, None)
    out = [_len(_RS_RESOURCE, encoded)] if encoded else []
    scopes: dict[tuple[Any, ...], list[bytes]] = {}
    traces: dict[tuple[int, str], bytes] = {}
    for item in spans:
        scope = item[-1]
        parts = scopes.get(scope)
        if parts is None:
            parts = scopes[scope] = [_scope(scope)]
            if scope[2]:
                parts.append(_len(_SS_SCHEMA_URL, scope[2].encode()))
        try:
            parts.append(_len(_SS_SPANS, _span(item, limits, traces)))
        except Exception as err:  # a span this encoder cannot write costs only itself
            dropped(f"a span could not be encoded ({type(err).__name__}: {err})")
    out += [_len(_RS_SCOPE_SPANS, b"".join(parts)) for parts in scopes.values()]
    if resource.schema_url:
        out.append(_len(_RS_SCHEMA_URL, resource.schema_url.encode()))
    return _len(_REQUEST_RESOURCE_SPANS, b"".join(out))
