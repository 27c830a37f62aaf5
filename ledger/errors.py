"""Errors raised by the ledger package.

Two roots, one for each kind of failure an operator or auditor must tell apart::

    LedgerError                  anything the ledger refuses or cannot do
    ├── KeyFormatError           a key string or key file is malformed or unsafe
    ├── NoteError                a signed note is malformed or carries no valid signature
    ├── RecordError              an envelope or payload is malformed or its signature is bad
    ├── ProofError               an inclusion or consistency proof does not verify
    ├── CanonicalJSONError       a value has no RFC 8785 form (NaN, huge integer, ...)
    ├── StoreError               the store cannot read or write (fail closed)
    │   ├── StoreConflictError   another writer moved the log head under us
    │   └── StoreCorruptError    what the store holds contradicts itself
    ├── CheckpointError          a checkpoint would contradict one already signed
    ├── NotFoundError            an index, size or checkpoint that does not exist
    └── LedgerClosedError        the ledger is shut down or failed; appends are refused

    VerificationError            an export does not verify; names the first bad place

``VerificationError`` is kept apart from ``LedgerError`` because it is the
*expected* outcome of auditing a tampered export, not a malfunction.
"""

from __future__ import annotations

__all__ = [
    "CanonicalJSONError",
    "CheckpointError",
    "KeyFormatError",
    "LedgerClosedError",
    "LedgerError",
    "NotFoundError",
    "NoteError",
    "ProofError",
    "RecordError",
    "StoreConflictError",
    "StoreCorruptError",
    "StoreError",
    "VerificationError",
]


class LedgerError(Exception):
    """Root of everything the ledger refuses or cannot do."""

    # Its text may echo what a caller sent: traces carry only its type (gateway.spans).
    echoes_input = True


class KeyFormatError(LedgerError):
    """A key string or key file is malformed, or a key file is unsafe to use."""


class NoteError(LedgerError):
    """A signed note is malformed, or no trusted key signed it."""


class RecordError(LedgerError):
    """A record envelope or its payload is malformed, or its signature is bad."""


class ProofError(LedgerError):
    """An inclusion or consistency proof does not verify."""


class CanonicalJSONError(LedgerError):
    """A value cannot be written as RFC 8785 canonical JSON."""


class StoreError(LedgerError):
    """The store cannot read or write; callers must fail closed."""


class StoreConflictError(StoreError):
    """The log head moved between reading it and writing after it."""


class StoreCorruptError(StoreError):
    """What the store holds contradicts itself (missing node, broken chain)."""


class CheckpointError(LedgerError):
    """Signing this checkpoint would contradict one signed before."""


class NotFoundError(LedgerError):
    """The requested index, tree size or checkpoint does not exist."""


class ClaimedError(LedgerError):
    """A key the draft claims (or needs free) is already taken by another record.

    Claims are how replicas sharing one store agree without talking to each other:
    one request id, one decision per review round, one halt per halt version.
    """

    def __init__(self, key: str) -> None:
        super().__init__(f"{key!r} is already claimed by another record")
        self.key = key


class LedgerClosedError(LedgerError):
    """The ledger is closed or has failed; it accepts no more appends."""


class VerificationError(Exception):
    """An export failed verification.

    ``index`` is the first record index at which the export stops being what
    the log signed (``None`` when the failure is not tied to a record, e.g. a
    malformed header); ``line`` is the 1-based line of the export file.
    """

    def __init__(self, reason: str, *, index: int | None = None, line: int | None = None) -> None:
        where = []
        if index is not None:
            where.append(f"record {index}")
        if line is not None:
            where.append(f"line {line}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(f"{prefix}{reason}")
        self.reason = reason
        self.index = index
        self.line = line
