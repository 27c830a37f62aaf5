"""C2SP tlog-checkpoint v1.0.0 bodies, signed as C2SP signed notes.

A checkpoint body is three lines, each ending in a newline: the log's origin,
the tree size in decimal (no leading zeros), and the standard base64 root hash;
optional extension lines follow. The note is signed by the log's key, whose
name is the origin, so that ``golang.org/x/mod/sumdb/note`` and
``sumdb/tlog.ParseTree`` read govgate's checkpoints as they are.

Example::

    note = sign_checkpoint(Checkpoint("example.com/log", 3, root), signer)
    cp = open_checkpoint(note, [signer.verifier], origin="example.com/log")
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ledger._b64 import b64decode_strict, b64encode
from ledger.errors import NoteError
from ledger.merkle import HASH_SIZE
from ledger.note import NoteSigner, NoteVerifier, open_note, sign_note

__all__ = ["Checkpoint", "open_checkpoint", "parse_checkpoint_body", "sign_checkpoint"]

_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,19}")


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        if not self.origin or "\n" in self.origin:
            raise ValueError("origin must be one non-empty line")
        if len(self.root) != HASH_SIZE:
            raise ValueError("root must be a SHA-256 hash")
        lines = [self.origin, str(self.size), b64encode(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)


def parse_checkpoint_body(text: str) -> Checkpoint:
    """Parse a checkpoint body; raise :class:`NoteError` if it is malformed."""
    if not text.endswith("\n"):
        raise NoteError("checkpoint body must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("checkpoint body needs origin, size and root lines")
    origin, size, root_b64, *ext = lines
    if not origin:
        raise NoteError("checkpoint origin is empty")
    if not _SIZE_RE.fullmatch(size) or int(size) >= 2**64:
        raise NoteError(f"checkpoint size {size!r} is not a decimal uint64")
    try:
        root = b64decode_strict(root_b64, "checkpoint root")
    except ValueError as e:
        raise NoteError(str(e)) from e
    if len(root) != HASH_SIZE:
        raise NoteError("checkpoint root is not a 32-byte hash")
    if any(not line for line in ext):
        raise NoteError("checkpoint extension lines must not be empty")
    return Checkpoint(origin, int(size), root, tuple(ext))


def sign_checkpoint(cp: Checkpoint, signer: NoteSigner) -> str:
    """Sign ``cp`` as a note by the log key (whose name must be the origin)."""
    if signer.name != cp.origin:
        raise ValueError(f"log key {signer.name!r} cannot sign for origin {cp.origin!r}")
    return sign_note(cp.body(), [signer])


def open_checkpoint(
    note: str, verifiers: Sequence[NoteVerifier], *, origin: str | None = None
) -> Checkpoint:
    """Verify a checkpoint note and parse its body.

    The note must carry a valid signature by one of ``verifiers`` whose name is
    the checkpoint's origin (and equal to ``origin`` when given).
    """
    opened = open_note(note, verifiers)
    cp = parse_checkpoint_body(opened.text)
    if origin is not None and cp.origin != origin:
        raise NoteError(f"checkpoint origin {cp.origin!r} is not {origin!r}")
    if cp.origin not in opened.verified_by:
        raise NoteError(f"checkpoint for {cp.origin!r} is not signed by that log's key")
    return cp
