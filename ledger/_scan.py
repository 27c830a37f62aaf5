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

Two implementations of that check: :func:`_scan_each` goes record by record
and names the first fault; :class:`_Bulk` makes the same checks over a whole
chunk at once (numpy over the envelope tails, one regular-expression pass over
all decoded payload tails, joined comparisons for indexes, chain and times) and
only ever returns the result :func:`_scan_each` would return, or declines.
A chunk it declines, such as any chunk with a fault, is scanned record by
record. :func:`scan_file_range` feeds :class:`_Bulk` a batch of lines at a time,
so each line is hashed and decoded while it is still in the CPU cache.
"""

from __future__ import annotations

import binascii
import re
from binascii import a2b_base64 as a2b
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ledger.merkle import _NODE_PREFIX, Frontier, leaf_hash

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
_READ_BUFFER = 1 << 20
_BATCH = 1 << 20  # bytes of lines scanned together in scan_file_range
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
    return _scan_lines(start, first_line, blob.split(b"\n"), level)


def _scan_lines(start: int, first_line: int, lines: list[bytes], level: int) -> ChunkResult:
    """Scan ``lines``: in bulk when that can vouch for the chunk, else one by one."""
    if start % (1 << level):
        raise ValueError(f"chunks must start at a multiple of 2**{level}")
    fast = _scan_bulk(start, first_line, lines, level)
    return fast if fast is not None else _scan_each(start, first_line, lines, level)


def _scan_each(start: int, first_line: int, lines: list[bytes], level: int) -> ChunkResult:
    """The reference scan: record by record, stopping at the first fault."""
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


# Bulk scan: the same checks as _scan_each over a whole chunk at once. It only
# vouches for a chunk in which every line passes; on any doubt it returns None and
# the chunk is scanned one record at a time, which finds and names the fault.
_CHECKPOINT_PREFIX = b'{"checkpoint"'
_TAIL_HEAD = b'","payloadType":"application/vnd.govgate.record+json","signatures":[{"keyid":"'
_TAIL_MID = b'","sig":"'
_TAIL_END = b'=="}]}'
_KEYID_AT = len(_TAIL_HEAD)
_SIG_AT = _KEYID_AT + 8 + len(_TAIL_MID)
_SIG_CHARS = 86
_TAIL_LEN = _SIG_AT + _SIG_CHARS + len(_TAIL_END)  # what _ENVELOPE_TAIL matches: fixed length
_MIN_LINE = len(_PAYLOAD_PREFIX) + _TAIL_LEN
_LINE_QUOTES = _PAYLOAD_PREFIX.count(b'"') + (_TAIL_HEAD + _TAIL_MID + _TAIL_END).count(b'"')
_HEX = b"0123456789abcdef"
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_TIME_SHAPE = np.frombuffer(b"0000-00-00T00:00:00.000000Z", np.uint8)
_TIME_DIGITS = np.equal(_TIME_SHAPE, ord("0"))
_KIND = re.compile(rb"[a-z][a-z0-9_.-]{0,63}")
# _PAYLOAD_TAIL with wider field classes, found in decoded tails (each from its last
# '"index":') joined by newlines; _scan_bulk narrows every field to _PAYLOAD_TAIL's.
_BULK_TAIL = re.compile(
    rb'"index":([0-9]{1,19}),"key_id":"([^"]{8})","kind":"([^"]{1,64})",'
    rb'"prev":"([^"]{64})","target":"[^"\\]*(?:\\.[^"\\]*)*",'
    rb'"time":"([^"]{27})","trace_id":"([^"]*)"\}\n'
)


def _table(chars: bytes) -> npt.NDArray[np.bool_]:
    t = np.zeros(256, np.bool_)
    t[np.frombuffer(chars, np.uint8)] = True
    return t


_IS_HEX = _table(_HEX)
_IS_B64 = _table(_B64)


def _merkle_levels(leaves: list[bytes]) -> list[list[bytes]]:
    """Every complete subtree hash over ``leaves``: level ``l`` holds nodes ``(l, 0..)``."""
    levels = [leaves]
    copy = _NODE_PREFIX.copy
    while len(levels[-1]) > 1:
        below = iter(levels[-1])
        row = []
        for left, right in zip(below, below, strict=False):  # an odd last node waits
            h = copy()
            h.update(left)
            h.update(right)
            row.append(h.digest())
        levels.append(row)
    return levels


def _compact(levels: list[list[bytes]], size: int) -> list[bytes]:
    """The frontier hashes of the first ``size`` leaves (``Frontier.hashes`` after them)."""
    return [
        levels[lv][(size >> lv) - 1]
        for lv in range(size.bit_length() - 1, -1, -1)
        if size >> lv & 1
    ]


def _scan_bulk(start: int, first_line: int, lines: list[bytes], level: int) -> ChunkResult | None:
    """:func:`_scan_each`'s result when every line of the chunk passes, else None."""
    bulk = _Bulk(level)
    return bulk.result(start, first_line) if bulk.add(lines) else None


class _Bulk:
    """The bulk scan of one chunk, fed a batch of lines at a time (a batch stays in cache).

    Why it is :func:`_scan_each`'s result: each record line must be
    ``{"payload":"``, a quote-free payload, and a 187-byte tail matching
    ``_ENVELOPE_TAIL`` (checked column by column); then ``_scan_each`` finds the
    same quote and tail. Each payload's last ``_TAIL_CHARS`` characters (all of it
    if shorter) are decoded strictly, as in :func:`_tail_fields`. In the decoded
    tails, each cut at its last ``"index":`` and joined by newlines (none may hold
    one), ``_BULK_TAIL`` must match once per tail, at its end: N matches in N
    newline-ended pieces. A match of the tail fields that runs to the end starts
    at the last ``"index":`` (none can start inside it: its fields hold no quote,
    and the target's quotes are escaped), so it is the one ``_tail_fields`` finds;
    every field is then narrowed to ``_PAYLOAD_TAIL``'s class, and indexes, key
    ids, the chain and times are compared as ``_scan_each`` does, but all at once.
    """

    def __init__(self, level: int) -> None:
        self.level = level
        self.lines = 0  # lines added so far
        self.at: list[int] = []  # which of them are checkpoint lines
        self.checkpoint_lines: list[bytes] = []
        self.key_records: dict[int, bytes] = {}  # record position -> line, for kind "key"
        self.key_ids: list[npt.NDArray[np.uint8]] = []  # from the envelopes
        self.found: list[tuple[bytes, ...]] = []  # _BULK_TAIL's fields, a tuple a record
        self.leaves: list[bytes] = []

    def add(self, lines: list[bytes]) -> bool:
        """Take the next lines of the chunk; False as soon as the bulk scan cannot vouch."""
        heads = [raw[: len(_PAYLOAD_PREFIX)] for raw in lines]
        if heads.count(_PAYLOAD_PREFIX) == len(lines):
            records = lines
        else:
            records = []
            for k, raw in enumerate(lines):
                if raw.startswith(_CHECKPOINT_PREFIX):
                    self.at.append(self.lines + k)
                    self.checkpoint_lines.append(raw)
                else:
                    records.append(raw)
            if heads.count(_PAYLOAD_PREFIX) != len(records):
                return False
        self.lines += len(lines)
        n = len(records)
        if not n:
            return True
        if len(self.leaves) + n > 1 << self.level:
            return False
        # The envelope: prefix, quote-free payload of a length base64 allows, fixed tail.
        sizes = np.fromiter(map(len, records), np.int64, n)
        if sizes.min() < _MIN_LINE or ((sizes - _MIN_LINE) % 4).any():
            return False
        low = len(_PAYLOAD_PREFIX)
        if any(raw.find(b'"', low, -_TAIL_LEN) >= 0 for raw in records):
            return False
        tails = np.frombuffer(b"".join([raw[-_TAIL_LEN:] for raw in records]), np.uint8)
        tails = tails.reshape(n, _TAIL_LEN)
        key_ids = tails[:, _KEYID_AT : _KEYID_AT + 8]
        if not (
            (tails[:, :_KEYID_AT] == np.frombuffer(_TAIL_HEAD, np.uint8)).all()
            and _IS_HEX[key_ids].all()
            and (tails[:, _KEYID_AT + 8 : _SIG_AT] == np.frombuffer(_TAIL_MID, np.uint8)).all()
            and _IS_B64[tails[:, _SIG_AT : _SIG_AT + _SIG_CHARS]].all()
            and (tails[:, _SIG_AT + _SIG_CHARS :] == np.frombuffer(_TAIL_END, np.uint8)).all()
        ):
            return False
        # The payload tails, decoded as _tail_fields decodes them.
        window = _TAIL_CHARS + _TAIL_LEN
        try:
            if sizes.min() >= len(_PAYLOAD_PREFIX) + window:
                decoded = [a2b(raw[-window:-_TAIL_LEN], strict_mode=True) for raw in records]
            else:
                decoded = [
                    a2b(raw[max(low, len(raw) - window) : -_TAIL_LEN], strict_mode=True)
                    for raw in records
                ]
        except binascii.Error:
            return False
        joined = b"\n".join([tail[tail.rfind(b'"index":') :] for tail in decoded]) + b"\n"
        if joined.count(b"\n") != n:
            return False
        found = _BULK_TAIL.findall(joined)
        if len(found) != n:
            return False
        for k, fields in enumerate(found):
            if fields[2] == b"key":
                self.key_records[len(self.leaves) + k] = records[k]
        self.key_ids.append(key_ids)
        self.found += found
        self.leaves += map(leaf_hash, records)
        return True

    def result(self, start: int, first_line: int) -> ChunkResult | None:
        """The chunk's result if all its lines, now added, pass together; else None."""
        n = len(self.leaves)
        if not n:
            return None
        indexes, kids, kinds, prevs, times, traces = zip(*self.found, strict=True)
        if b",".join(indexes) != ",".join(map(str, range(start, start + n))).encode():
            return None
        kid_bytes = np.frombuffer(b"".join(kids), np.uint8).reshape(n, 8)
        if not (kid_bytes == np.concatenate(self.key_ids)).all():
            return None
        if not all(_KIND.fullmatch(kind) for kind in set(kinds)):
            return None
        prev_hex = b"".join(prevs)
        if prev_hex.translate(None, _HEX):
            return None
        trace_hex = b"".join(traces)
        if trace_hex.translate(None, _HEX) or not set(map(len, traces)) <= {0, 32}:
            return None
        stamps = np.frombuffer(b"".join(times), np.uint8).reshape(n, len(_TIME_SHAPE))
        if not (
            ((stamps - ord("0")) < 10)[:, _TIME_DIGITS].all()
            and (stamps[:, ~_TIME_DIGITS] == _TIME_SHAPE[~_TIME_DIGITS]).all()
        ):
            return None
        if list(times) != sorted(times):  # never backwards
            return None
        leaves = self.leaves
        prev = binascii.unhexlify(prev_hex)
        if prev[32:] != b"".join(leaves[:-1]):
            return None
        # All passed: the result _scan_each builds.
        skip = set(self.at)
        line_of = [k for k in range(self.lines) if k not in skip] if skip else range(n)
        res = ChunkResult(
            start,
            count=n,
            first_line=first_line + line_of[0],
            first_prev=prev[:32],
            first_time=times[0].decode(),
            last_leaf=leaves[-1],
            last_time=times[-1].decode(),
        )
        if kids.count(kids[0]) == n:
            res.key_runs = [(start, kids[0].decode())]
        else:
            res.key_runs = [
                (start + k, kid.decode())
                for k, kid in enumerate(kids)
                if k == 0 or kid != kids[k - 1]
            ]
        res.key_records = [
            (start + k, first_line + line_of[k], raw) for k, raw in self.key_records.items()
        ]
        levels = _merkle_levels(leaves)
        res.checkpoints = [
            (k - before, first_line + k, raw, _compact(levels, k - before))
            for before, (k, raw) in enumerate(zip(self.at, self.checkpoint_lines, strict=True))
        ]
        res.hashes = _compact(levels, n)
        return res


def scan_file_range(
    path: str, offset: int, length: int, lines: int, start: int, first_line: int, level: int
) -> ChunkResult:
    """:func:`scan_chunk` over ``length`` bytes of the file at ``path`` from ``offset``.

    The range must hold exactly ``lines`` newline-terminated lines, as the
    caller saw when it cut the file; a file that changes meanwhile is refused.
    """
    changed = ChunkResult(start)
    changed.error = (start, first_line, "export changed while it was being verified")
    with open(path, "rb", buffering=_READ_BUFFER) as f:
        f.seek(offset)
        if start % (1 << level) == 0:  # else _scan_lines raises, once the range is read
            # A batch of lines at a time, each scanned while it is in cache; readlines()
            # stops once it holds more than its hint.
            bulk: _Bulk | None = _Bulk(level)
            count = size = 0
            last = b""
            while size < length and count <= lines:
                left = length - size
                hint = min(left - 1, max(_BATCH - 1, 1))  # 0 would mean: to the end
                got = f.readlines(hint) if left > 1 else [f.read(left)]
                if not got or not got[0]:
                    break
                count += len(got)
                size += sum(map(len, got))
                last = got[-1]
                if bulk is not None and not bulk.add([raw[:-1] for raw in got]):
                    bulk = None
            if count != lines or size != length or not last.endswith(b"\n"):
                return changed
            res = bulk.result(start, first_line) if bulk is not None else None
            if res is not None:
                return res
            f.seek(offset)  # the bulk scan cannot vouch: read again, one record at a time
        data = f.read(length)
    split = data.split(b"\n")  # one piece more than lines: after the last newline
    if len(data) != length or len(split) != lines + 1 or not data.endswith(b"\n"):
        return changed
    split.pop()
    if start % (1 << level):
        return _scan_lines(start, first_line, split, level)
    return _scan_each(start, first_line, split, level)
