"""Exports forged with the trusted public key alone fail both kinds of verification.

Fast verification (no record signatures) still checks the signature of every
``key`` record: the key that signs the checkpoints is trusted only through the
genesis and the rotations that lead to it. A forger who names the trusted key
in a genesis, or in a rotation added after a genuine log, and then rotates to a
key of their own, could otherwise sign checkpoints over anything.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from ledger import DataDir, Draft, LedgerConfig
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.errors import VerificationError
from ledger.export import EXPORT_FORMAT, export_ledger
from ledger.merkle import Frontier
from ledger.note import NoteSigner, NoteVerifier
from ledger.record import ZERO_HASH, Record, open_record, seal
from ledger.verify import verify_export

ORIGIN = "forgery.test/log"


@dataclass
class Impostor:
    """Signs with the forger's key while naming the trusted key's id, as a forger would."""

    named: NoteVerifier
    real: NoteSigner

    @property
    def key_id(self) -> str:
        return self.named.key_id

    def sign(self, message: bytes) -> bytes:
        return self.real.sign(message)


def _write(path: Path, records: list[Record], note: str, head: bytes | None = None) -> None:
    header = head or orjson.dumps(
        {"format": EXPORT_FORMAT, "origin": ORIGIN, "size": len(records)},
        option=orjson.OPT_SORT_KEYS,
    )
    lines = [header, *(r.envelope for r in records), orjson.dumps({"checkpoint": note})]
    path.write_bytes(b"\n".join(lines) + b"\n")


def _signed_root(records: list[Record], signer: NoteSigner) -> str:
    frontier = Frontier()
    for r in records:
        frontier.append(r.leaf_hash)
    return sign_checkpoint(Checkpoint(ORIGIN, len(records), frontier.root()), signer)


def _rotation_to(forger: NoteSigner, impostor: Impostor, after: Record) -> Record:
    body = {"key": forger.verifier_key, "key_id": forger.key_id, "reason": "rotation"}
    return seal(Draft("key", body), index=after.index + 1, prev=after.leaf_hash,
                time=after.time, signer=impostor)  # type: ignore[arg-type]  # fmt: skip


def _verdicts(path: Path, key: NoteVerifier) -> list[int | None]:
    out: list[int | None] = []
    for signatures in (True, False):
        with pytest.raises(VerificationError) as info:
            verify_export(path, key, signatures=signatures)
        out.append(info.value.index)
    return out


def test_a_log_forged_from_the_public_key_alone_fails(tmp_path: Path):
    trusted = NoteSigner.generate(ORIGIN).verifier
    forger = NoteSigner.generate(ORIGIN)
    impostor = Impostor(trusted, forger)
    genesis_body = {"key": trusted.key_string, "key_id": trusted.key_id, "reason": "genesis"}
    genesis = seal(Draft("key", genesis_body), index=0, prev=ZERO_HASH,
                   time="2026-01-01T00:00:00.000000Z", signer=impostor)  # type: ignore[arg-type]  # fmt: skip
    rotation = _rotation_to(forger, impostor, genesis)
    forged = seal(Draft("decision", {"approved": "everything"}), index=2,
                  prev=rotation.leaf_hash, time=rotation.time, signer=forger)  # fmt: skip
    records = [genesis, rotation, forged]
    path = tmp_path / "forged.jsonl"
    _write(path, records, _signed_root(records, forger))
    assert _verdicts(path, trusted) == [0, 0]


def test_a_rotation_forged_onto_a_genuine_log_fails_where_it_starts(tmp_path: Path):
    d = DataDir(tmp_path / "data")
    signer = d.generate_key(ORIGIN)

    async def build() -> None:
        async with d.open_ledger(LedgerConfig(checkpoint_every=0, checkpoint_interval=0)) as log:
            for i in range(6):
                await log.append(Draft("note", {"i": i}))
            await log.checkpoint()
            await export_ledger(log, tmp_path / "genuine.jsonl")

    asyncio.run(build())
    genuine = tmp_path / "genuine.jsonl"
    assert verify_export(genuine, signer.verifier, signatures=False).size == 7
    lines = genuine.read_bytes().splitlines()
    records = [open_record(line).record for line in lines if line.startswith(b'{"payload"')]
    forger = NoteSigner.generate(ORIGIN)
    rotation = _rotation_to(forger, Impostor(signer.verifier, forger), records[-1])
    forged = seal(Draft("decision", {"approved": "everything"}), index=rotation.index + 1,
                  prev=rotation.leaf_hash, time=rotation.time, signer=forger)  # fmt: skip
    longer = [*records, rotation, forged]
    header = lines[0].replace(b'"size":7', b'"size":9')
    assert header != lines[0]
    path = tmp_path / "forged.jsonl"
    _write(path, longer, _signed_root(longer, forger), head=header)
    assert _verdicts(path, signer.verifier) == [rotation.index, rotation.index]


@pytest.mark.parametrize("size", ["true", "false", "-1", "3.0", '"3"', "null"])
def test_a_header_size_that_is_not_a_count_is_refused_at_the_header(tmp_path: Path, size: str):
    trusted = NoteSigner.generate(ORIGIN)
    path = tmp_path / "export.jsonl"
    header = b'{"format":"%s","origin":"%s","size":%s}' % (
        EXPORT_FORMAT.encode(),
        ORIGIN.encode(),
        size.encode(),
    )
    path.write_bytes(header + b"\n")
    for signatures in (True, False):
        with pytest.raises(VerificationError, match="header must be") as info:
            verify_export(path, trusted.verifier, signatures=signatures)
        assert info.value.line == 1


def test_a_checkpoint_line_repeated_is_not_the_logs(tmp_path: Path) -> None:
    """The log signs one checkpoint per size: a copied checkpoint line (which would count
    as one more signed checkpoint, in reports too) fails verification in both modes, at
    any cut of the file into ranges."""
    data = DataDir(tmp_path / "data")
    data.generate_key("test.example/log")

    async def build() -> None:
        async with data.open_ledger(LedgerConfig(checkpoint_interval=0, checkpoint_every=0)) as log:
            for i in range(20):
                await log.append(Draft("note", {"i": i}))
                if i in (5, 12):
                    await log.checkpoint()
            await export_ledger(log, tmp_path / "x.jsonl")

    asyncio.run(build())
    lines = (tmp_path / "x.jsonl").read_bytes().splitlines(keepends=True)
    verifier = data.signer().verifier
    assert verify_export(tmp_path / "x.jsonl", verifier).checkpoints == 3
    at = next(k for k, line in enumerate(lines) if line.startswith(b'{"checkpoint"'))
    copied = tmp_path / "copied.jsonl"
    copied.write_bytes(b"".join([*lines[: at + 1], lines[at], *lines[at + 1 :]]))
    for signatures in (True, False):
        for range_bytes in (1 << 20, 600):
            with pytest.raises(VerificationError, match="checkpoints repeat a size"):
                verify_export(copied, verifier, signatures=signatures, range_bytes=range_bytes)
