"""govgate's tamper-evident decision ledger.

Signed DSSE records over RFC 8785 payloads, hash-chained and kept in an
RFC 6962 Merkle tree; C2SP checkpoints; stores; export and offline
verification. This package imports no other govgate package.
"""

from ledger.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from ledger.datadir import DataDir, default_data_dir
from ledger.errors import LedgerError, VerificationError
from ledger.log import ConsistencyProof, InclusionProof, Ledger, LedgerConfig
from ledger.note import NoteSigner, NoteVerifier
from ledger.record import Draft, Record
from ledger.sqlite import SQLiteStore
from ledger.store import LedgerStore, RecordQuery

__all__ = [
    "Checkpoint",
    "ConsistencyProof",
    "DataDir",
    "Draft",
    "InclusionProof",
    "Ledger",
    "LedgerConfig",
    "LedgerError",
    "LedgerStore",
    "NoteSigner",
    "NoteVerifier",
    "Record",
    "RecordQuery",
    "SQLiteStore",
    "VerificationError",
    "default_data_dir",
    "open_checkpoint",
    "sign_checkpoint",
]
