"""Property tests: ``canonical_json`` (orjson fast path) writes exactly what ``rfc8785`` writes.

What is shown:

1. For every JSON value that hypothesis builds (strings over all of Unicode except
   lone surrogates, including control characters, quotes, backslashes,
   U+2028/U+2029, U+007F and astral-plane characters; object keys that are ASCII or
   not; integers within ±(2**53 - 1); finite floats including -0.0, 1e21 and
   5e-324; booleans; null; nested lists, tuples and objects), ``canonical_json``
   returns the same bytes as ``canonical_json_slow`` (the ``rfc8785`` reference),
   and those bytes parse back to the value.
2. Any value that holds, anywhere, an integer beyond ±(2**53 - 1), a NaN or an
   infinity, a lone surrogate (in a key or a string), or a non-string key makes
   both functions raise ``CanonicalJSONError``, never something else.
3. Known answers, from RFC 8785 (https://www.rfc-editor.org/rfc/rfc8785):
   the section 3.2.2 serialization sample, the section 3.2.3 property-sorting
   example (UTF-16 code-unit order, where U+1F600 sorts before U+FB33 even though
   its code point is larger), the section 3.2.4 statement that the output is UTF-8,
   and the Appendix B table of IEEE 754 numbers and their JSON text. The same
   vectors are reproduced in many independent JCS test suites.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import struct
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.canonical import (
    MAX_SAFE_INTEGER,
    canonical_json,
    canonical_json_slow,
    canonical_str,
)
from ledger.errors import CanonicalJSONError


def props(max_examples: int) -> settings:
    """Same examples on every run (derandomize), no example database, no deadline."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None)


# --------------------------------------------------------------------------- strategies

# Characters that escaping and sorting get wrong most often, mixed into the full range.
_AWKWARD = (
    [chr(c) for c in range(0x20)]  # every control character
    + ['"', "\\", "/", "\x7f", "\x80", "\u2028", "\u2029", "\ufeff", "\uffff", "\ufb33"]
    + ["\u20ac", "\u00f6", "\U0001f600", "\U0001d11e", "\U0010ffff", "\U00010000"]
)
_chars = st.one_of(st.sampled_from(_AWKWARD), st.characters(codec="utf-8"))
_text = st.text(_chars, max_size=12)
_ascii_text = st.text(st.characters(max_codepoint=0x7F), max_size=8)
_keys = st.one_of(_ascii_text, _text)  # non-ASCII keys take the slow path

_safe_ints = st.one_of(
    st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),
    st.sampled_from(
        [0, 1, -1, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, MAX_SAFE_INTEGER - 1, 2**31, -(2**32)]
    ),
)
_unsafe_ints = st.one_of(
    st.integers(min_value=MAX_SAFE_INTEGER + 1),
    st.integers(max_value=-MAX_SAFE_INTEGER - 1),
    st.sampled_from([2**53, -(2**53), 2**63, 2**64, -(2**64), 10**30, -(2**1000)]),
)
_finite_floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1e21, 1e-7, 1e-6, 5e-324, 1.7976931348623157e308]),
)
_non_finite = st.sampled_from([math.nan, -math.nan, math.inf, -math.inf])
_lone_surrogate = st.integers(0xD800, 0xDFFF).map(chr)


def _json(
    scalars: st.SearchStrategy[Any], keys: st.SearchStrategy[str] = _keys
) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(keys, children, max_size=5),
        ),
        max_leaves=25,
    )


_scalars_without_floats = st.one_of(st.none(), st.booleans(), _safe_ints, _text)
_plain_json = _json(_scalars_without_floats)
_any_json = _json(st.one_of(_scalars_without_floats, _finite_floats))
# ASCII keys at every level, no floats: values that canonical_json hands to orjson.
_fast_json = _json(_scalars_without_floats, _ascii_text)


def _containing(poison: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """JSON values that hold ``poison`` somewhere: at the top, in a list or under a key."""
    return st.recursive(
        poison,
        lambda inner: st.one_of(
            st.tuples(st.lists(_any_json, max_size=3), inner, st.lists(_any_json, max_size=3)).map(
                lambda t: [*t[0], t[1], *t[2]]
            ),
            st.tuples(st.dictionaries(_keys, _any_json, max_size=3), _keys, inner).map(
                lambda t: {**t[0], t[1]: t[2]}
            ),
        ),
        max_leaves=4,
    )


def _with_surrogate(text: str, surrogate: str, at: int) -> str:
    at %= len(text) + 1
    return text[:at] + surrogate + text[at:]


_surrogate_strings = st.builds(_with_surrogate, _text, _lone_surrogate, st.integers(0, 12))
_poison = st.one_of(
    _unsafe_ints,
    _non_finite,
    _surrogate_strings,
    st.builds(lambda k, v: {k: v}, _surrogate_strings, _any_json),  # lone surrogate in a key
    st.builds(lambda k, v: {k: v}, st.one_of(st.integers(), st.none(), st.booleans()), _any_json),
)


# --------------------------------------------------------------------------- properties


def _both(value: Any) -> tuple[bytes, bytes]:
    return canonical_json(value), canonical_json_slow(value)


def _json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON sees it: tuples are arrays, and numbers are doubles
    (JCS writes 1.0 as ``1`` and 5.105590078703215e16 as ``51055900787032150``)."""
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if type(a) is float or type(b) is float:  # a JSON number is an IEEE 754 double
        return type(a) in (int, float) and type(b) in (int, float) and float(a) == float(b)
    return bool(a == b)


@props(600)
@given(_plain_json)
def test_fast_path_matches_rfc8785_without_floats(value: Any) -> None:
    fast, slow = _both(value)
    assert fast == slow
    assert _json_equal(orjson.loads(fast), value)


@props(300)
@given(_any_json)
def test_fast_path_matches_rfc8785_with_floats(value: Any) -> None:
    fast, slow = _both(value)
    assert fast == slow
    assert _json_equal(orjson.loads(fast), value)


@props(500)
@given(_fast_json)
def test_values_for_the_orjson_path_match_rfc8785(value: Any) -> None:
    """ASCII keys at every level and no floats, like most record payloads: the values
    ``canonical_json`` writes with orjson (unless orjson itself refuses, e.g. too deep)."""
    fast, slow = _both(value)
    assert fast == slow
    assert _json_equal(orjson.loads(fast), value)


@props(200)
@given(st.dictionaries(_text, _safe_ints, min_size=2, max_size=10))
def test_non_ascii_keys_sort_by_utf16_code_units(value: dict[str, int]) -> None:
    fast, slow = _both(value)
    assert fast == slow
    keys = list(orjson.loads(fast))
    assert keys == sorted(value, key=lambda k: k.encode("utf-16-be"))


@props(300)
@given(_safe_ints)
def test_safe_integers_are_written_as_integers(n: int) -> None:
    assert _both(n) == (str(n).encode(),) * 2


@props(300)
@given(_unsafe_ints)
def test_integers_beyond_the_safe_range_raise_from_both(n: int) -> None:
    for f in (canonical_json, canonical_json_slow):
        with pytest.raises(CanonicalJSONError):
            f(n)


@props(400)
@given(_containing(_poison))
def test_values_with_no_rfc8785_form_raise_from_both(value: Any) -> None:
    for f in (canonical_json, canonical_json_slow):
        with pytest.raises(CanonicalJSONError):
            f(value)


class _Text(str):
    pass


class _Number(int):
    pass


class _Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class _Point:
    x: int


def _outcome(f: Any, value: Any) -> bytes | str:
    try:
        return bytes(f(value))
    except CanonicalJSONError:
        return "no RFC 8785 form"


_ODD = [
    _Colour.RED,
    uuid.UUID(int=7),
    _Point(1),
    dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
    dt.date(2026, 1, 2),
    _Text("subclass"),
    _Number(3),
    orjson.Fragment(b"1"),
    {1, 2},
    b"bytes",
]


@pytest.mark.parametrize(
    ("odd", "where"),
    [
        (odd, where)
        for odd in _ODD
        for where in ("top", "list", "value", "key")
        if where != "key" or isinstance(odd, str)  # only a str subclass can be a key
    ],
    ids=repr,
)
def test_types_json_does_not_have_give_what_the_reference_gives(odd: Any, where: str) -> None:
    """orjson writes enums, UUIDs, dataclasses, dates and fragments in forms of its own;
    the fast path must leave all of them, and subclasses of str and int (which the
    reference writes as their values), to the reference."""
    if where == "top":
        value = odd
    elif where == "list":
        value = ["a", 1, [odd]]
    elif where == "value":
        value = {"a": {"b": odd}, "c": "ascii"}
    else:
        value = {odd: 1, "z": "é"}
    fast, slow = _outcome(canonical_json, value), _outcome(canonical_json_slow, value)
    assert fast == slow
    if not isinstance(odd, str | int):
        assert fast == "no RFC 8785 form"


def test_nesting_deeper_than_orjson_allows_still_matches() -> None:
    """orjson refuses more than 255 levels; the reference then decides, and the bytes agree."""
    value: Any = "bottom"
    for i in range(300):
        value = [value] if i % 2 else {"k": value}
    fast, slow = _both(value)
    assert fast == slow


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, b"null"),
        (True, b"true"),
        (False, b"false"),
        (-0.0, b"0"),
        (1.0, b"1"),
        (1e21, b"1e+21"),
        (5e-324, b"5e-324"),
        (
            "\u2028\x7f\x00\x08\x09\x0a\x0c\x0d\x1f",
            b'"\xe2\x80\xa8\x7f\\u0000\\b\\t\\n\\f\\r\\u001f"',
        ),
        ({}, b"{}"),
        ([], b"[]"),
        ((), b"[]"),
    ],
)
def test_scalars(value: Any, expected: bytes) -> None:
    assert _both(value) == (expected, expected)


# --------------------------------------------------------------------------- RFC 8785


def test_rfc8785_section_3_2_2_sample() -> None:
    """RFC 8785 section 3.2.2: the parsed sample and its canonical form (section 3.2.3).

    The input, as JSON text in the RFC::

        {"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
         "string": "\\u20ac$\\u000F\\u000aA'\\u0042\\u0022\\u005c\\\\\\"\\/",
         "literals": [null, true, false]}
    """
    parsed = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "literals": [None, True, False],
    }
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    ).encode()  # section 3.2.4: the canonical form is UTF-8
    assert _both(parsed) == (expected, expected)
    # The same sample parsed from its JSON text.
    text = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    assert _both(orjson.loads(text)) == (expected, expected)


def test_rfc8785_section_3_2_3_sorting_example() -> None:
    """RFC 8785 section 3.2.3: properties sorted by UTF-16 code units, not code points."""
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    ).encode()
    assert _both(value) == (expected, expected)


# RFC 8785 Appendix B: IEEE 754 double (big-endian hex) -> JSON text.
_APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


def _double(bits: str) -> float:
    return float(struct.unpack(">d", bytes.fromhex(bits))[0])


@pytest.mark.parametrize(("bits", "text"), _APPENDIX_B)
def test_rfc8785_appendix_b_numbers(bits: str, text: str) -> None:
    value = _double(bits)
    expected = text.encode()
    assert _both(value) == (expected, expected)
    assert _both({"n": [value]}) == (b'{"n":[' + expected + b"]}",) * 2


@pytest.mark.parametrize("bits", ["7fffffffffffffff", "7ff0000000000000", "fff0000000000000"])
def test_rfc8785_appendix_b_nan_and_infinity_raise(bits: str) -> None:
    """Appendix B lists NaN and Infinity as having no JSON form (section 3.2.2.3)."""
    for f in (canonical_json, canonical_json_slow):
        with pytest.raises(CanonicalJSONError):
            f(_double(bits))


@given(st.text())
def test_strings_take_the_short_path_to_the_same_bytes(value: str) -> None:
    """Record fields (actor, target, ...) skip the walk; any string, control characters
    and U+2028 included, gives the reference's bytes."""
    assert canonical_str(value) == canonical_json_slow(value) == canonical_json(value)


@pytest.mark.parametrize("value", ["\ud800", "a\udfffb"])
def test_a_lone_surrogate_has_no_form_on_the_short_path_either(value: str) -> None:
    with pytest.raises(CanonicalJSONError):
        canonical_str(value)
