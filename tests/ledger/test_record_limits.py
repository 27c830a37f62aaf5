"""A record the ledger accepts is one an export verifier can read back.

The verifier reads an export line by line, none longer than 16 MiB, so the
writer refuses a record whose envelope could be longer: a ledger that was
written but can never be verified is worse than a refused append.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import orjson
import pytest

from ledger import DataDir, Draft, LedgerConfig, NoteSigner
from ledger.errors import RecordError, VerificationError
from ledger.export import EXPORT_FORMAT, export_ledger
from ledger.record import MAX_PAYLOAD_BYTES, prepare
from ledger.verify import _MAX_LINE, verify_export, verify_stream


def test_a_body_too_big_for_a_record_is_refused() -> None:
    with pytest.raises(RecordError, match=f"at most {MAX_PAYLOAD_BYTES}"):
        prepare(Draft("note", {"blob": "x" * MAX_PAYLOAD_BYTES}))
    with pytest.raises(RecordError, match="bytes of canonical JSON"):
        prepare(Draft("note", {"many": ["y" * 1000] * (MAX_PAYLOAD_BYTES // 1000)}))


def test_the_largest_record_verifies_in_both_modes(tmp_path: Path) -> None:
    d = DataDir(tmp_path / "data")
    signer = d.generate_key("limits.test/log")
    # As large as a record may be: the fields around the body take the rest.
    fill = MAX_PAYLOAD_BYTES - 400
    prepare(Draft("note", {"blob": "x" * fill}))  # accepted

    async def write() -> None:
        async with d.open_ledger(LedgerConfig(checkpoint_every=0, checkpoint_interval=0)) as log:
            rec = await log.append(Draft("note", {"blob": "x" * fill}))
            assert len(rec.envelope) < _MAX_LINE
            await log.checkpoint()
            await export_ledger(log, tmp_path / "export.jsonl")

    asyncio.run(write())
    for signatures in (True, False):
        result = verify_export(tmp_path / "export.jsonl", signer.verifier, signatures=signatures)
        assert result.size == 2


def test_a_line_without_end_is_refused_at_the_limit() -> None:
    """The verifier never reads more of a line than one byte past the longest allowed."""

    class Counting(io.BytesIO):
        most = 0

        def readline(self, size: int | None = -1) -> bytes:
            line = super().readline(size)
            Counting.most = max(Counting.most, len(line))
            return line

        def __next__(self) -> bytes:  # iterating reads whole lines
            line = super().__next__()
            Counting.most = max(Counting.most, len(line))
            return line

    key = NoteSigner.generate("limits.test/log").verifier
    header = orjson.dumps({"format": EXPORT_FORMAT, "origin": key.name, "size": 1},
                          option=orjson.OPT_SORT_KEYS)  # fmt: skip
    data = Counting(header + b"\n" + b"y" * (2 * _MAX_LINE))
    with pytest.raises(VerificationError, match="line longer than") as info:
        verify_stream(data, key, signatures=True)
    assert info.value.line == 2
    assert Counting.most <= _MAX_LINE + 1
