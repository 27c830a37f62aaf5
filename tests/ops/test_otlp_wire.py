"""The OTLP wire encoder writes exactly the request the protobuf runtime would build.

:func:`gateway.otlp_wire.request_bytes` writes protobuf's wire format itself. The
reference here builds the same request field by field through the runtime (it was the
span exporter's encoder). For random batches of spans with every attribute type
(strings that are not UTF-8, integers beyond 64 bits, floats such as -0.0 and NaN,
nested arrays, None, other objects), events, links, statuses, scopes, resources and
tight span limits, the bytes parse to an equal message whose deterministic
serialisation is the reference's byte for byte, and the same spans are dropped for
the same reasons.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits

from gateway import otlp_wire
from gateway.otlp_wire import HAS_IS_REMOTE, IS_REMOTE, request_bytes
from gateway.spans import Scope


def _last(items: Sequence[Any], limit: int | None) -> tuple[Sequence[Any], int]:
    """The latest ``limit`` of ``items`` and how many were dropped, as the SDK keeps them."""
    if limit is None or len(items) <= limit:
        return items, 0
    return items[len(items) - limit :], len(items) - limit


def _value(out: AnyValue, value: Any, max_len: int | None) -> None:
    kind = type(value)
    if kind is str:
        text = value if max_len is None else value[:max_len]
        try:
            out.string_value = text
        except (UnicodeEncodeError, ValueError):  # not UTF-8: lone surrogates (os.fsdecode)
            out.string_value = text.encode("utf-8", "replace").decode()
    elif kind is bool:
        out.bool_value = value
    elif kind is int:
        try:
            out.int_value = value
        except ValueError:  # beyond 64 bits
            out.string_value = str(value)
    elif kind is float:
        out.double_value = value
    elif kind is bytes:
        out.bytes_value = value
    elif kind is list or kind is tuple:
        values = out.array_value.values
        for v in value:
            _value(values.add(), v, max_len)
    elif value is not None:
        out.string_value = str(value)


def _attributes(out: Any, attributes: Mapping[str, Any], limit: int | None,
                max_len: int | None) -> int:  # fmt: skip
    """Put ``attributes`` in the repeated ``KeyValue`` field ``out``; the count dropped."""
    items, dropped = _last(list(attributes.items()), limit)
    add = out.add
    for key, value in items:
        kv: KeyValue = add()
        kv.key = key
        _value(kv.value, value, max_len)
    return dropped


def _reference(spans: list[tuple[Any, ...]], resource: Resource, limits: SpanLimits,
               dropped: list[str]) -> ExportTraceServiceRequest:  # fmt: skip
    """The request built field by field through the protobuf runtime (the exporter's
    encoder before :mod:`gateway.otlp_wire`)."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    _attributes(rs.resource.attributes, resource.attributes, None, None)
    if resource.schema_url:
        rs.schema_url = resource.schema_url
    scopes: dict[Scope, Any] = {}
    for item in spans:
        scope = item[-1]
        ss = scopes.get(scope)
        if ss is None:
            ss = scopes[scope] = rs.scope_spans.add()
            ss.scope.name = scope[0]
            if scope[1]:
                ss.scope.version = scope[1]
            if scope[2]:
                ss.schema_url = scope[2]
            _attributes(ss.scope.attributes, dict(scope[3]), None, None)
        try:
            _ref_span(ss.spans.add(), item, limits)
        except Exception as err:  # a span this encoder cannot write costs only itself
            del ss.spans[-1]
            dropped.append(f"a span could not be encoded ({type(err).__name__}: {err})")
    return request


def _ref_span(s: Any, item: tuple[Any, ...], limits: SpanLimits) -> None:
    (name, trace_id, span_id, parent_id, parent_remote, _flags, state, kind, start, end,
     attributes, events, links, code, description, _scope) = item  # fmt: skip
    max_len, event_len = limits.max_span_attribute_length, limits.max_attribute_length
    s.trace_id = trace_id.to_bytes(16, "big")
    s.span_id = span_id.to_bytes(8, "big")
    if state:
        s.trace_state = state
    if parent_id:
        s.parent_span_id = parent_id.to_bytes(8, "big")
    s.flags = HAS_IS_REMOTE | (IS_REMOTE if parent_remote else 0)
    s.name = name
    s.kind = kind + 1  # OTLP counts from SPAN_KIND_UNSPECIFIED = 0
    s.start_time_unix_nano = start
    s.end_time_unix_nano = end
    s.dropped_attributes_count = _attributes(
        s.attributes, attributes, limits.max_span_attributes, max_len
    )
    kept, s.dropped_events_count = _last(events, limits.max_events)
    for event_name, at, event_attributes in kept:
        e = s.events.add()
        e.name = event_name
        e.time_unix_nano = at
        e.dropped_attributes_count = _attributes(
            e.attributes, event_attributes, limits.max_event_attributes, event_len
        )
    kept, s.dropped_links_count = _last(links, limits.max_links)
    for link_trace, link_span, _, link_state, remote, link_attributes in kept:
        link = s.links.add()
        link.trace_id = link_trace.to_bytes(16, "big")
        link.span_id = link_span.to_bytes(8, "big")
        if link_state:
            link.trace_state = link_state
        link.flags = HAS_IS_REMOTE | (IS_REMOTE if remote else 0)
        link.dropped_attributes_count = _attributes(
            link.attributes, link_attributes, limits.max_link_attributes, event_len
        )
    if code:
        s.status.code = code
        if description:
            s.status.message = description


# ------------------------------------------------------------------ random batches

TRACES = (0x4BF92F3577B34DA6A3CE929D0E0E4736, 1, (1 << 128) - 1)

_SCOPES = [
    ("govgate", "0.1", "", ()),
    ("", "", "https://example.com/schema/1", (("scope.a", 1), ("scope.b", "x"))),
    ("other", "", "", ()),
]
_TIGHT = SpanLimits(max_span_attributes=2, max_events=1, max_links=1, max_attributes=3,
                    max_span_attribute_length=3, max_attribute_length=2,
                    max_event_attributes=1, max_link_attributes=1)  # fmt: skip


class _Spans:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def value(self, depth: int = 0) -> Any:
        rng = self.rng
        makers: list[Callable[[], Any]] = [
            lambda: "",
            lambda: "h\u00e9llo \u2603" * rng.randrange(5),
            lambda: "not utf-8: \udc80",
            lambda: True,
            lambda: False,
            lambda: rng.choice([0, 1, -1, 127, 128, 300, 2**63 - 1, -(2**63), 2**63, 2**70]),
            lambda: rng.choice([0.0, -0.0, 1.5, math.inf, -math.inf, math.nan]),
            lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(4))),
            lambda: None,
            lambda: {"an": "object"},
            lambda: rng.getrandbits(64),
            lambda: [self.value(1) for _ in range(rng.randrange(4))],
            lambda: tuple(self.value(1) for _ in range(rng.randrange(3))),
        ]
        return rng.choice(makers if depth == 0 else makers[:11])()

    def attributes(self) -> dict[str, Any]:
        rng = self.rng
        keys = ["", "a", "govgate.decision.id", "\u043a\u043b\u044e\u0447"]
        return {rng.choice([*keys, f"k{rng.randrange(30)}"]): self.value()
                for _ in range(rng.randrange(8))}  # fmt: skip

    def span(self) -> tuple[Any, ...]:
        rng = self.rng
        bits = rng.getrandbits
        return (
            # a trace's spans share its id and, mostly, its state: the encoder reuses them
            rng.choice(["", "govgate.decide", "na\u00efve"]), rng.choice([*TRACES, bits(128)]),
            bits(64),
            rng.choice([0, bits(64)]), rng.random() < 0.5, 1, rng.choice(["", "a=b,c=d"]),
            rng.randrange(5), rng.choice([0, bits(63)]), rng.choice([0, bits(63)]),
            self.attributes(),
            [(rng.choice(["", "exception"]), rng.choice([0, 123]), self.attributes())
             for _ in range(rng.randrange(3))],
            [(bits(128), bits(64), 1, rng.choice(["", "x=y"]), rng.random() < 0.5,
              self.attributes()) for _ in range(rng.randrange(3))],
            rng.choice([0, 1, 2]), rng.choice([None, "", "boom"]), rng.choice(_SCOPES),
        )  # fmt: skip


def _check(spans: list[tuple[Any, ...]], resource: Resource, limits: SpanLimits) -> None:
    expected_drops: list[str] = []
    expected = _reference(spans, resource, limits, expected_drops)
    drops: list[str] = []
    got = ExportTraceServiceRequest.FromString(request_bytes(spans, resource, limits, drops.append))
    assert got.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )
    assert got == expected
    assert drops == expected_drops


@pytest.mark.parametrize("seed", range(4))
def test_random_batches_are_the_runtimes_requests(seed: int) -> None:
    make = _Spans(seed)
    resources = [Resource({}), Resource({"service.name": "g", "list": [1, 2]}, "https://s")]
    for _ in range(600):
        spans = [make.span() for _ in range(make.rng.randrange(1, 6))]
        _check(spans, make.rng.choice(resources), make.rng.choice([SpanLimits(), _TIGHT]))


def test_attributes_seen_again_are_written_again_the_same() -> None:
    """Encoded attributes are remembered; a cache that is full starts again."""
    make = _Spans(99)
    batch = [make.span() for _ in range(50)]
    for _ in range(3):
        _check(batch, Resource({"service.name": "g"}), SpanLimits())
    otlp_wire._PAIRS.clear()
    for limit in (1, 5):
        old = otlp_wire._MAX_PAIRS
        otlp_wire._MAX_PAIRS = limit
        try:
            _check(batch, Resource({}), SpanLimits())
            assert len(otlp_wire._PAIRS) <= limit
        finally:
            otlp_wire._MAX_PAIRS = old


def test_long_strings_are_not_remembered() -> None:
    """A stack trace in an event is written, not kept: the cache holds short values only."""
    otlp_wire._PAIRS.clear()
    good = _Spans(2).span()
    trace_text = "Traceback (most recent call last):\n" * 40
    with_trace = (*good[:10], {"short": "x", "long": trace_text}, *good[11:])
    _check([with_trace], Resource({}), SpanLimits())
    kept = [memo[3] for memo in otlp_wire._PAIRS]
    assert "x" in kept
    assert trace_text not in kept


def test_a_span_that_cannot_be_written_costs_only_itself() -> None:
    good = _Spans(1).span()
    bad_key = (*good[:10], {"\udc80": 1}, *good[11:])  # a key that is not UTF-8
    too_big = (good[0], 1 << 128, *good[2:])  # a trace id beyond 128 bits
    drops: list[str] = []
    raw = request_bytes([good, bad_key, too_big, good], Resource({}), SpanLimits(), drops.append)
    request = ExportTraceServiceRequest.FromString(raw)
    assert [len(s.spans) for s in request.resource_spans[0].scope_spans] == [2]
    assert len(drops) == 2
    assert all(d.startswith("a span could not be encoded") for d in drops)
    _check([good, bad_key, too_big, good], Resource({}), SpanLimits())


@pytest.mark.parametrize(("field", "value"), [(2, 1 << 64), (2, -1), (3, 1 << 64), (3, -1)])
def test_an_id_outside_64_bits_is_dropped_as_the_runtime_drops_it(field: int, value: int) -> None:
    """A span id or parent span id that is negative or too big costs its span, with the
    runtime's reason (to_bytes's OverflowError)."""
    good = _Spans(1).span()
    bad = list(good)
    bad[3] = bad[3] or 5  # with a parent: both ids are written together
    bad[field] = value
    _check([tuple(bad), good], Resource({}), SpanLimits())
