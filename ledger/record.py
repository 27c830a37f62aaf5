"""Ledger records: DSSE envelopes over RFC 8785 payloads, signed with Ed25519.

A record is stored as the canonical JSON of its DSSE envelope::

    {"payload":"<base64 JCS payload>",
     "payloadType":"application/vnd.govgate.record+json",
     "signatures":[{"keyid":"<hex8>","sig":"<base64 Ed25519 over PAE>"}]}

and those exact bytes are the record's Merkle leaf. The payload is::

    {"actor", "body", "decision_id", "index", "key_id", "kind", "prev",
     "target", "time", "trace_id"}

where ``prev`` is the lowercase hex RFC 6962 leaf hash of the previous record
(64 zeros for index 0), ``time`` is RFC 3339 UTC with microseconds, ``key_id`` is
the signing key's signed-note key hash (8 hex digits) and ``trace_id`` the W3C
trace id (32 hex digits) or empty. ``actor``, ``target`` and ``decision_id`` are
optional (empty strings) and exist so that auditors can query by them.

Parsing is strict: an envelope that is not byte-for-byte its own canonical
form is refused, and the signature covers the payload bytes exactly, so a
change to any byte of a record is caught at that record (when signatures are
checked) and not only later, at the next record or checkpoint. The payload's
own canonical form is the writer's duty (:func:`seal` always writes RFC 8785);
re-canonicalising it on every read would double the verifier's cost and catch
nothing the signature does not.

Example::

    rec = seal(Draft("halt", {"scope": "env=prod"}), index=0, prev=ZERO_HASH,
               time=utc_now(), signer=signer)
    assert open_record(rec.envelope).payload["kind"] == "halt"
"""

from __future__ import annotations

import binascii
import contextlib
import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ledger._b64 import b64decode_strict
from ledger.canonical import canonical_json, canonical_str
from ledger.errors import CanonicalJSONError, RecordError
from ledger.merkle import leaf_hash
from ledger.note import NoteSigner, NoteVerifier

__all__ = [
    "KINDS",
    "MAX_PAYLOAD_BYTES",
    "PAYLOAD_TYPE",
    "ZERO_HASH",
    "Draft",
    "OpenedRecord",
    "Prepared",
    "Record",
    "format_time",
    "hmac_value",
    "open_record",
    "pae",
    "parse_time",
    "prepare",
    "seal",
    "seal_chain",
    "sealed_record",
    "time_bound",
    "utc_now",
]

PAYLOAD_TYPE = "application/vnd.govgate.record+json"
_PAYLOAD_TYPE_BYTES = PAYLOAD_TYPE.encode()
ZERO_HASH = bytes(32)

#: Kinds govgate writes itself. Other kinds are allowed if they match ``_KIND_RE``.
KINDS = frozenset(
    {
        "decision",
        "approval",
        "denial",
        "expiry",
        "outcome",
        "rollback",
        "halt",
        "resume",
        "policy",
        "model",
        "key",
        "incident",
        "reconcile",
        "note",
    }
)

_KIND_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_HEX8_RE = re.compile(r"[0-9a-f]{8}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_TRACE_RE = re.compile(r"(?:[0-9a-f]{32})?")
_TIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
_PAYLOAD_KEYS = frozenset(
    {
        "actor",
        "body",
        "decision_id",
        "index",
        "key_id",
        "kind",
        "prev",
        "target",
        "time",
        "trace_id",
    }
)
_PAYLOAD_KEYS_MSG = f"payload must have exactly the fields {', '.join(sorted(_PAYLOAD_KEYS))}"
_MAX_TEXT = 1024  # actor, target and decision_id are identifiers, not documents
HMAC_PREFIX = "hmac-sha256:"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature covers."""
    t = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_time(t: dt.datetime) -> str:
    """RFC 3339 UTC with exactly six fractional digits, e.g. ``2026-11-25T15:00:00.000000Z``."""
    if t.tzinfo is None:
        raise ValueError("record times must be timezone-aware")
    # isoformat, not strftime: strftime("%Y") writes the year 999 as "999" on Linux, which
    # would compare after "2026" as a string.
    return t.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


_FRACTION = re.compile(r"[.,]([0-9]+)")


def time_bound(s: str) -> str:
    """An RFC 3339 time given as a query bound (``since``, inclusive; ``until``, exclusive)
    in the records' own form, which compares as a string. A fraction finer than the
    records' microseconds is rounded up: a record of the same microsecond is before it."""
    t = parse_time(s)
    m = _FRACTION.search(s)
    if m is not None and m.group(1)[6:].strip("0"):
        # Within the last microsecond there is, it stays there: no record is later.
        with contextlib.suppress(OverflowError):
            t += dt.timedelta(microseconds=1)
    return format_time(t)


def parse_time(s: str) -> dt.datetime:
    """Parse an RFC 3339 time (any offset, optional fraction) to an aware UTC datetime."""
    try:
        t = dt.datetime.fromisoformat(s.replace("z", "Z"))
    except ValueError as e:
        raise ValueError(f"{s!r} is not an RFC 3339 time") from e
    if t.tzinfo is None:
        raise ValueError(f"{s!r} has no time zone; use Z or an offset")
    try:
        return t.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the year 1 in UTC
        raise ValueError(f"{s!r} is out of range in UTC") from None


def hmac_value(salt: bytes, value: Any) -> str:
    """Salted HMAC of a JSON value, as stored in place of a sensitive field.

    Like Vault's audit log: an auditor who knows a candidate value and holds
    the salt can check it matches; a reader of the ledger alone learns nothing.
    """
    mac = hmac.new(salt, canonical_json(value), hashlib.sha256).hexdigest()
    return HMAC_PREFIX + mac


def _seal_sensitive(body: Mapping[str, Any], paths: Sequence[str], salt: bytes) -> dict[str, Any]:
    """``body`` with the value at each dotted path replaced by its salted HMAC.

    A path steps through objects by key and through lists by position
    (``"creds.0.password"``). One that names nothing in the body is refused: a
    misspelt path would otherwise store the secret in clear, for good."""
    out: dict[str, Any] = _deep_copy(body)
    for path in paths:
        node: Any = out
        parts = path.split(".")
        for depth, part in enumerate(parts):
            if isinstance(node, dict) and part in node:
                key: str | int = part
            elif (
                isinstance(node, list)
                and part.isascii()  # str.isdigit() is true for "²", which int() refuses
                and part.isdigit()
                and len(part) <= 18
                and int(part) < len(node)
            ):
                key = int(part)
            else:
                where = ".".join(parts[:depth]) or "the body"
                raise RecordError(
                    f"sensitive path {path!r} names nothing in the body ({where} has no {part!r})"
                )
            if depth == len(parts) - 1:
                node[key] = hmac_value(salt, node[key])
            else:
                node = node[key]
    return out


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_deep_copy(v) for v in value]
    return value


@dataclass(frozen=True)
class Draft:
    """What a writer asks to append; the ledger adds index, time, chain and signature.

    ``sensitive`` lists dotted paths in ``body`` (``"parameters.password"``, or
    ``"creds.0.password"`` through a list) whose values are replaced by salted HMACs
    before anything is stored; a path that names nothing is refused (:class:`RecordError`).

    ``claims`` are keys this record takes for good (a request id, a review round):
    the store refuses the append (:class:`~ledger.errors.ClaimedError`) if any is
    taken already. ``unclaimed`` are keys that must still be free, without taking
    them (a decision that runs needs the next halt's key free). Both are checked in
    the append's transaction; neither is part of the signed payload.
    """

    kind: str
    body: Mapping[str, Any]
    trace_id: str = ""
    actor: str = ""
    target: str = ""
    decision_id: str = ""
    sensitive: tuple[str, ...] = field(default=())
    claims: tuple[str, ...] = field(default=())
    unclaimed: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not _KIND_RE.fullmatch(self.kind):
            raise RecordError(f"kind {self.kind!r} must match {_KIND_RE.pattern}")
        if not isinstance(self.body, Mapping):
            raise RecordError("body must be a JSON object")
        if not _TRACE_RE.fullmatch(self.trace_id) or self.trace_id == "0" * 32:
            raise RecordError("trace_id must be 32 lowercase hex digits (not all zero) or empty")
        for name in ("actor", "target", "decision_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > _MAX_TEXT:
                raise RecordError(f"{name} must be a string of at most {_MAX_TEXT} characters")
        for key in (*self.claims, *self.unclaimed):
            if not isinstance(key, str) or not 0 < len(key) <= _MAX_TEXT:
                raise RecordError(f"claim keys must be 1..{_MAX_TEXT} characters")


@dataclass(frozen=True)
class Record:
    """A sealed record: its stored bytes, leaf hash, and the payload fields."""

    index: int
    time: str
    kind: str
    prev: bytes
    key_id: str
    trace_id: str
    actor: str
    target: str
    decision_id: str
    body: Mapping[str, Any]
    envelope: bytes
    leaf_hash: bytes

    def to_json(self) -> dict[str, Any]:
        """The record as auditors read it (``govgate ledger query``)."""
        return {
            "index": self.index,
            "time": self.time,
            "kind": self.kind,
            "actor": self.actor,
            "target": self.target,
            "decision_id": self.decision_id,
            "trace_id": self.trace_id,
            "key_id": self.key_id,
            "prev": self.prev.hex(),
            "leaf_hash": self.leaf_hash.hex(),
            "body": self.body,
        }


@dataclass(frozen=True)
class Prepared:
    """A draft with its body canonicalised, ready to be sealed at any index.

    Canonicalising the body is the costly part of sealing; :func:`prepare` does
    it before the record reaches the sequencer, so the store's transaction only
    splices in index, time and chain, signs and hashes.
    """

    draft: Draft
    body: Mapping[str, Any]
    head: bytes  # '{"actor":…,"body":…,"decision_id":…,"index":'
    kind_json: bytes
    target_json: bytes

    @property
    def parts(self) -> tuple[bytes, bytes, bytes, str]:
        """What :func:`seal_chain` needs: head, kind and target JSON, trace id."""
        return (self.head, self.kind_json, self.target_json, self.draft.trace_id)


def prepare(draft: Draft, salt: bytes | None = None) -> Prepared:
    """Seal sensitive fields and canonicalise ``draft`` (:class:`RecordError` if impossible)."""
    if draft.sensitive and salt is None:
        raise ValueError("sealing sensitive fields needs the ledger's HMAC salt")
    try:
        body = (
            _seal_sensitive(draft.body, draft.sensitive, salt)
            if salt and draft.sensitive
            else draft.body
        )
        head = b'{"actor":%b,"body":%b,"decision_id":%b,"index":' % (
            canonical_str(draft.actor),
            canonical_json(body),
            canonical_str(draft.decision_id),
        )
        prepared = Prepared(
            draft, body, head, canonical_str(draft.kind), canonical_str(draft.target)
        )
    except CanonicalJSONError as e:
        raise RecordError(f"record body cannot be canonicalised: {e}") from e
    size = len(head) + len(prepared.kind_json) + len(prepared.target_json) + len(draft.trace_id)
    if size > MAX_PAYLOAD_BYTES:
        # Its envelope (base64) would be longer than a verifier reads as one line.
        raise RecordError(
            f"record is {size} bytes of canonical JSON; at most {MAX_PAYLOAD_BYTES} fit a record"
        )
    return prepared


# The longest payload a record may have: its envelope (base64, about 4/3 of it) then
# stays well within the longest line an export verifier reads (16 MiB).
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024


def _envelope(payload_b64: bytes, key_id: bytes, sig_b64: bytes) -> bytes:
    # RFC 8785 form of the DSSE envelope: its fields never need JSON escaping.
    return b'{"payload":"%b","payloadType":"%b","signatures":[{"keyid":"%b","sig":"%b"}]}' % (
        payload_b64,
        _PAYLOAD_TYPE_BYTES,
        key_id,
        sig_b64,
    )


def seal(
    item: Draft | Prepared,
    *,
    index: int,
    prev: bytes,
    time: dt.datetime | str,
    signer: NoteSigner,
    salt: bytes | None = None,
) -> Record:
    """Canonicalise (unless prepared), chain and sign one record.

    The payload is spliced from canonical pieces in RFC 8785 key order; the
    tests hold it equal to ``canonical_json`` of the whole payload.
    """
    p = item if isinstance(item, Prepared) else prepare(item, salt)
    when = time if isinstance(time, str) else format_time(time)
    ((envelope, leaf),) = seal_chain([p.parts], [signer], index=index, prev=prev, time=when)
    return sealed_record(p, index=index, prev=prev, time=when, key_id=signer.key_id,
                         envelope=envelope, leaf=leaf)  # fmt: skip


def sealed_record(
    p: Prepared, *, index: int, prev: bytes, time: str, key_id: str, envelope: bytes, leaf: bytes
) -> Record:
    """The :class:`Record` for an envelope that :func:`seal_chain` made from ``p``."""
    d = p.draft
    return Record(
        index=index,
        time=time,
        kind=d.kind,
        prev=prev,
        key_id=key_id,
        trace_id=d.trace_id,
        actor=d.actor,
        target=d.target,
        decision_id=d.decision_id,
        body=p.body,
        envelope=envelope,
        leaf_hash=leaf,
    )


def seal_chain(
    parts: Sequence[tuple[bytes, bytes, bytes, str]],
    signers: Sequence[NoteSigner],
    *,
    index: int,
    prev: bytes,
    time: str,
) -> list[tuple[bytes, bytes]]:
    """Sign consecutive records: (envelope, leaf hash) for each of ``parts``
    (:attr:`Prepared.parts`), the first at ``index`` after ``prev``, record ``k``
    signed by ``signers[k]``.

    Each record names the last one's leaf hash, so this is one record after
    another; it needs only the pieces, not the drafts, and so runs as well in a
    worker process (:func:`seal_chain_task`).
    """
    out: list[tuple[bytes, bytes]] = []
    when = time.encode()
    for (head, kind_json, target_json, trace_id), signer in zip(parts, signers, strict=True):
        key_id = signer.key_id.encode()
        payload = (
            b'%b%d,"key_id":"%b","kind":%b,"prev":"%b","target":%b,"time":"%b","trace_id":"%b"}'
            % (head, index, key_id, kind_json, prev.hex().encode(), target_json, when,
               trace_id.encode())
        )  # fmt: skip
        sig = signer.sign(pae(PAYLOAD_TYPE, payload))
        envelope = _envelope(
            binascii.b2a_base64(payload, newline=False),
            key_id,
            binascii.b2a_base64(sig, newline=False),
        )
        prev = leaf_hash(envelope)
        out.append((envelope, prev))
        index += 1
    return out


_task_signers: dict[str, NoteSigner] = {}
_task_chain_end: dict[str, tuple[int, bytes]] = {}  # "end": (next index, last leaf hash)


def seal_chain_task(
    key: str,
    parts: Sequence[tuple[bytes, bytes, bytes, str]],
    index: int,
    prev: bytes | None,
    time: str,
    remember: bool = True,
) -> list[tuple[bytes, bytes]]:
    """:func:`seal_chain` with one key, in a worker process (``ledger._workers``); ``key``
    is the signer's private key string, sent over the pipe from its parent.

    ``prev`` None continues the chain this process sealed last (with ``remember``),
    which must end just before ``index``: its parent can then send the next chain
    before the answer to the last one has come back, and this process never waits
    for it. A chain sealed with ``remember`` False is not one to continue."""
    signer = _task_signers.get(key)
    if signer is None:
        _task_signers.clear()  # one key at a time; a rotation replaces it
        signer = _task_signers[key] = NoteSigner.from_key_string(key)
    if not remember:
        if prev is None:
            raise RuntimeError("a chain not to be remembered must name its previous hash")
        return seal_chain(parts, [signer] * len(parts), index=index, prev=prev, time=time)
    end = _task_chain_end.pop("end", None)  # a chain that fails is not continued
    if prev is None:
        if end is None or end[0] != index:
            raise RuntimeError(f"no chain sealed here ends before index {index}")
        prev = end[1]
    chain = seal_chain(parts, [signer] * len(parts), index=index, prev=prev, time=time)
    _task_chain_end["end"] = (index + len(chain), chain[-1][1] if chain else prev)
    return chain


@dataclass(frozen=True)
class OpenedRecord:
    """An envelope taken apart, not yet checked against any key."""

    record: Record
    payload: dict[str, Any]
    signed_bytes: bytes
    signature: bytes

    def verify(self, verifier: NoteVerifier) -> bool:
        return verifier.key_id == self.record.key_id and verifier.verify(
            self.signed_bytes, self.signature
        )


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise RecordError(msg)


def open_record(envelope: bytes) -> OpenedRecord:
    """Parse stored envelope bytes strictly; raise :class:`RecordError` if malformed.

    Checks shape, types and canonical form, not the signature (see
    :meth:`OpenedRecord.verify`) nor the chain (that needs the previous record).
    """
    try:
        env = orjson.loads(envelope)
    except orjson.JSONDecodeError as e:
        raise RecordError(f"envelope is not JSON: {e}") from e
    _require(
        isinstance(env, dict) and env.keys() == {"payload", "payloadType", "signatures"},
        "envelope must have exactly payload, payloadType and signatures",
    )
    _require(env["payloadType"] == PAYLOAD_TYPE, "payloadType is not " + PAYLOAD_TYPE)
    sigs = env["signatures"]
    _require(isinstance(sigs, list) and len(sigs) == 1, "envelope must carry exactly one signature")
    sig_entry = sigs[0]
    _require(
        isinstance(sig_entry, dict) and sig_entry.keys() == {"keyid", "sig"},
        "signature entry must have exactly keyid and sig",
    )
    _require(
        isinstance(env["payload"], str)
        and isinstance(sig_entry["sig"], str)
        and isinstance(sig_entry["keyid"], str),
        "envelope fields must be strings",
    )
    try:
        payload_bytes = b64decode_strict(env["payload"], "payload")
        signature = b64decode_strict(sig_entry["sig"], "signature")
    except ValueError as e:
        raise RecordError(str(e)) from e
    try:
        payload = orjson.loads(payload_bytes)
    except orjson.JSONDecodeError as e:
        raise RecordError(f"payload is not JSON: {e}") from e
    _require(
        isinstance(payload, dict) and payload.keys() == _PAYLOAD_KEYS,
        _PAYLOAD_KEYS_MSG,
    )
    p = payload
    _require(type(p["index"]) is int and p["index"] >= 0, "index must be a non-negative integer")
    _require(
        isinstance(p["time"], str) and bool(_TIME_RE.fullmatch(p["time"])),
        "time must be RFC 3339 UTC with six fractional digits",
    )
    _require(isinstance(p["kind"], str) and bool(_KIND_RE.fullmatch(p["kind"])), "bad kind")
    _require(
        isinstance(p["prev"], str) and bool(_HEX64_RE.fullmatch(p["prev"])),
        "prev must be 64 lowercase hex digits",
    )
    _require(
        isinstance(p["key_id"], str) and bool(_HEX8_RE.fullmatch(p["key_id"])),
        "key_id must be 8 lowercase hex digits",
    )
    _require(p["key_id"] == sig_entry["keyid"], "envelope keyid differs from payload key_id")
    _require(
        isinstance(p["trace_id"], str) and bool(_TRACE_RE.fullmatch(p["trace_id"])),
        "trace_id must be 32 lowercase hex digits or empty",
    )
    for name in ("actor", "target", "decision_id"):
        _require(isinstance(p[name], str), "actor, target and decision_id must be strings")
    _require(isinstance(p["body"], dict), "body must be an object")
    # Every envelope field is now known to need no JSON escaping, so its RFC 8785
    # form is this one spelling; comparing is much cheaper than re-canonicalising.
    canonical_env = _envelope(
        env["payload"].encode(), sig_entry["keyid"].encode(), sig_entry["sig"].encode()
    )
    _require(canonical_env == envelope, "envelope is not RFC 8785 canonical JSON")
    record = Record(
        index=p["index"],
        time=p["time"],
        kind=p["kind"],
        prev=bytes.fromhex(p["prev"]),
        key_id=p["key_id"],
        trace_id=p["trace_id"],
        actor=p["actor"],
        target=p["target"],
        decision_id=p["decision_id"],
        body=p["body"],
        envelope=envelope,
        leaf_hash=leaf_hash(envelope),
    )
    return OpenedRecord(record, payload, pae(PAYLOAD_TYPE, payload_bytes), signature)
