"""Fast verification in parts gives the same verdict as reading the export whole.

Fast mode (no record signatures) scans byte ranges of an export file in worker
processes, or chunks of records of an export read from a pipe, and joins them
in order. With tiny ranges and chunks, every boundary, key rotation and
checkpoint position of a small ledger is exercised; for each single mutation
of the export the verdict (record index, or success) must be exactly the one
of a scan with one range, and the untouched export must give the result of
full (signature) verification.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from ledger import DataDir, Draft, LedgerConfig, NoteVerifier, _scan, verify
from ledger._workers import ScanPool
from ledger.errors import VerificationError
from ledger.export import export_ledger
from ledger.verify import verify_export, verify_stream

WHOLE = 1 << 30  # one range holds the whole test ledger


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NoteVerifier, NoteVerifier]:
    base = tmp_path_factory.mktemp("chunked")
    d = DataDir(base / "data")
    first = d.generate_key("chunk.test/log").verifier

    async def build() -> NoteVerifier:
        config = LedgerConfig(checkpoint_every=5, checkpoint_interval=0)
        async with d.open_ledger(config) as log:
            for i in range(37):
                await log.append(Draft("note", {"i": i, "text": "x" * (i * 7)}, target="t" * i))
            second = (await d.rotate(log, "test")).verifier
            for i in range(40):
                await log.append(Draft("decision", {"i": i}, actor="a", trace_id=f"{i + 1:032x}"))
            await log.checkpoint()
            await export_ledger(log, base / "export.jsonl")
        return second

    second = asyncio.run(build())
    return base / "export.jsonl", first, second


def _outcome(run: Callable[[], verify.VerifyResult]) -> object:
    try:
        r = run()
    except VerificationError as e:
        return ("fail", e.index)
    return ("ok", r.size, r.root, r.checkpoints, tuple(r.key_ids))


def _verdict(path: Path, key: NoteVerifier, range_bytes: int, threads: int = 1) -> object:
    """Fast mode over the file, in ranges of ``range_bytes``."""
    return _outcome(
        lambda: verify_export(path, key, signatures=False, range_bytes=range_bytes, threads=threads)
    )


def _stream_verdict(data: bytes, key: NoteVerifier, per_chunk: int) -> object:
    """Fast mode over a stream that is not a file, in chunks of ``per_chunk`` records."""
    return _outcome(
        lambda: verify_stream(
            io.BytesIO(data), key, signatures=False, stream_chunk=per_chunk, threads=2
        )
    )


def test_untouched_export_agrees_with_signature_mode(
    export: tuple[Path, NoteVerifier, NoteVerifier],
) -> None:
    path, first, second = export
    full = verify_export(path, first, signatures=True)
    expected = ("ok", full.size, full.root, full.checkpoints, tuple(full.key_ids))
    data = path.read_bytes()
    # Ranges that hold no line start, one line, a few lines, and everything.
    for range_bytes in (1, 7, 100, 389, 1000, 4001, WHOLE):
        assert _verdict(path, first, range_bytes) == expected, range_bytes
        assert _verdict(path, second, range_bytes) == expected, range_bytes
    for per_chunk in (1, 2, 3, 8, 32, 1 << 14):
        assert _stream_verdict(data, first, per_chunk) == expected, per_chunk
    # Through the process pool (many ranges, two workers).
    assert _verdict(path, first, 997, threads=2) == expected


def _mutations(lines: list[bytes]) -> list[tuple[str, list[bytes]]]:
    out: list[tuple[str, list[bytes]]] = []
    body = list(range(1, len(lines)))  # keep the header
    for k in body:
        raw = lines[k]
        for pos in (2, len(raw) // 2, len(raw) - 3):
            changed = bytearray(raw)
            changed[pos] = ord("A") if changed[pos] != ord("A") else ord("B")
            out.append((f"byte {pos} of line {k}", [*lines[:k], bytes(changed), *lines[k + 1 :]]))
        out.append((f"drop line {k}", lines[:k] + lines[k + 1 :]))
        out.append((f"duplicate line {k}", [*lines[: k + 1], raw, *lines[k + 1 :]]))
        if k + 1 < len(lines):
            swapped = [*lines[:k], lines[k + 1], raw, *lines[k + 2 :]]
            out.append((f"swap lines {k},{k + 1}", swapped))
    return out


def _line(name: str, lines: list[bytes]) -> bytes:
    return lines[int(name.rsplit(" ", 1)[1])]


def test_every_mutation_gets_the_same_verdict_in_chunks(
    export: tuple[Path, NoteVerifier, NoteVerifier], tmp_path: Path
) -> None:
    path, first, _ = export
    lines = path.read_bytes().split(b"\n")[:-1]
    target = tmp_path / "m.jsonl"
    for name, mutated in _mutations(lines):
        data = b"\n".join(mutated) + b"\n"
        target.write_bytes(data)
        whole = _verdict(target, first, WHOLE)
        # Dropping or repeating a checkpoint line forges nothing; every other change must fail.
        harmless = name.startswith(("drop", "duplicate")) and b"checkpoint" in _line(name, lines)
        assert whole[0] == "fail" or harmless, f"{name}: not detected"
        for range_bytes in (389, 4001):
            assert _verdict(target, first, range_bytes) == whole, f"{name}, {range_bytes} B"
        for per_chunk in (1, 3):
            assert _stream_verdict(data, first, per_chunk) == whole, f"{name}, {per_chunk}"


def test_process_pool_names_the_same_record(
    export: tuple[Path, NoteVerifier, NoteVerifier], tmp_path: Path
) -> None:
    path, first, _ = export
    lines = path.read_bytes().split(b"\n")[:-1]
    target = tmp_path / "m.jsonl"
    for k in (3, len(lines) // 2, len(lines) - 4):
        mutated = lines[:k] + lines[k + 1 :]
        target.write_bytes(b"\n".join(mutated) + b"\n")
        assert _verdict(target, first, 997, threads=2) == _verdict(target, first, WHOLE)


# ---------------------------------------------------------------- the fast path itself


def _chunk_lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[1:-1]  # no header, nothing after the last newline


def test_bulk_scan_vouches_for_the_untouched_export_in_every_chunking(
    export: tuple[Path, NoteVerifier, NoteVerifier],
) -> None:
    lines = _chunk_lines(export[0])
    for per in (1, 2, 3, 5, 8, 13, len(lines)):  # runs of lines start anywhere
        for at in range(0, len(lines), per):
            run = lines[at : at + per]
            bulk = _scan._scan_bulk(2 + at, run)
            each = _scan._scan_each(2 + at, run)
            if any(raw.startswith(b'{"payload"') for raw in run):
                assert bulk is not None, f"{per} lines from {at}"
            assert bulk is None or bulk == each, f"{per} lines from {at}"
            assert each.error is None
            assert each.lines == len(run)


def test_bulk_scan_is_the_reference_scan_or_declines(
    export: tuple[Path, NoteVerifier, NoteVerifier],
) -> None:
    """For every single mutation: the bulk result equals the record-by-record one, or is None."""
    lines = export[0].read_bytes().split(b"\n")[:-1]
    declined = 0
    for name, mutated in _mutations(lines):
        chunk = mutated[1:]
        bulk = _scan._scan_bulk(2, chunk)
        each = _scan._scan_each(2, chunk)
        assert bulk is None or bulk == each, name
        declined += bulk is None
        if each.error is not None:
            assert bulk is None, f"{name}: bulk scan missed {each.error}"
    assert declined > len(lines)  # the mutations do reach the fallback


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p.replace(b'"trace_id":"', b'"trace_id":"0', 1),
        lambda p: p.replace(b'"kind":"', b'"kind":"K', 1),
        lambda p: p.replace(b'"time":"', b'"time":"9', 1).replace(b'Z"', b'"', 1),
        lambda p: p.replace(b'"target":"', b'"target":"\\\\\\"', 1),
        lambda p: p.replace(b'"index":', b'"index":0', 1),
        lambda p: p.replace(b'"prev":"', b'"prev":"A', 1).replace(b'","target"', b'","target"', 1),
    ],
)
def test_bulk_scan_declines_payloads_the_reference_refuses(
    export: tuple[Path, NoteVerifier, NoteVerifier], edit: Callable[[bytes], bytes]
) -> None:
    """Payload edits that keep the envelope well-formed: both scans agree, field by field."""
    lines = _chunk_lines(export[0])
    k = next(i for i, raw in enumerate(lines) if raw.startswith(b'{"payload"') and i > 3)
    raw = lines[k]
    q = raw.index(b'"', 12)
    payload = base64.b64decode(raw[12:q])
    edited = base64.b64encode(edit(payload))
    chunk = [*lines[:k], raw[:12] + edited + raw[q:], *lines[k + 1 :]]
    bulk = _scan._scan_bulk(2, chunk)
    each = _scan._scan_each(2, chunk)
    assert bulk is None or bulk == each
    if each.error is not None:
        assert bulk is None


# ------------------------------------------------------ cutting the file, worker processes


def _reference_parts(f: IO[bytes], first_line: int, per_part: int) -> Iterator[tuple[int, ...]]:
    """The line-by-line cutter that _file_ranges replaced, kept as its specification."""
    start = records = lines_in_part = 0
    offset = begin = f.tell()
    first = line_no = first_line
    for raw in f:
        if len(raw) > verify._MAX_LINE:
            raise VerificationError(f"line longer than {verify._MAX_LINE} bytes", line=line_no)
        if not raw.endswith(b"\n"):
            raise VerificationError("export does not end with a newline (truncated?)", line=line_no)
        is_checkpoint = raw.startswith(b'{"checkpoint"')
        if records == per_part and not is_checkpoint:
            yield begin, offset - begin, lines_in_part, start, first
            start, records, lines_in_part, begin, first = start + records, 0, 0, offset, line_no
        offset += len(raw)
        lines_in_part += 1
        line_no += 1
        records += not is_checkpoint
    if lines_in_part:
        yield begin, offset - begin, lines_in_part, start, first


def _cuts(cutter: Callable[..., Iterator[Any]], path: Path, per_part: int) -> list[object]:
    out: list[object] = []
    with path.open("rb") as f:
        f.readline()
        try:
            out.extend(cutter(f, 2, per_part))
        except VerificationError as e:
            out.append(("error", e.reason, e.line))
    return out


def _cases(data: bytes, longest: int) -> dict[str, bytes]:
    """The export and exports whose lines the cutters must refuse or read with care."""
    lines = data.split(b"\n")[:-1]
    return {
        "untouched": data,
        "truncated": data[:-1],
        "cut mid-line": data[: len(data) // 2],
        "header only": lines[0] + b"\n",
        "one long line": data.replace(lines[9], lines[9] + b"x", 1),
        "long last line": data + b"y" * (longest + 5),
        "short last line": data + b"z",
        "empty lines": data.replace(b"\n", b"\n\n", 3),
    }


def test_file_ranges_cut_as_the_line_by_line_cutter(
    export: tuple[Path, NoteVerifier, NoteVerifier],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = export[0].read_bytes()
    longest = max(map(len, data.split(b"\n")))
    monkeypatch.setattr(verify, "_MAX_LINE", longest + 1)  # the longest line just fits
    target = tmp_path / "cut.jsonl"
    for name, blob in _cases(data, longest).items():
        target.write_bytes(blob)
        for block in (7, 64, 1000, 1 << 22):  # refills mid-line, lines longer than a block
            monkeypatch.setattr(verify, "_BLOCK", block)
            for per_part in (2, 8, 1 << 14):
                got = _cuts(verify._file_ranges, target, per_part)
                assert got == _cuts(_reference_parts, target, per_part), (name, block, per_part)


def _reference_range(
    data: bytes, offset: int, end: int, limit: int = verify._MAX_LINE
) -> tuple[list[bytes], object]:
    """The lines that start in [offset, end) (without newlines), and the fault that ends
    them early: what _range_lines must give, found with plain slicing."""
    at, out = 0, []
    while at < min(end, len(data)):
        nl = data.find(b"\n", at)
        stop = len(data) if nl < 0 else nl + 1
        if offset <= at:
            if stop - at > limit:
                return out, f"line longer than {limit} bytes"
            if nl < 0:
                return out, "export does not end with a newline (truncated?)"
            out.append(data[at:nl])
        at = stop
    return out, None


def _ranges_to_try(blob: bytes) -> Iterator[tuple[int, int]]:
    """Ranges from just before, at and just after every line start, of 1, 2 and 900 bytes;
    and the whole file cut every 700 and 5000 bytes."""
    starts = [0] + [k + 1 for k, c in enumerate(blob) if c == ord("\n")]
    for s in starts:
        for offset in (s - 1, s, s + 1):
            for size in (1, 2, 900):
                if offset >= 1:
                    yield offset, offset + size
    for step in (700, 5000, len(blob) + 1):
        for offset in range(1, len(blob) + 1, step):
            yield offset, offset + step


def test_byte_ranges_read_the_lines_that_start_in_them(
    export: tuple[Path, NoteVerifier, NoteVerifier],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every line is read by exactly one range: the one it starts in; faults in order."""
    data = export[0].read_bytes()
    longest = max(map(len, data.split(b"\n")))
    limit = longest + 1
    target = tmp_path / "ranges.jsonl"
    for name, blob in _cases(data, longest).items():
        target.write_bytes(blob)
        for batch in (1, 500, 1 << 20):
            monkeypatch.setattr(_scan, "_BATCH", batch)
            with target.open("rb") as f:
                for offset, end in _ranges_to_try(blob):
                    got: list[bytes] = []
                    fault: object = None
                    try:
                        for lines in _scan._range_lines(f, offset, end, limit):
                            got += lines
                    except _scan._LineFault as e:
                        fault = (e.line, e.reason)
                    run, reason = _reference_range(blob, offset, end, limit)
                    expected = (run, None if reason is None else (len(run), reason))
                    assert (got, fault) == expected, (name, batch, offset, end)


def test_scan_pool_answers_in_order_and_raises_what_a_worker_raised(
    export: tuple[Path, NoteVerifier, NoteVerifier],
) -> None:
    path = export[0]
    size = path.stat().st_size
    jobs = [(str(path), o, o + 2000, verify._MAX_LINE) for o in range(100, size, 2000)]
    with ScanPool(2) as pool:
        for args in jobs:
            pool.submit(args)
        for args in jobs:
            assert pool.result() == _scan.scan_byte_range(*args)
        pool.submit((str(path) + ".missing", 0, 1, verify._MAX_LINE))
        with pytest.raises(FileNotFoundError):
            pool.result()


@pytest.mark.parametrize("batch", [1, 200, 1000, 1 << 20])
def test_byte_range_scan_in_batches_is_the_scan_of_its_lines(
    export: tuple[Path, NoteVerifier, NoteVerifier],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    batch: int,
) -> None:
    """Scanning a byte range a few lines at a time gives what scanning its lines at once does."""
    monkeypatch.setattr(_scan, "_BATCH", batch)
    lines = export[0].read_bytes().split(b"\n")[:-1]
    target = tmp_path / "r.jsonl"
    for name, mutated in [("untouched", lines), *_mutations(lines)[::7]]:
        data = b"\n".join(mutated) + b"\n"
        target.write_bytes(data)
        for step in (997, len(data)):
            for offset in range(len(mutated[0]) + 1, len(data), step):
                run, fault = _reference_range(data, offset, offset + step)
                assert fault is None
                expected = _scan.scan_chunk(0, b"\n".join(run))
                got = _scan.scan_byte_range(str(target), offset, offset + step, verify._MAX_LINE)
                if not run:  # a range with no line start holds nothing
                    expected = _scan.ChunkResult()
                assert got == expected, (name, offset, step)
                assert got.lines == len(run)
