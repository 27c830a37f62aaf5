"""Range scanner for fast verification (chain, Merkle roots, checkpoints; no signatures).

:func:`scan_byte_range` checks the export lines that start within a byte range
of the file, in another process, and returns what the sequential part of the
verifier needs to join ranges: the chain's two ends, the range's compact
Merkle range (after its last record and at every checkpoint line), where the
signing key id changes, and the ``key`` records (which the main process opens
strictly, since rotations are rare and matter). Ranges are cut by bytes, so
the main process never reads the export itself. Every record names its index,
so a range is placed in the tree by its first record's; the joiner checks that
it is the index that follows the range before.

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
range at once (numpy over the envelope tails, one regular-expression pass over
all decoded payload tails, joined comparisons for indexes, chain and times) and
only ever returns the result :func:`_scan_each` would return, or declines.
A range it declines, such as any range with a fault, is scanned record by
record. :func:`scan_byte_range` feeds :class:`_Bulk` a block of lines at a
time, so each line is hashed and decoded while it is still in the CPU cache.
"""

from __future__ import annotations

import binascii
import re
from binascii import a2b_base64 as a2b
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

import numpy as np
import numpy.typing as npt

from ledger.merkle import _NODE_PREFIX, CompactRange, compact_ids, leaf_hash

__all__ = ["ChunkResult", "scan_byte_range", "scan_chunk"]

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
_BATCH = 1 << 20  # bytes of lines that scan_byte_range scans together (they stay in cache)
_READ_BUFFER = 1 << 20
_TAIL_CHARS = 400  # base64 characters decoded first (300 bytes); the whole payload if needed


@dataclass
class ChunkResult:
    """What a scan of consecutive export lines found. Lines count from the scan's
    ``first_line``; indexes are the ones the records name, from the first one's on."""

    start: int = -1  # index the first record names (-1: none read); the joiner checks it
    count: int = 0  # records that passed
    lines: int = 0  # lines scanned, records and checkpoints
    first_line: int = 0  # line of the first record
    first_prev: bytes = b""
    first_time: str = ""
    last_leaf: bytes = b""
    last_time: str = ""
    hashes: list[bytes] = field(default_factory=list)  # compact range [start, start + count)
    key_runs: list[tuple[int, str]] = field(default_factory=list)  # (index, key id) changes
    key_records: list[tuple[int, int, bytes]] = field(default_factory=list)  # index, line, raw
    # records before it in the scan, line, raw, compact range [start, start + records before)
    checkpoints: list[tuple[int, int, bytes, list[bytes]]] = field(default_factory=list)
    # index (-1: the first record, whose index was not read; None: not a record's fault),
    # line, reason
    error: tuple[int | None, int, str] | None = None


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


def scan_chunk(first_line: int, blob: bytes) -> ChunkResult:
    """Check ``blob``'s lines (records and checkpoint lines, joined by newlines) on their own."""
    return _scan_lines(first_line, blob.split(b"\n"))


def _scan_lines(first_line: int, lines: list[bytes]) -> ChunkResult:
    """Scan ``lines``: in bulk when that can vouch for them, else one by one."""
    fast = _scan_bulk(first_line, lines)
    return fast if fast is not None else _scan_each(first_line, lines)


def _scan_each(first_line: int, lines: list[bytes]) -> ChunkResult:
    """The reference scan: record by record, stopping at the first fault."""
    res = ChunkResult(lines=len(lines))
    tree: CompactRange | None = None  # from the first record's index on
    key = ""
    for offset, raw in enumerate(lines):
        line = first_line + offset
        if raw.startswith(b'{"checkpoint"'):
            res.checkpoints.append((res.count, line, raw, tree.hashes if tree else []))
            continue
        index = tree.end if tree else -1
        q = raw.find(b'"', len(_PAYLOAD_PREFIX))
        env = _ENVELOPE_TAIL.match(raw, q) if raw.startswith(_PAYLOAD_PREFIX) and q > 0 else None
        m = _tail_fields(raw[len(_PAYLOAD_PREFIX) : q]) if env else None
        if env is None or m is None:
            res.error = (index, line, "malformed record envelope or payload")
            break
        if tree is None:
            index = res.start = int(m[1])
            res.first_line = line
            tree = CompactRange(index)
        elif int(m[1]) != index:
            res.error = (index, line, f"expected index {index}, found {int(m[1])}")
            break
        if m[2] != env[1]:
            res.error = (index, line, "envelope keyid differs from payload key_id")
            break
        prev, time = bytes.fromhex(m[4].decode()), m[5].decode()
        if res.count == 0:
            res.first_prev, res.first_time = prev, time
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
        tree.append(leaf)
        res.last_leaf, res.last_time = leaf, time
        res.count += 1
    res.hashes = tree.hashes if tree else []
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


def _merkle_levels(leaves: list[bytes], begin: int) -> list[tuple[int, list[bytes]]]:
    """Every complete subtree hash over ``leaves``, the leaves at ``begin`` on: level ``l``
    holds ``(first index, hashes)`` of nodes ``(l, first index..)`` (a node whose sibling
    lies before ``begin`` pairs with nothing)."""
    levels = [(begin, leaves)]
    copy = _NODE_PREFIX.copy
    lo, row = begin, leaves
    while len(row) - (lo & 1) > 1:
        below = iter(row[1:] if lo & 1 else row)
        up = []
        for left, right in zip(below, below, strict=False):  # an odd last node waits
            h = copy()
            h.update(left)
            h.update(right)
            up.append(h.digest())
        lo, row = (lo + 1) >> 1, up
        levels.append((lo, row))
    return levels


def _compact(levels: list[tuple[int, list[bytes]]], begin: int, end: int) -> list[bytes]:
    """The hashes of the compact range ``[begin, end)`` (:func:`~ledger.merkle.compact_ids`)."""
    return [levels[lv][1][i - levels[lv][0]] for lv, i in compact_ids(begin, end)]


def _scan_bulk(first_line: int, lines: list[bytes]) -> ChunkResult | None:
    """:func:`_scan_each`'s result when every line passes, else None."""
    bulk = _Bulk()
    return bulk.result(first_line) if bulk.add(lines) else None


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

    def __init__(self) -> None:
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

    def result(self, first_line: int) -> ChunkResult | None:
        """The scan's result if all its lines, now added, pass together; else None."""
        n = len(self.leaves)
        if not n:
            return None
        indexes, kids, kinds, prevs, times, traces = zip(*self.found, strict=True)
        start = int(indexes[0])  # the joined comparison below refuses non-canonical digits
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
            lines=self.lines,
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
        levels = _merkle_levels(leaves, start)
        res.checkpoints = [
            (k - before, first_line + k, raw, _compact(levels, start, start + k - before))
            for before, (k, raw) in enumerate(zip(self.at, self.checkpoint_lines, strict=True))
        ]
        res.hashes = _compact(levels, start, start + n)
        return res


class _LineFault(Exception):
    """A line the verifier refuses before reading it: too long, or not ended."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line, self.reason = line, reason


def _range_lines(f: IO[bytes], offset: int, end: int, max_line: int) -> Iterator[list[bytes]]:
    """The lines of ``f`` (without their newlines) that start at an offset in
    ``[offset, end)``, about :data:`_BATCH` bytes of them at a time. A line that starts
    before ``offset`` belongs to the range before. Raises :class:`_LineFault` at a line
    of the range longer than ``max_line`` bytes (its newline included) or that the file
    ends in the middle of (its number counting from 0 at the range's first line)."""
    if offset > 0:
        f.seek(offset - 1)  # skip the line that byte is in, unless it ends there
        if not f.readline(max_line).endswith(b"\n"):
            return  # the range before holds the file's end or a line too long
    else:
        f.seek(0)
    pos = batch_at = f.tell()
    readline = f.readline
    batch: list[bytes] = []
    done = 0  # lines yielded
    while pos < end:
        raw = readline(max_line)  # a line of max_line bytes, newline included, is allowed
        if not raw.endswith(b"\n"):
            at = done + len(batch)
            if batch:
                yield batch
            if not raw:
                return
            if len(raw) == max_line and f.read(1):
                raise _LineFault(at, f"line longer than {max_line} bytes")
            raise _LineFault(at, "export does not end with a newline (truncated?)")
        pos += len(raw)
        batch.append(raw[:-1])
        if pos - batch_at >= _BATCH:
            yield batch
            done += len(batch)
            batch, batch_at = [], pos
    if batch:
        yield batch


def scan_byte_range(path: str, offset: int, end: int, max_line: int) -> ChunkResult:
    """Check the lines of the export at ``path`` that start at an offset in ``[offset, end)``
    (line numbers count from 0 at the first of them); a line longer than ``max_line``
    bytes is a fault."""
    with open(path, "rb", buffering=_READ_BUFFER) as f:
        bulk: _Bulk | None = _Bulk()
        try:
            for lines in _range_lines(f, offset, end, max_line):
                assert bulk is not None
                if not bulk.add(lines):
                    bulk = None
                    break
        except _LineFault:
            bulk = None
        res = bulk.result(0) if bulk is not None else None
        if res is not None:
            return res
        # The bulk scan cannot vouch: read again, one record at a time.
        every: list[bytes] = []
        fault: _LineFault | None = None
        try:
            for lines in _range_lines(f, offset, end, max_line):
                every += lines
        except _LineFault as e:
            fault = e
    res = _scan_each(0, every)
    if res.error is None and fault is not None:
        res.error = (None, fault.line, fault.reason)
    return res
