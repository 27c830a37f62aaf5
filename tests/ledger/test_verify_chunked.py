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
from pathlib import Path

import pytest

from ledger import DataDir, Draft, LedgerConfig, NoteVerifier
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
