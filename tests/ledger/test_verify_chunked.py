"""Fast verification in chunks gives the same verdict as reading the export whole.

Fast mode (no record signatures) scans chunks of ``2**level`` records in worker
processes and joins them in order. With tiny chunks, every chunk boundary,
key rotation and checkpoint position of a small ledger is exercised; for each
single mutation of the export the verdict (record index, or success) must be
exactly the one of a scan with one chunk, and the untouched export must give
the result of full (signature) verification.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from ledger import DataDir, Draft, LedgerConfig, NoteVerifier, _scan, verify
from ledger._workers import ScanPool
from ledger.errors import VerificationError
from ledger.export import export_ledger
from ledger.verify import verify_export

WHOLE = 14  # one chunk holds the whole test ledger


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


def _verdict(path: Path, key: NoteVerifier, level: int, threads: int = 1) -> object:
    try:
        r = verify_export(path, key, signatures=False, chunk_level=level, threads=threads)
    except VerificationError as e:
        return ("fail", e.index)
    return ("ok", r.size, r.root, r.checkpoints, tuple(r.key_ids))


def test_untouched_export_agrees_with_signature_mode(
    export: tuple[Path, NoteVerifier, NoteVerifier],
) -> None:
    path, first, second = export
    full = verify_export(path, first, signatures=True)
    expected = ("ok", full.size, full.root, full.checkpoints, tuple(full.key_ids))
    for level in (1, 2, 3, 5, WHOLE):
        assert _verdict(path, first, level) == expected
        assert _verdict(path, second, level) == expected
    # Through the process pool (more than two chunks, two workers).
    assert _verdict(path, first, 3, threads=2) == expected


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
        target.write_bytes(b"\n".join(mutated) + b"\n")
        whole = _verdict(target, first, WHOLE)
        # Dropping or repeating a checkpoint line forges nothing; every other change must fail.
        harmless = name.startswith(("drop", "duplicate")) and b"checkpoint" in _line(name, lines)
        assert whole[0] == "fail" or harmless, f"{name}: not detected"
        for level in (1, 3):
            assert _verdict(target, first, level) == whole, f"{name}, chunks of 2**{level}"


def test_process_pool_names_the_same_record(
    export: tuple[Path, NoteVerifier, NoteVerifier], tmp_path: Path
) -> None:
    path, first, _ = export
    lines = path.read_bytes().split(b"\n")[:-1]
    target = tmp_path / "m.jsonl"
    for k in (3, len(lines) // 2, len(lines) - 4):
        mutated = lines[:k] + lines[k + 1 :]
        target.write_bytes(b"\n".join(mutated) + b"\n")
        assert _verdict(target, first, 2, threads=2) == _verdict(target, first, WHOLE)


# ---------------------------------------------------------------- the fast path itself


def _chunk_lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[1:-1]  # no header, nothing after the last newline


def test_bulk_scan_vouches_for_the_untouched_export_in_every_chunking(
    export: tuple[Path, NoteVerifier, NoteVerifier],
) -> None:
    lines = _chunk_lines(export[0])
    for level in (1, 2, 3, 5, WHOLE):
        per, start, first, chunk = 1 << level, 0, 2, []  # cut as the verifier cuts
        for k, raw in enumerate([*lines, None]):
            closes = raw is None or (
                sum(not x.startswith(b'{"checkpoint"') for x in chunk) == per
                and not raw.startswith(b'{"checkpoint"')
            )
            if closes and chunk:
                bulk = _scan._scan_bulk(start, first, chunk, level)
                assert bulk is not None, f"level {level}, chunk at {start}"
                assert bulk == _scan._scan_each(start, first, chunk, level)
                start, first, chunk = start + per, 2 + k, []
            if raw is not None:
                chunk.append(raw)


def test_bulk_scan_is_the_reference_scan_or_declines(
    export: tuple[Path, NoteVerifier, NoteVerifier],
) -> None:
    """For every single mutation: the bulk result equals the record-by-record one, or is None."""
    lines = export[0].read_bytes().split(b"\n")[:-1]
    declined = 0
    for name, mutated in _mutations(lines):
        chunk = mutated[1:]
        bulk = _scan._scan_bulk(0, 2, chunk, WHOLE)
        each = _scan._scan_each(0, 2, chunk, WHOLE)
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
    bulk = _scan._scan_bulk(0, 2, chunk, WHOLE)
    each = _scan._scan_each(0, 2, chunk, WHOLE)
    assert bulk is None or bulk == each
    if each.error is not None:
        assert bulk is None


# ------------------------------------------------------ cutting the file, worker processes


def _reference_ranges(
    f: IO[bytes], path: str, first_line: int, per_chunk: int, level: int
) -> Iterator[tuple[str, int, int, int, int, int, int]]:
    """The line-by-line cutter that _file_ranges replaced, kept as its specification."""
    start = records = lines_in_chunk = 0
    offset = begin = f.tell()
    first = line_no = first_line
    for raw in f:
        if len(raw) > verify._MAX_LINE:
            raise VerificationError(f"line longer than {verify._MAX_LINE} bytes", line=line_no)
        if not raw.endswith(b"\n"):
            raise VerificationError("export does not end with a newline (truncated?)", line=line_no)
        is_checkpoint = raw.startswith(b'{"checkpoint"')
        if records == per_chunk and not is_checkpoint:
            yield path, begin, offset - begin, lines_in_chunk, start, first, level
            start, records, lines_in_chunk, begin, first = start + records, 0, 0, offset, line_no
        offset += len(raw)
        lines_in_chunk += 1
        line_no += 1
        records += not is_checkpoint
    if lines_in_chunk:
        yield path, begin, offset - begin, lines_in_chunk, start, first, level


def _cuts(cutter: Callable[..., Iterator[Any]], path: Path, level: int) -> list[object]:
    out: list[object] = []
    with path.open("rb") as f:
        f.readline()
        try:
            out.extend(cutter(f, str(path), 2, 1 << level, level))
        except VerificationError as e:
            out.append(("error", e.reason, e.line))
    return out


def test_file_ranges_cut_as_the_line_by_line_cutter(
    export: tuple[Path, NoteVerifier, NoteVerifier],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = export[0].read_bytes()
    lines = data.split(b"\n")[:-1]
    longest = max(map(len, lines))
    monkeypatch.setattr(verify, "_MAX_LINE", longest + 1)  # the longest line just fits
    cases = {
        "untouched": data,
        "truncated": data[:-1],
        "cut mid-line": data[: len(data) // 2],
        "header only": lines[0] + b"\n",
        "one long line": data.replace(lines[9], lines[9] + b"x", 1),
        "long last line": data + b"y" * (longest + 5),
        "short last line": data + b"z",
        "empty lines": data.replace(b"\n", b"\n\n", 3),
    }
    target = tmp_path / "cut.jsonl"
    for name, blob in cases.items():
        target.write_bytes(blob)
        for block in (7, 64, 1000, 1 << 22):  # refills mid-line, lines longer than a block
            monkeypatch.setattr(verify, "_BLOCK", block)
            for level in (1, 3, WHOLE):
                got = _cuts(verify._file_ranges, target, level)
                assert got == _cuts(_reference_ranges, target, level), (name, block, level)


def test_scan_pool_answers_in_order_and_raises_what_a_worker_raised(
    export: tuple[Path, NoteVerifier, NoteVerifier],
) -> None:
    path = export[0]
    with path.open("rb") as f:
        f.readline()
        jobs = list(verify._file_ranges(f, str(path), 2, 4, 2))
    with ScanPool(2) as pool:
        for args in jobs:
            pool.submit(args)
        for args in jobs:
            assert pool.result() == _scan.scan_file_range(*args)
        pool.submit((str(path) + ".missing", 0, 1, 1, 0, 2, 2))
        with pytest.raises(FileNotFoundError):
            pool.result()
        header = len(path.read_bytes().split(b"\n")[0]) + 1
        pool.submit((str(path), 0, header, 1, 3, 1, 2))  # start not a multiple of 2**2
        with pytest.raises(ValueError, match="multiple"):
            pool.result()


@pytest.mark.parametrize("batch", [1, 200, 1000, 1 << 20])
def test_file_range_scan_in_batches_is_the_chunk_scan(
    export: tuple[Path, NoteVerifier, NoteVerifier],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    batch: int,
) -> None:
    """Scanning a file range a few lines at a time gives what scanning its lines at once does."""
    monkeypatch.setattr(_scan, "_BATCH", batch)
    lines = export[0].read_bytes().split(b"\n")[:-1]
    target = tmp_path / "r.jsonl"
    for name, mutated in [("untouched", lines), *_mutations(lines)[::7]]:
        target.write_bytes(b"\n".join(mutated) + b"\n")
        for level in (2, WHOLE):
            with target.open("rb") as f:
                f.readline()
                ranges = list(verify._file_ranges(f, str(target), 2, 1 << level, level))
            data = target.read_bytes()
            for args in ranges:
                _, offset, length, count, start, first, _ = args
                chunk = data[offset : offset + length - 1]
                expected = _scan.scan_chunk(start, first, chunk, level)
                assert _scan.scan_file_range(*args) == expected, (name, level, args)
                assert count == chunk.count(b"\n") + 1
