"""C2SP signed-note v1.0.0 with Ed25519 keys, and the key strings that go with it.

A note is UTF-8 text ending in a newline, a blank line, then one line per
signature: ``— <key name> <base64(4-byte key hash ‖ signature)>``. The key hash
is the first four bytes of SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key), read as a
big-endian integer. Keys are written as Go's ``golang.org/x/mod/sumdb/note``
writes them, so its tools read govgate's keys and notes unchanged:

* verifier key ``<name>+<hex8>+<base64(0x01 ‖ public key)>``;
* signer key ``PRIVATE+KEY+<name>+<hex8>+<base64(0x01 ‖ seed)>``.

This module only checks bytes in memory; it neither reads files nor logs.
Ed25519 runs in libsodium (PyNaCl), which releases the GIL, so callers may
verify from several threads at once.

Example::

    signer = NoteSigner.generate("example.com/log")
    note = sign_note("hello\\n", [signer])
    assert open_note(note, [signer.verifier]).text == "hello\\n"
"""

from __future__ import annotations

import base64
import functools
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions

from ledger._b64 import b64decode_strict
from ledger.errors import KeyFormatError, NoteError

__all__ = [
    "ALG_ED25519",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "key_hash",
    "open_note",
    "sign_note",
]

ALG_ED25519 = 0x01
_SIG_PREFIX = "\u2014 "  # em dash and space
_MAX_SIGNATURES = 100


def _check_name(name: str) -> None:
    if not name:
        raise KeyFormatError("key name is empty")
    if "+" in name or any(c.isspace() for c in name):
        raise KeyFormatError(f"key name {name!r} contains '+' or white space")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise KeyFormatError(f"key name {name!r} is not valid UTF-8") from e


def key_hash(name: str, public_key: bytes) -> int:
    """The signed-note key hash: SHA-256(name ‖ "\\n" ‖ 0x01 ‖ key)[:4], big-endian."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _parse_key_string(s: str, *, private: bool) -> tuple[str, int, bytes]:
    what = "signer key" if private else "verifier key"
    if private:
        if not s.startswith("PRIVATE+KEY+"):
            raise KeyFormatError(f"{what} must look like PRIVATE+KEY+name+hash+key")
        s = s[len("PRIVATE+KEY+") :]
    parts = s.split("+", 2)  # base64 may itself contain '+'
    if len(parts) != 3:
        raise KeyFormatError(
            f"{what} must look like {'PRIVATE+KEY+' if private else ''}name+hash+key"
        )
    name, hash_hex, key_b64 = parts
    _check_name(name)
    if len(hash_hex) != 8 or any(c not in "0123456789abcdef" for c in hash_hex):
        raise KeyFormatError(f"{what} hash {hash_hex!r} is not 8 lowercase hex digits")
    try:
        raw = b64decode_strict(key_b64, f"{what} material")
    except ValueError as e:
        raise KeyFormatError(str(e)) from e
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise KeyFormatError(f"{what} is not an Ed25519 key (algorithm byte 0x01, 32 bytes)")
    return name, int(hash_hex, 16), raw[1:]


@dataclass(frozen=True)
class NoteVerifier:
    """A named Ed25519 public key that checks note signatures."""

    name: str
    key_hash: int
    public_key: bytes

    @classmethod
    def from_key_string(cls, s: str) -> NoteVerifier:
        name, claimed, pub = _parse_key_string(s, private=False)
        if key_hash(name, pub) != claimed:
            raise KeyFormatError(f"verifier key hash {claimed:08x} does not match the key")
        return cls(name, claimed, pub)

    @property
    def key_string(self) -> str:
        material = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_hash:08x}+{material}"

    @functools.cached_property
    def key_id(self) -> str:
        """The 8-hex-digit key hash: how records and envelopes name this key."""
        return f"{self.key_hash:08x}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        if len(signature) != 64:
            return False
        try:
            nacl.bindings.crypto_sign_open(signature + message, self.public_key)
        except nacl.exceptions.BadSignatureError:
            return False
        return True


class NoteSigner:
    """A named Ed25519 private key. Its repr never shows the key."""

    __slots__ = ("_secret", "verifier")

    def __init__(self, name: str, seed: bytes) -> None:
        _check_name(name)
        if len(seed) != 32:
            raise KeyFormatError("an Ed25519 seed is 32 bytes")
        public, self._secret = nacl.bindings.crypto_sign_seed_keypair(seed)
        self.verifier = NoteVerifier(name, key_hash(name, public), public)

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, nacl.bindings.randombytes(32))

    @classmethod
    def from_key_string(cls, s: str) -> NoteSigner:
        name, claimed, seed = _parse_key_string(s, private=True)
        signer = cls(name, seed)
        if signer.key_hash != claimed:
            raise KeyFormatError(f"signer key hash {claimed:08x} does not match the key")
        return signer

    @property
    def name(self) -> str:
        return self.verifier.name

    @property
    def key_hash(self) -> int:
        return self.verifier.key_hash

    @property
    def key_id(self) -> str:
        return self.verifier.key_id

    @property
    def verifier_key(self) -> str:
        return self.verifier.key_string

    def private_key_string(self) -> str:
        """The secret in Go's note signer format: write it only to a 0600 file."""
        material = base64.b64encode(bytes([ALG_ED25519]) + self._secret[:32]).decode()
        return f"PRIVATE+KEY+{self.name}+{self.key_hash:08x}+{material}"

    def sign(self, message: bytes) -> bytes:
        return bytes(nacl.bindings.crypto_sign(message, self._secret)[:64])

    def __repr__(self) -> str:
        return f"NoteSigner(name={self.name!r}, key_id={self.key_id!r})"


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_hash: int
    signature: bytes


@dataclass(frozen=True)
class Note:
    """An opened note: its text, every signature line, and who verified it."""

    text: str
    signatures: tuple[NoteSignature, ...]
    verified_by: tuple[str, ...]


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("note text contains a control character")


def sign_note(text: str, signers: Sequence[NoteSigner]) -> str:
    """Sign ``text`` with every signer; return the note."""
    _check_text(text)
    if not signers:
        raise ValueError("a note needs at least one signer")
    msg = text.encode("utf-8")
    lines = []
    for s in signers:
        blob = struct.pack(">I", s.key_hash) + s.sign(msg)
        lines.append(f"{_SIG_PREFIX}{s.name} {base64.b64encode(blob).decode()}\n")
    return text + "\n" + "".join(lines)


def open_note(note: str, verifiers: Sequence[NoteVerifier]) -> Note:
    """Parse ``note`` and check it: at least one of ``verifiers`` must have signed it.

    Signatures by keys not in ``verifiers`` are kept but not checked; a
    signature by a known key that does not verify is an error, not ignored.
    """
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    _check_text(text)
    if any(ord(c) < 0x20 and c != "\n" for c in sig_block):
        raise NoteError("signature block contains a control character")
    if not sig_block.endswith("\n"):
        raise NoteError("signature block must end with a newline")
    msg = text.encode("utf-8")
    known = {(v.name, v.key_hash): v for v in verifiers}
    sigs: list[NoteSignature] = []
    verified: list[str] = []
    for line in sig_block[:-1].split("\n"):
        if not line.startswith(_SIG_PREFIX):
            raise NoteError(f"malformed signature line {line!r}")
        name, _, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not b64 or " " in b64:
            raise NoteError(f"malformed signature line {line!r}")
        try:
            _check_name(name)
        except KeyFormatError as e:
            raise NoteError(f"bad key name in signature line: {e}") from e
        try:
            blob = b64decode_strict(b64, "signature")
        except ValueError as e:
            raise NoteError(str(e)) from e
        if len(blob) < 5:
            raise NoteError("signature is too short")
        sig = NoteSignature(name, int.from_bytes(blob[:4], "big"), blob[4:])
        sigs.append(sig)
        v = known.get((sig.name, sig.key_hash))
        if v is not None:
            if not v.verify(msg, sig.signature):
                raise NoteError(f"invalid signature by {name}+{sig.key_hash:08x}")
            if name not in verified:
                verified.append(name)
    if len(sigs) > _MAX_SIGNATURES:
        raise NoteError(f"note has more than {_MAX_SIGNATURES} signatures")
    if not verified:
        raise NoteError("note is not signed by any trusted key")
    return Note(text, tuple(sigs), tuple(verified))
