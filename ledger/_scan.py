"""Chunk scanner for fast verification (chain, Merkle roots, checkpoints; no signatures).

:func:`scan_chunk` checks a run of export lines that starts at a record index
aligned to ``2**level`` records (level :data:`CHUNK_LEVEL` by default), in
another process, and returns what the sequential part of the verifier needs
to join chunks: the chain's two ends,
the chunk's compact Merkle range (after every record and at every checkpoint
line), where the signing key id changes, and the ``key`` records (which the
main process opens strictly, since rotations are rare and matter).

Per record it reads only what the chain needs, from the *end* of the payload.
RFC 8785 fixes the payload's key order, so ``index``, ``key_id``, ``kind``,
``prev``, ``target``, ``time`` and ``trace_id`` are its last fields, after the
body. A match anchored at the payload's end cannot start inside a JSON string
(its quotes would be escaped) nor inside the body (the body is followed by
``decision_id``), so it finds the top-level fields. The body itself is not
parsed: any change to it changes the leaf hash, which the next record's
``prev`` and every later checkpoint root bind.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field

from ledger.merkle import Frontier, leaf_hash

__all__ = ["CHUNK_LEVEL", "ChunkResult", "scan_chunk", "scan_file_range"]

CHUNK_LEVEL = 13  # chunks of 8192 records start at multiples of 8192: their ranges are subtrees

_PAYLOAD_PREFIX = b'{"payload":"'
_ENVELOPE_TAIL = re.compile(
    rb'","payloadType":"application/vnd\.govgate\.record\+json",'
    rb'"signatures":\[\{"keyid":"([0-9a-f]{8})","sig":"[A-Za-z0-9+/]{86}=="\}\]\}\Z'
)
_PAYLOAD_TAIL = re.compile(
    rb'"index":(0|[1-9][0-9]{0,18}),"key_id":"([0-9a-f]{8})","kind":"([a-z][a-z0-9_.-]{0,63})",'
    rb'"prev":"([0-9a-f]{64})","target":"(?:[^"\\]|\\.)*",'
    rb'"time":"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z)",'
    rb'"trace_id":"(?:[0-9a-f]{32})?"\}\Z'
)
_TAIL_CHARS = 400  # base64 characters decoded first (300 bytes); the whole payload if needed


@dataclass
class ChunkResult:
    start: int  # index of the chunk's first record
    count: int = 0  # records that passed
    first_line: int = 0  # line of the first record
    first_prev: bytes = b""
    first_time: str = ""
    last_leaf: bytes = b""
    last_time: str = ""
    hashes: list[bytes] = field(default_factory=list)  # compact range [start, start + count)
    key_runs: list[tuple[int, str]] = field(default_factory=list)  # (index, key id) changes
    key_records: list[tuple[int, int, bytes]] = field(default_factory=list)  # index, line, raw
    checkpoints: list[tuple[int, int, bytes, list[bytes]]] = field(default_factory=list)
    error: tuple[int, int, str] | None = None  # index, line, reason


def _tail_fields(b64: bytes) -> re.Match[bytes] | None:
    n = len(b64)
    if n % 4:
        return None
    cut = n - min(n, _TAIL_CHARS)
    try:
        tail = binascii.a2b_base64(b64[cut:], strict_mode=True)
        # The last unescaped '"index":' is the top-level one (see the module docstring).
        m = _PAYLOAD_TAIL.match(tail, max(tail.rfind(b'"index":'), 0))
        if m is None and cut:
            whole = binascii.a2b_base64(b64, strict_mode=True)
            m = _PAYLOAD_TAIL.match(whole, max(whole.rfind(b'"index":'), 0))
    except binascii.Error:
        return None
    return m


def scan_chunk(start: int, first_line: int, blob: bytes, level: int = CHUNK_LEVEL) -> ChunkResult:
    """Check ``blob``'s lines (records from index ``start``, and checkpoint lines) on their own.

    ``start`` is a multiple of ``2**level`` and ``blob`` holds at most that many
    records, one line each, joined by newlines (one bytes object pickles fast).
    """
    lines = blob.split(b"\n")
    if start % (1 << level):
        raise ValueError(f"chunks must start at a multiple of 2**{level}")
    res = ChunkResult(start)
    frontier = Frontier()
    key = ""
    for offset, raw in enumerate(lines):
        line = first_line + offset
        if raw.startswith(b'{"checkpoint"'):
            res.checkpoints.append((res.count, line, raw, list(frontier.hashes)))
            continue
        index = start + res.count
        if frontier.size == 1 << level:
            raise ValueError(f"chunk holds more than 2**{level} records")
        q = raw.find(b'"', len(_PAYLOAD_PREFIX))
        env = _ENVELOPE_TAIL.match(raw, q) if raw.startswith(_PAYLOAD_PREFIX) and q > 0 else None
        m = _tail_fields(raw[len(_PAYLOAD_PREFIX) : q]) if env else None
        if env is None or m is None:
            res.error = (index, line, "malformed record envelope or payload")
            break
        if int(m[1]) != index:
            res.error = (index, line, f"expected index {index}, found {int(m[1])}")
            break
        if m[2] != env[1]:
            res.error = (index, line, "envelope keyid differs from payload key_id")
            break
        prev, time = bytes.fromhex(m[4].decode()), m[5].decode()
        if res.count == 0:
            res.first_prev, res.first_time, res.first_line = prev, time, line
        else:
            if prev != res.last_leaf:
                res.error = (
                    index - 1,
                    line,
                    f"record {index} does not chain to record {index - 1}",
                )
                break
            if time < res.last_time:
                res.error = (index, line, f"time {time} is before the previous record's")
                break
        key_id = m[2].decode()
        if key_id != key:
            res.key_runs.append((index, key_id))
            key = key_id
        if m[3] == b"key":
            res.key_records.append((index, line, raw))
        leaf = leaf_hash(raw)
        frontier.append(leaf)
        res.last_leaf, res.last_time = leaf, time
        res.count += 1
    res.hashes = list(frontier.hashes)
    return res


def scan_file_range(
    path: str, offset: int, length: int, lines: int, start: int, first_line: int, level: int
) -> ChunkResult:
    """:func:`scan_chunk` over ``length`` bytes of the file at ``path`` from ``offset``.

    The range must hold exactly ``lines`` newline-terminated lines, as the
    caller saw when it cut the file; a file that changes meanwhile is refused.
    """
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length or data.count(b"\n") != lines or not data.endswith(b"\n"):
        res = ChunkResult(start)
        res.error = (start, first_line, "export changed while it was being verified")
        return res
    return scan_chunk(start, first_line, data[:-1], level)
