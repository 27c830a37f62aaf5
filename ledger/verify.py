"""Offline verification of a ledger export, streaming, with the first bad place named.

What is checked, record by record, in one pass:

* each record line is a strict, canonical DSSE envelope (:func:`open_record`);
* its index is the next one, its ``prev`` is the previous record's leaf hash,
  and times never go backwards (no back-dating);
* it is signed by the key active at that point. Record 0 is the ``key``
  record that names the log's first key; every later ``key`` record is signed
  by the key it replaces and names the next one;
* every checkpoint is signed by the key active at its size, names the log's
  origin, sits right after the record that brings the tree to its size, and
  its root equals the Merkle root of the records so far;
* the trusted key (``--key``) is one of the log's keys, and the export ends
  with a checkpoint signed at its full size: nothing was dropped at the end.

Two modes: ``signatures=True`` checks every record signature, on a pool of
threads (libsodium releases the GIL); ``signatures=False`` checks chain,
Merkle roots and signed checkpoints, and the signatures of ``key`` records
only (the trust in every checkpoint's key rests on them). Records are a tree
whose signed roots bind every byte, so that mode still detects any change,
but it names the record whose hash stops matching, not always the one that
was edited.

Example::

    result = verify_export(Path("ledger.jsonl"), NoteVerifier.from_key_string(vkey))
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import orjson

from ledger._workers import ScanPool
from ledger.checkpoint import open_checkpoint
from ledger.errors import KeyFormatError, NoteError, RecordError, VerificationError
from ledger.export import EXPORT_FORMAT
from ledger.merkle import Frontier, compact_ids
from ledger.note import NoteVerifier
from ledger.record import ZERO_HASH, open_record

if TYPE_CHECKING:  # the scanner (and numpy) load only where fast mode scans here
    from ledger._scan import ChunkResult

__all__ = ["ExportPart", "VerifyResult", "export_parts", "verify_export", "verify_stream"]

_CHUNK = 4096  # lines parsed between hand-offs to the signature pool
_MAX_LINE = 16 * 1024 * 1024  # the longest line, newline included
RANGE_BYTES = 8 << 20  # fast mode: bytes of the export each worker task scans
STREAM_CHUNK = 8192  # fast mode, an export read from a pipe: records scanned together
_RANGES_HERE = 4  # up to this many ranges are scanned in this process (no workers)


@dataclass
class VerifyResult:
    origin: str
    size: int = 0
    root: bytes = ZERO_HASH
    checkpoints: int = 0
    last_checkpoint: str = ""
    key_ids: list[str] = field(default_factory=list)
    signatures_checked: bool = True


@dataclass
class _State:
    trusted: NoteVerifier
    signatures: bool
    frontier: Frontier = field(default_factory=Frontier)
    prev: bytes = ZERO_HASH
    last_time: str = ""
    active: NoteVerifier | None = None
    keys: list[NoteVerifier] = field(default_factory=list)
    last_checkpoint_size: int = 0
    result: VerifyResult | None = None


_SigJob = tuple[int, int, NoteVerifier, bytes, bytes]  # index, line, key, message, signature


def _check_sigs(jobs: list[_SigJob]) -> tuple[int, int] | None:
    for index, line, key, msg, sig in jobs:
        if not key.verify(msg, sig):
            return index, line
    return None


def _bounded_lines(f: IO[bytes]) -> Iterator[bytes]:
    """The lines of ``f``, none read further than one byte past the longest allowed: a
    line without end must not be read whole into memory before it is refused."""
    while raw := f.readline(_MAX_LINE + 1):
        yield raw


def _lines(f: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for n, raw in enumerate(_bounded_lines(f), start=1):
        if len(raw) > _MAX_LINE:
            raise VerificationError(f"line longer than {_MAX_LINE} bytes", line=n)
        if not raw.endswith(b"\n"):
            raise VerificationError("export does not end with a newline (truncated?)", line=n)
        yield n, raw[:-1]


def _key_from_record(body: Any, index: int, line: int) -> NoteVerifier:
    key = body.get("key") if isinstance(body, dict) else None
    if not isinstance(key, str):
        raise VerificationError("key record does not name a key", index=index, line=line)
    try:
        return NoteVerifier.from_key_string(key)
    except KeyFormatError as e:
        raise VerificationError(f"key record names a bad key: {e}", index=index, line=line) from e


def _adopt_key(st: _State, body: Any, index: int, line: int) -> None:
    """Make the key named by key record ``index`` (the genesis record when 0) active."""
    new = _key_from_record(body, index, line)
    if index > 0 and st.active is not None and new.name != st.active.name:
        raise VerificationError(
            f"key record renames the log from {st.active.name!r} to {new.name!r}",
            index=index,
            line=line,
        )
    st.active = new
    st.keys.append(new)


def _record(st: _State, line_no: int, line: bytes, jobs: list[_SigJob]) -> None:
    index = st.frontier.size
    try:
        opened = open_record(line)
    except RecordError as e:
        raise VerificationError(f"malformed record: {e}", index=index, line=line_no) from e
    rec = opened.record
    if rec.index != index:
        raise VerificationError(
            f"expected index {index}, found {rec.index} (record dropped, duplicated, "
            "reordered or inserted)",
            index=index,
            line=line_no,
        )
    if rec.prev != st.prev:
        culprit = max(index - 1, 0)
        raise VerificationError(
            f"record {index} chains to {rec.prev.hex()[:16]}…, but record {culprit} hashes to "
            f"{st.prev.hex()[:16]}…",
            index=culprit if st.signatures is False else index,
            line=line_no,
        )
    if rec.time < st.last_time:
        raise VerificationError(
            f"time {rec.time} is before the previous record's {st.last_time}",
            index=index,
            line=line_no,
        )
    if index == 0:
        if rec.kind != "key":
            raise VerificationError(
                "record 0 must be the log's genesis key record", index=0, line=line_no
            )
        _adopt_key(st, rec.body, 0, line_no)
    assert st.active is not None
    if rec.key_id != st.active.key_id:
        raise VerificationError(
            f"signed by key {rec.key_id}, but the active key is {st.active.key_id}",
            index=index,
            line=line_no,
        )
    if st.signatures:
        jobs.append((index, line_no, st.active, opened.signed_bytes, opened.signature))
    if index > 0 and rec.kind == "key":
        _adopt_key(st, rec.body, index, line_no)
    st.frontier.append(rec.leaf_hash)
    st.prev = rec.leaf_hash
    st.last_time = rec.time


def _checkpoint(
    st: _State, line_no: int, obj: Any, *, size: int | None = None, root: bytes | None = None
) -> None:
    """Check one checkpoint line against the records before it (by default: all so far)."""
    size = st.frontier.size if size is None else size
    note = obj.get("checkpoint") if isinstance(obj, dict) and obj.keys() == {"checkpoint"} else None
    if not isinstance(note, str) or st.active is None:
        raise VerificationError(
            "malformed checkpoint line", index=size - 1 if size else None, line=line_no
        )
    assert st.result is not None
    try:
        cp = open_checkpoint(note, [st.active], origin=st.result.origin)
    except NoteError as e:
        raise VerificationError(
            f"checkpoint does not verify: {e}", index=size - 1, line=line_no
        ) from e
    if cp.size != size:
        where = min(cp.size, size)
        raise VerificationError(
            f"checkpoint for size {cp.size} follows {size} records "
            f"(records missing or added before it)",
            index=where,
            line=line_no,
        )
    if cp.size < st.last_checkpoint_size or (
        st.result.checkpoints and cp.size == st.last_checkpoint_size
    ):
        # The log signs one checkpoint per size: a second line for a size is not the log's.
        what = "go backwards" if cp.size < st.last_checkpoint_size else "repeat a size"
        raise VerificationError(f"checkpoints {what}", index=size - 1, line=line_no)
    if cp.root != (st.frontier.root() if root is None else root):
        raise VerificationError(
            f"checkpoint root for size {size} does not match the records",
            index=size - 1,
            line=line_no,
        )
    st.last_checkpoint_size = cp.size
    st.result.checkpoints += 1
    st.result.last_checkpoint = note


def _parse_checkpoint_line(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _extended(frontier: Frontier, begin: int, end: int, hashes: list[bytes]) -> Frontier:
    """``frontier`` (of size ``begin``) followed by the compact range ``[begin, end)``."""
    out = frontier.copy()
    for (level, _), h in zip(compact_ids(begin, end), hashes, strict=True):
        out.append_subtree(level, h)
    return out


def _join(st: _State, res: ChunkResult, lines_before: int = 0) -> None:
    """Fold one scanned run of lines into the sequential state; raise at its first fault.

    ``lines_before`` turns the scan's line numbers into the export's. The run's
    first record must be the one that follows the records so far.
    """
    expected = st.frontier.size
    start = expected if res.start < 0 else res.start
    leading = [cp for cp in res.checkpoints if cp[0] == 0]  # lines before any record
    for _, line, raw, _ in leading:
        _checkpoint(st, lines_before + line, _parse_checkpoint_line(raw))
    checkpoints = res.checkpoints[len(leading) :]
    first_line = lines_before + res.first_line
    if start != expected:
        raise VerificationError(
            f"expected index {expected}, found {start} (record dropped, duplicated, "
            "reordered or inserted)",
            index=expected,
            line=first_line,
        )
    if res.count and res.first_prev != st.prev:
        culprit = max(start - 1, 0)
        raise VerificationError(
            f"record {start} does not chain to record {culprit}",
            index=culprit,
            line=first_line,
        )
    if res.count and res.first_time < st.last_time:
        raise VerificationError(
            f"time {res.first_time} is before the previous record's {st.last_time}",
            index=start,
            line=first_line,
        )
    # Events in index order; at one index: genesis key, key-id change, key switch, checkpoint.
    events: list[tuple[int, int, Any]] = []
    events += [(i, 1, kid) for i, kid in res.key_runs]
    events += [(i, 0 if i == 0 else 2, (line, raw)) for i, line, raw in res.key_records]
    events += [(start + cp[0] - 1, 3, cp) for cp in checkpoints]
    events.sort(key=lambda e: (e[0], e[1]))
    switch_at: int | None = None  # the record that must carry the key a key record named
    for index, order, payload in events:
        if order == 1:
            if st.active is None:
                raise VerificationError(
                    "record 0 must be the log's genesis key record", index=0, line=first_line
                )
            if switch_at is not None and index > switch_at:
                raise VerificationError(
                    f"signed by key {st.keys[-2].key_id}, but the active key is {st.active.key_id}",
                    index=switch_at,
                )
            if payload != st.active.key_id:
                raise VerificationError(
                    f"signed by key {payload}, but the active key is {st.active.key_id}",
                    index=index,
                )
            switch_at = None
        elif order in (0, 2):
            if switch_at is not None and index >= switch_at:  # a key record kept the old key
                raise VerificationError(
                    f"signed by key {st.keys[-2].key_id}, but the active key is "
                    f"{st.active.key_id if st.active else '?'}",
                    index=switch_at,
                )
            line, raw = payload
            try:
                opened = open_record(raw)
            except RecordError as e:
                raise VerificationError(
                    f"malformed record: {e}", index=index, line=lines_before + line
                ) from e
            rec = opened.record
            previous = st.active
            before = previous.key_id if previous else None
            _adopt_key(st, rec.body, index, lines_before + line)
            assert st.active is not None
            # Even here, a key record's own signature is checked (there are only a few):
            # otherwise anyone could name the trusted key in a genesis, rotate to a key of
            # their own, and sign checkpoints over whatever they like with it. The genesis
            # is signed by the key it names, a rotation by the key it replaces.
            signer, whose = (st.active, "it names") if index == 0 else (previous, "it replaces")
            if signer is None or not opened.verify(signer):
                raise VerificationError(
                    f"key record is not signed by the key {whose} "
                    f"({signer.key_id if signer else '?'})",
                    index=index,
                    line=lines_before + line,
                )
            # The next record must carry the named key: a change of key id (unless the
            # record names the key already active).
            switch_at = index + 1 if index > 0 and st.active.key_id != before else None
        else:
            pos, line, raw, hashes = payload
            if switch_at is not None and switch_at < start + pos:
                raise VerificationError(
                    f"signed by key {st.keys[-2].key_id}, but the active key is "
                    f"{st.active.key_id if st.active else '?'}",
                    index=switch_at,
                )
            root = _extended(st.frontier, start, start + pos, hashes).root()
            _checkpoint(
                st, lines_before + line, _parse_checkpoint_line(raw), size=start + pos, root=root
            )
    if switch_at is not None and switch_at < start + res.count:
        raise VerificationError("record after a key rotation is not signed by the new key",
                                index=switch_at)  # fmt: skip
    if res.error is not None:
        at, line, reason = res.error
        raise VerificationError(
            reason, index=expected if at == -1 else at, line=lines_before + line
        )
    if res.count:
        st.frontier = _extended(st.frontier, start, start + res.count, res.hashes)
        st.prev, st.last_time = res.last_leaf, res.last_time


_BLOCK = 1 << 20  # bytes read at a time while cutting an export into parts


def _file_ranges(
    f: IO[bytes], first_line: int, per_chunk: int
) -> Iterator[tuple[int, int, int, int, int]]:
    """``(offset, length, lines, first record, first line)`` of each part of the rest of ``f``.

    Parts hold ``per_chunk`` records and the checkpoint lines after them. Lines
    are found a block at a time with numpy (no Python work per line); a line that
    is too long or not ended by a newline raises when it is reached, after the
    parts before it, as a line-by-line reading would.
    """
    import numpy as np  # here only: verification in worker processes needs none in this one

    begin = base = f.tell()  # base: the file offset of buf[0]
    first = line_no = first_line
    start = records = 0  # the current chunk's first record; records before line_no
    buf = bytearray(_BLOCK)
    pos = filled = 0
    while True:
        arr = np.frombuffer(buf, np.uint8)
        ends = np.flatnonzero(arr[pos:filled] == ord("\n"))
        if len(ends):
            ends += pos + 1
            starts = np.empty_like(ends)
            starts[0], starts[1:] = pos, ends[:-1]
            n = limit = len(ends)
            if len(buf) > _MAX_LINE:  # else no line within buf can be too long
                too_long = np.flatnonzero(ends - starts > _MAX_LINE)
                limit = int(too_long[0]) if len(too_long) else n
            is_record = np.ones(n, np.bool_)
            maybe = np.flatnonzero(arr[np.minimum(starts + 2, filled - 1)] == ord("c"))
            for k in maybe.tolist():  # a record line's third byte is 'p'
                is_record[k] = not buf.startswith(b'{"checkpoint"', starts[k], ends[k])
            before = records + np.cumsum(is_record) - is_record  # records before each line
            opens = is_record & (before % per_chunk == 0) & (before > start)
            for k in np.flatnonzero(opens[:limit]).tolist():  # a record after a full chunk
                offset = base + int(starts[k])
                yield begin, offset - begin, line_no + k - first, start, first
                begin, first, start = offset, line_no + k, int(before[k])
            if limit < n:
                raise VerificationError(f"line longer than {_MAX_LINE} bytes", line=line_no + limit)
            records += int(is_record.sum())
            line_no += n
            pos = int(ends[-1])
        del arr  # buf may grow below
        if filled - pos > _MAX_LINE:  # the line goes on past what was read
            raise VerificationError(f"line longer than {_MAX_LINE} bytes", line=line_no)
        base += pos
        buf[: filled - pos] = buf[pos:filled]
        filled -= pos
        pos = 0
        if filled == len(buf):
            buf.extend(bytes(len(buf)))
        with memoryview(buf) as view:
            got = cast(io.BufferedIOBase, f).readinto(view[filled:])
        if not got:
            if filled:
                raise VerificationError(
                    "export does not end with a newline (truncated?)", line=line_no
                )
            break
        filled += got
    if line_no > first:
        yield begin, base + pos - begin, line_no - first, start, first


@dataclass(frozen=True)
class ExportPart:
    """A run of an export's lines, ``length`` bytes from ``offset``: records from index
    ``start`` on, and the checkpoint lines after them."""

    offset: int
    length: int
    start: int


def export_parts(path: Path, per_part: int) -> Iterator[ExportPart]:
    """The export at ``path`` (after its header) cut before every ``per_part``-th record,
    so that parts can be read apart, and the same export is always cut the same way.
    Raises :class:`VerificationError` at a line too long or not ended."""
    with path.open("rb") as f:
        f.readline()
        for offset, length, _lines, start, _first in _file_ranges(f, 2, per_part):
            yield ExportPart(offset, length, start)


def _verify_chunked(
    f: IO[bytes],
    first_line: int,
    st: _State,
    total: int,
    workers: int,
    progress: Callable[[int, int], None] | None,
    range_bytes: int = RANGE_BYTES,
    stream_chunk: int = STREAM_CHUNK,
) -> None:
    """Fast mode: runs of lines scanned on their own (in worker processes), joined here
    in order.

    An export file is cut into byte ranges of ``range_bytes``. Workers read their
    range themselves, from the first line that starts in it, so this process never
    reads the export (finding the lines of 1.8 GB here took about 2 s of the workers'
    CPU on two cores). A few ranges are scanned here: starting a worker costs more. A
    stream that is not a regular file is read here and scanned ``stream_chunk``
    records at a time.
    """
    path = getattr(f, "name", None)
    with contextlib.ExitStack() as stack:
        results: Iterator[ChunkResult]
        if not (isinstance(path, str) and os.path.isfile(path) and f.seekable()):
            results = _stream_runs(f, first_line, stream_chunk)
        else:
            size = os.fstat(f.fileno()).st_size
            ranges = [
                (path, o, min(o + range_bytes, size), _MAX_LINE)
                for o in range(f.tell(), size, range_bytes)
            ]
            if workers > 1 and len(ranges) > _RANGES_HERE:
                # Fresh interpreters that import only the scanner: no fork of a process
                # that has threads, and no re-import of this process's __main__ (see
                # ledger._workers).
                pool = stack.enter_context(ScanPool(min(workers, len(ranges))))
                results = pool.map(ranges)
            else:
                from ledger._scan import scan_byte_range

                results = (scan_byte_range(*args) for args in ranges)
        lines_before = first_line
        for res in results:
            _join(st, res, lines_before)
            lines_before += res.lines
            if progress:
                progress(st.frontier.size, total)


def _stream_runs(f: IO[bytes], first_line: int, per_chunk: int) -> Iterator[ChunkResult]:
    """Fast mode for an export that cannot be read twice: the scans of chunks of
    ``per_chunk`` records (and the checkpoint lines after them), made in this process.
    A line too long or not ended raises after the scan of the lines before it."""
    from ledger._scan import scan_chunk

    records = 0
    line_no = first_line
    batch: list[bytes] = []
    for raw in _bounded_lines(f):
        fault = None
        if len(raw) > _MAX_LINE:
            fault = f"line longer than {_MAX_LINE} bytes"
        elif not raw.endswith(b"\n"):
            fault = "export does not end with a newline (truncated?)"
        if fault is not None:
            if batch:  # a fault in the lines before this one comes first
                yield scan_chunk(0, b"\n".join(batch))
            raise VerificationError(fault, line=line_no)
        is_checkpoint = raw.startswith(b'{"checkpoint"')
        if records == per_chunk and not is_checkpoint:
            yield scan_chunk(0, b"\n".join(batch))
            records, batch = 0, []
        batch.append(raw[:-1])
        line_no += 1
        records += not is_checkpoint
    if batch:
        yield scan_chunk(0, b"\n".join(batch))


def verify_stream(
    f: IO[bytes],
    trusted: NoteVerifier,
    *,
    signatures: bool = True,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    range_bytes: int = RANGE_BYTES,
    stream_chunk: int = STREAM_CHUNK,
) -> VerifyResult:
    """Verify an export read from ``f``; raise :class:`VerificationError` at the first fault.

    ``threads`` bounds the signature threads (full mode) or scanning processes
    (fast mode); ``range_bytes`` and ``stream_chunk`` set how much fast mode
    scans at a time from a file and from a pipe (tests make them small).
    """
    lines = _lines(f)
    try:
        header_line, header_raw = next(lines)
    except StopIteration:
        raise VerificationError("export is empty", line=1) from None
    try:
        header = orjson.loads(header_raw)
    except orjson.JSONDecodeError as e:
        raise VerificationError(f"header is not JSON: {e}", line=header_line) from e
    if (
        not isinstance(header, dict)
        or header.get("format") != EXPORT_FORMAT
        or not isinstance(header.get("size"), int)
        or isinstance(header["size"], bool)  # JSON true is not a size
        or header["size"] < 0
        or header.get("origin") != trusted.name
    ):
        raise VerificationError(
            f"header must be a {EXPORT_FORMAT} header for origin {trusted.name!r}", line=1
        )
    total: int = header["size"]
    st = _State(
        trusted, signatures, result=VerifyResult(trusted.name, signatures_checked=signatures)
    )
    workers = max(1, threads or os.cpu_count() or 1)
    if not signatures:
        _verify_chunked(f, header_line + 1, st, total, workers, progress, range_bytes, stream_chunk)
        return _finish(st, total, trusted)
    pending: list[Future[tuple[int, int] | None]] = []

    def drain() -> None:
        bad = [r for r in (p.result() for p in pending) if r is not None]
        pending.clear()
        if bad:
            index, line = min(bad)
            raise VerificationError("signature does not verify", index=index, line=line)

    with ThreadPoolExecutor(workers, thread_name_prefix="verify") as pool:
        done = False
        while not done:
            jobs: list[_SigJob] = []
            error: VerificationError | None = None
            try:
                for _ in range(_CHUNK):
                    item = next(lines, None)
                    if item is None:
                        done = True
                        break
                    line_no, raw = item
                    if raw.startswith(b'{"checkpoint"'):
                        try:
                            obj = orjson.loads(raw)
                        except orjson.JSONDecodeError:
                            obj = None
                        _checkpoint(st, line_no, obj)
                    else:
                        _record(st, line_no, raw, jobs)
            except VerificationError as e:
                error = e
            # A bad signature earlier than a structural error is the first fault.
            drain()
            if jobs:
                step = max(1, len(jobs) // workers)
                pending.extend(
                    pool.submit(_check_sigs, jobs[i : i + step]) for i in range(0, len(jobs), step)
                )
            if error is not None:
                drain()
                raise error
            if progress:
                progress(st.frontier.size, total)
        drain()
    return _finish(st, total, trusted)


def _finish(st: _State, total: int, trusted: NoteVerifier) -> VerifyResult:
    """End-of-export checks shared by both modes."""
    size = st.frontier.size
    if size != total:
        raise VerificationError(
            f"header promises {total} records, export holds {size}", index=min(size, total)
        )
    if size == 0:
        raise VerificationError("export holds no records")
    if st.last_checkpoint_size != size:
        raise VerificationError(
            f"no signed checkpoint covers records {st.last_checkpoint_size}..{size - 1} "
            "(export truncated or altered at its end)",
            index=st.last_checkpoint_size,
        )
    if trusted not in st.keys:
        raise VerificationError(
            f"the trusted key {trusted.key_id} is not one of this log's keys "
            f"({', '.join(k.key_id for k in st.keys)})"
        )
    result = st.result
    assert result is not None
    result.size = size
    result.root = st.frontier.root()
    result.key_ids = [k.key_id for k in st.keys]
    return result


def verify_export(
    path: Path,
    trusted: NoteVerifier,
    *,
    signatures: bool = True,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    range_bytes: int = RANGE_BYTES,
    stream_chunk: int = STREAM_CHUNK,
) -> VerifyResult:
    """Verify the export file at ``path`` (see :func:`verify_stream`)."""
    with path.open("rb", buffering=1 << 20) as f:
        return verify_stream(
            f,
            trusted,
            signatures=signatures,
            threads=threads,
            progress=progress,
            range_bytes=range_bytes,
            stream_chunk=stream_chunk,
        )
