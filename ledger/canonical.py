"""RFC 8785 (JCS) canonical JSON bytes for record payloads.

The bytes are exactly what the ``rfc8785`` package writes. Most payloads hold
only strings, integers, booleans, nulls, lists and objects with ASCII keys; for
those, orjson with sorted keys writes the same bytes about fifty times faster,
and the property tests in ``tests/ledger/test_canonical.py`` hold it to that.
Anything else (floats, non-ASCII keys, integers beyond ±(2**53 - 1), types
other than the plain JSON ones) goes to ``rfc8785``, which is exact or refuses.

Why ASCII keys: JCS orders keys by UTF-16 code units, orjson by code points;
the two orders agree on ASCII. Why no floats: JCS writes ``1.0`` as ``1``.

The checks cost less than a walk of every key: orjson itself refuses keys
that are not str and unsafe integers (``_ORJSON``); ASCII output proves ASCII
keys; what is left is a walk of the values for floats and types JSON does not
have (``_plain``), which looks at the keys only when the output is not ASCII.

Example::

    canonical_json({"b": 1, "a": [True, None]}) == b'{"a":[true,null],"b":1}'
"""

from __future__ import annotations

from typing import Any

import orjson
import rfc8785

from ledger.errors import CanonicalJSONError

__all__ = ["MAX_SAFE_INTEGER", "canonical_json", "canonical_json_slow", "canonical_str"]

MAX_SAFE_INTEGER = 2**53 - 1


def canonical_json_slow(value: Any) -> bytes:
    """RFC 8785 bytes from the reference implementation."""
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as e:
        raise CanonicalJSONError(f"value has no RFC 8785 form: {e}") from e


# orjson refuses here what it would otherwise write in a form of its own: integers
# beyond the safe range, and (through the passthrough options, with no ``default``)
# dataclasses, dates and times, and subclasses of str, int, dict and list. It
# refuses keys that are not exactly str by itself.
_ORJSON = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_STRICT_INTEGER
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def _plain(value: Any, *, keys: bool) -> bool:
    """True when ``value``, which orjson wrote under ``_ORJSON`` (so every key is a str
    and every integer is safe), is made only of types whose orjson form is the JCS form:
    no floats (orjson writes ``1.0`` where JCS writes ``1``), no types JSON does not have
    (enums, UUIDs), and, with ``keys``, only ASCII keys (output that is ASCII proves
    that without the look).

    Iterative and loop-based: it runs on every record body, on the hot path.
    """
    stack = [value]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        v = pop()
        t = type(v)
        if t is dict:
            if keys and not all(k.isascii() for k in v):
                return False
            for item in v.values():
                if type(item) is not str:  # strings need no further look
                    push(item)
        elif t is list or t is tuple:
            extend(v)
        elif not (t is str or t is int or t is bool or v is None):
            return False
    return True


def canonical_json(value: Any) -> bytes:
    """RFC 8785 bytes of ``value``; raise :class:`CanonicalJSONError` if it has none."""
    try:
        out = orjson.dumps(value, option=_ORJSON)
    except orjson.JSONEncodeError:
        # e.g. a lone surrogate, a large integer: let the reference decide and explain
        return canonical_json_slow(value)
    if _plain(value, keys=not out.isascii()):
        return out
    return canonical_json_slow(value)


def canonical_str(value: str) -> bytes:
    """:func:`canonical_json` of a string, without the walk: a string's orjson form is
    its RFC 8785 form (a lone surrogate, which has none, goes to the reference)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return canonical_json_slow(value)
