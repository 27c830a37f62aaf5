"""Ledger exports: one JSON-lines file an auditor verifies with only a public key.

Format ``govgate-ledger-export/1``, one JSON value per line:

1. a header ``{"format":"govgate-ledger-export/1","origin":...,"size":N}``;
2. each record's stored envelope bytes, exactly as stored (RFC 8785 JSON has no
   newlines, so the line *is* the Merkle leaf), in index order;
3. after the record that brings the tree to size ``s``, one line
   ``{"checkpoint":"<signed note>"}`` for each checkpoint signed at size ``s``.

The export ends with a checkpoint at its full size (it signs one if needed),
so a truncated export fails verification. Records and checkpoints are read
from the store in pages: memory stays flat whatever the ledger's size.

Example::

    async with data_dir.open_ledger() as log:
        summary = await export_ledger(log, Path("ledger.jsonl"))
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from ledger.log import Ledger

__all__ = ["EXPORT_FORMAT", "ExportSummary", "export_ledger"]

EXPORT_FORMAT = "govgate-ledger-export/1"
_PAGE = 10_000


@dataclass(frozen=True)
class ExportSummary:
    path: Path
    size: int
    checkpoints: int
    checkpoint_note: str


async def export_ledger(
    ledger: Ledger,
    out: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> ExportSummary:
    """Write every record up to a freshly signed checkpoint, plus all checkpoints.

    The file is written under a temporary name and renamed into place only
    when complete and fsync'd, so a crashed export never looks finished.
    """
    final = await ledger.checkpoint()
    size = final.size
    checkpoints = await ledger.store.checkpoints(size)
    by_size: dict[int, list[str]] = {}
    for cp in checkpoints:
        by_size.setdefault(cp.size, []).append(cp.note)
    tmp = out.with_name(out.name + ".partial")
    with tmp.open("wb") as f:
        header = {"format": EXPORT_FORMAT, "origin": ledger.origin, "size": size}
        f.write(orjson.dumps(header, option=orjson.OPT_SORT_KEYS) + b"\n")
        for start in range(0, size, _PAGE):
            end = min(start + _PAGE, size)
            lines = []
            for offset, env in enumerate(await ledger.store.envelopes(start, end)):
                lines.append(env)
                for note in by_size.get(start + offset + 1, ()):
                    lines.append(orjson.dumps({"checkpoint": note}))
            f.write(b"\n".join(lines) + b"\n")
            if progress:
                progress(end, size)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return ExportSummary(out, size, len(checkpoints), final.note)
