"""Property tests: a real ledger export verifies, and tampering with it fails where it should.

One real ledger is built once for the module (its genesis ``key`` record, 60
appends of varied kinds and bodies, including unicode, control characters,
non-ASCII keys, floats, deep nesting and a sensitive field, and one key rotation
halfway through), with a checkpoint every 7 records, and exported with
:func:`ledger.export.export_ledger`. A second ledger with the same origin but its
own key supplies correctly signed foreign records. What is shown:

1. The untouched export verifies in both modes under either of the log's keys.
   A key that is not one of the log's keys fails.
2. Changing any single byte of a record line (its newline too) fails. With
   ``signatures=True`` the error names exactly that record. With
   ``signatures=False`` it names that record too, except when the edit rewrites
   the record's own ``prev`` field. Then it names the record before (without
   signatures an edited ``prev`` looks the same as an edited predecessor, and the
   verifier names the earlier of the two).
3. Changing any single byte of a checkpoint line or of the header fails. A bad
   checkpoint is named by the record it follows, or by the next record if its
   ``{"checkpoint"`` prefix was hit and it is therefore read as a record.
4. A dropped, duplicated, swapped, copied-in or foreign record fails at the exact
   index each test works out. ``test_forged_genesis_*`` shows where and why the
   reported index differs from the first deviating position.
5. Every proper prefix of the export fails. Dropping the last k lines names the
   first missing record.
6. Merkle, on the real ledger: every consistency proof (1 <= m <= k <= n) and
   every inclusion proof (0 <= i < k <= n) read from the store equals the in-memory
   proof over the export's leaves and verifies against the stored roots, and the
   stored roots match every checkpoint. In memory, over random trees of up to 300
   leaves: ``Frontier``, ``root_of``, ``prove_*`` and ``verify_*`` agree with an
   independent RFC 6962 section 2.1 reference written here, and damaged proofs fail.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import ledger
from ledger import Draft, InclusionProof, LedgerConfig, NoteSigner, NoteVerifier
from ledger.canonical import canonical_json
from ledger.checkpoint import Checkpoint, open_checkpoint
from ledger.errors import ProofError, RecordError, VerificationError
from ledger.export import export_ledger
from ledger.merkle import (
    Frontier,
    leaf_hash,
    prove_consistency,
    prove_inclusion,
    root_of,
    verify_consistency,
    verify_inclusion,
)
from ledger.record import KINDS, open_record
from ledger.verify import verify_export

ORIGIN = "test.example/log"
CHECKPOINT_PREFIX = b'{"checkpoint"'


def props(max_examples: int) -> settings:
    """Same examples on every run (derandomize), no example database, no deadline."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None)


# --------------------------------------------------------------------------- the ledger


def _bodies() -> list[tuple[dict[str, object], tuple[str, ...]]]:
    """Record bodies (and their sensitive paths) that go through both JCS paths."""
    deep: dict[str, object] = {"leaf": "\U0001f600"}
    for level in range(20):
        deep = {f"l{level}": [deep, level]}
    return [
        ({}, ()),
        ({"scope": "env=prod", "n": 1, "ok": True, "none": None}, ()),
        # ASCII keys, awkward string values: orjson fast path.
        (
            {
                "text": "h\u00e9llo w\u00f6rld \u2713 \U0001d11e \U0001f600",
                "ctl": '\x00\x1f\x7f"\\/',
            },
            (),
        ),
        (
            {"nested": {"a": [1, [2, [3, {"b": None}]]], "t": True, "f": False, "e": [], "o": {}}},
            (),
        ),
        # Non-ASCII keys: the rfc8785 slow path.
        ({"\u043a\u043b\u044e\u0447": "\u0437\u043d\u0430\u0447", "\u65e5\u672c": ["\u8a9e"]}, ()),
        ({"\U0001f600": 1, "\ufb33": 2, "\u20ac": 3, "\r": 4, "1": 5}, ()),
        # Floats: the slow path too.
        ({"max": 2**53 - 1, "min": -(2**53 - 1), "half": 0.5, "one": 1.0, "big": 1e21}, ()),
        ({"parameters": {"password": "hunter2", "user": "root"}}, ("parameters.password",)),
        ({"deep": deep}, ()),
        ({"long": "x" * 3000, "sep": "\u2028\u2029"}, ()),
    ]


def _drafts(count: int, tag: str) -> list[Draft]:
    kinds = [*sorted(KINDS - {"key"}), "custom.kind-1"]
    bodies = _bodies()
    out = []
    for i in range(count):
        body, sensitive = bodies[i % len(bodies)]
        out.append(
            Draft(
                kind=kinds[i % len(kinds)],
                body={**body, "seq": i, "tag": tag},
                trace_id=f"{i + 1:032x}" if i % 3 == 0 else "",
                actor=f"op\u00e9rateur-{i % 4}" if i % 2 else "",
                target=f"vm/\u4e2d-{i}" if i % 5 else "",
                decision_id=f"d-{i}" if i % 7 == 0 else "",
                sensitive=sensitive,
            )
        )
    return out


@dataclass(frozen=True)
class Built:
    """Everything the properties need, gathered once."""

    lines: tuple[bytes, ...]  # export lines without their newline; lines[0] is the header
    records: tuple[int, ...]  # records[i]: the position in ``lines`` of record i
    keys: tuple[NoteVerifier, ...]  # the log's keys: genesis, then rotated
    foreign: tuple[bytes, ...]  # envelopes of another log with the same origin
    foreign_key: NoteVerifier
    roots: tuple[bytes, ...]  # roots[k]: the stored Merkle root of the first k records
    consistency: dict[tuple[int, int], tuple[bytes, ...]]  # (m, k) -> proof from the store
    inclusion: dict[tuple[int, int], InclusionProof]  # (i, k) -> proof from the store
    scratch: Path  # tampered exports are written here

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def leaves(self) -> list[bytes]:
        return [leaf_hash(self.lines[p]) for p in self.records]

    def records_before(self, position: int) -> int:
        """How many record lines come before line ``position``."""
        return sum(1 for p in self.records if p < position)


async def _build(tmp: Path) -> Built:
    config = LedgerConfig(checkpoint_every=7, checkpoint_interval=0)
    data = ledger.DataDir(tmp / "log")
    genesis = data.generate_key(ORIGIN)
    drafts = _drafts(60, "a")
    async with data.open_ledger(config) as log:
        start = 0
        for chunk in (1, 4, 9, 2, 7, 3, 4):  # 30 records in batches of varied size
            await log.append_many(drafts[start : start + chunk])
            start += chunk
        rotated = await data.rotate(log, "scheduled rotation")
        for chunk in (11, 1, 6, 5, 7):  # 30 more, signed by the rotated key
            await log.append_many(drafts[start : start + chunk])
            start += chunk
        assert start == 60
        path = tmp / "export.jsonl"
        summary = await export_ledger(log, path)
        n = summary.size
        roots = tuple([await log.root(k) for k in range(n + 1)])
        consistency = {
            (m, k): (await log.consistency_proof(m, k)).proof
            for k in range(1, n + 1)
            for m in range(1, k + 1)
        }
        inclusion = {
            (i, k): await log.inclusion_proof(i, k) for k in range(1, n + 1) for i in range(k)
        }

    other = ledger.DataDir(tmp / "other")
    other_signer = other.generate_key(ORIGIN)  # same origin, its own key
    async with other.open_ledger(config) as log:
        await log.append_many(_drafts(n, "b"))
        foreign = tuple(await log.store.envelopes(0, n + 1))
    assert len(foreign) == n + 1

    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    lines = tuple(raw[:-1].split(b"\n"))
    records = tuple(p for p in range(1, len(lines)) if not lines[p].startswith(CHECKPOINT_PREFIX))
    assert len(records) == n
    return Built(
        lines=lines,
        records=records,
        keys=(genesis.verifier, rotated.verifier),
        foreign=foreign,
        foreign_key=other_signer.verifier,
        roots=roots,
        consistency=consistency,
        inclusion=inclusion,
        scratch=tmp / "tampered.jsonl",
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    # A sync fixture that runs its own loop: no event-loop scope to share with tests.
    return asyncio.run(_build(tmp_path_factory.mktemp("ledger")))


# --------------------------------------------------------------------------- helpers


def _blob(lines: Sequence[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _verify(
    built: Built, data: bytes, *, signatures: bool, key: NoteVerifier | None = None
) -> VerificationError | None:
    built.scratch.write_bytes(data)
    try:
        verify_export(built.scratch, key or built.keys[-1], signatures=signatures)
    except VerificationError as e:
        return e
    return None


def _fails(
    built: Built, data: bytes, *, signatures: bool, key: NoteVerifier | None = None
) -> VerificationError:
    err = _verify(built, data, signatures=signatures, key=key)
    assert err is not None, "a tampered export verified"
    return err


def _index_in_both_modes(built: Built, lines: Sequence[bytes]) -> tuple[int | None, int | None]:
    data = _blob(lines)
    return (
        _fails(built, data, signatures=True).index,
        _fails(built, data, signatures=False).index,
    )


def _kind_of(err: VerificationError) -> str:
    """A short name for what caught a tampering, for ``--hypothesis-show-statistics``."""
    reason = err.reason
    for name in (
        "malformed record",
        "malformed checkpoint",
        "signature does not verify",
        "chains to",
        "checkpoint root",
        "checkpoint does not verify",
        "expected index",
    ):
        if name in reason:
            return name
    return reason[:40]


def _with_byte(line: bytes, offset: int, value: int) -> bytes:
    """``line`` plus its newline, with the byte at ``offset`` replaced."""
    full = bytearray(line + b"\n")
    full[offset] = value
    return bytes(full)


def _replace_line(built: Built, position: int, new: bytes) -> bytes:
    """The export with line ``position`` (and its newline) replaced by the raw bytes ``new``."""
    return _blob(built.lines[:position]) + new + _blob(built.lines[position + 1 :])


# Bytes that keep JSON and base64 plausible, so edits get past the parsers more often.
_PLAUSIBLE = b'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="\\{}[]:,-. \n'


def _other_byte(old: int) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(list(_PLAUSIBLE)), st.integers(0, 255)).filter(
        lambda b: b != old
    )


# --------------------------------------------------------------------------- untouched


def test_untouched_export_verifies_in_both_modes_under_each_log_key(built: Built) -> None:
    data = _blob(built.lines)
    for key in built.keys:
        for signatures in (True, False):
            assert _verify(built, data, signatures=signatures, key=key) is None
    built.scratch.write_bytes(data)
    result = verify_export(built.scratch, built.keys[0])
    assert result.size == built.n
    assert result.root == built.roots[built.n] == root_of(built.leaves)
    assert result.key_ids == [k.key_id for k in built.keys]
    assert result.checkpoints == len(built.lines) - 1 - built.n


def test_export_shape(built: Built) -> None:
    """What the other properties rely on: a rotation, and checkpoints between records."""
    kinds = [open_record(built.lines[p]).record.kind for p in built.records]
    assert kinds[0] == "key"
    assert kinds.count("key") == 2
    assert built.records[0] == 1
    assert built.lines[-1].startswith(CHECKPOINT_PREFIX)  # ends with the full-size checkpoint
    gaps = [b - a for a, b in zip(built.records, built.records[1:], strict=False)]
    assert any(g > 1 for g in gaps), "no checkpoint line sits between two records"


@pytest.mark.parametrize("signatures", [True, False])
def test_a_key_that_is_not_the_logs_fails(built: Built, signatures: bool) -> None:
    data = _blob(built.lines)
    stranger = NoteSigner.generate(ORIGIN).verifier  # right origin, wrong key
    for key in (stranger, built.foreign_key):
        err = _fails(built, data, signatures=signatures, key=key)
        assert err.index is None
        assert "not one of this log's keys" in err.reason
    elsewhere = NoteSigner.generate("other.example/log").verifier
    err = _fails(built, data, signatures=signatures, key=elsewhere)
    assert err.line == 1  # refused at the header: wrong origin


# --------------------------------------------------------------------------- single bytes


@props(400)
@given(data=st.data())
def test_any_changed_record_byte_is_caught_at_that_record(built: Built, data) -> None:
    k = data.draw(st.integers(0, built.n - 1), label="record")
    position = built.records[k]
    line = built.lines[position]
    offset = data.draw(st.integers(0, len(line)), label="offset")  # len(line): the newline
    old = (line + b"\n")[offset]
    tampered = _with_byte(line, offset, data.draw(_other_byte(old), label="byte"))
    _assert_caught_at(built, k, line, tampered)


def _expected_without_signatures(k: int, original: bytes, tampered: bytes) -> int:
    """Where ``signatures=False`` names a single-record edit: record k, unless the edit
    rewrote record k's own ``prev`` field and left it well-formed. Then k-1 is named,
    because without signatures that looks the same as an edit to record k-1."""
    try:
        edited = open_record(tampered.split(b"\n", 1)[0]).record
    except RecordError:
        return k
    if edited.index == k and edited.prev != open_record(original).record.prev:
        event("the edit rewrote this record's prev field")
        return max(k - 1, 0)
    return k


def _assert_caught_at(built: Built, k: int, line: bytes, tampered: bytes) -> None:
    """Record ``k`` replaced by ``tampered`` fails at k with signatures, and where
    :func:`_expected_without_signatures` says without them."""
    export = _replace_line(built, built.records[k], tampered)
    err = _fails(built, export, signatures=True)
    event(f"signatures=True: {_kind_of(err)}")
    assert err.index == k, err
    err = _fails(built, export, signatures=False)
    event(f"signatures=False: {_kind_of(err)}")
    assert err.index == _expected_without_signatures(k, line, tampered), err


@props(300)
@given(data=st.data())
def test_any_changed_byte_inside_payload_or_signature_is_caught_at_that_record(
    built: Built, data
) -> None:
    """As above, but the byte is changed in the *decoded* payload or signature, which
    is then re-encoded. The envelope stays well-formed base64 and canonical JSON, so the
    edit has to be caught by the signature, the chain or the Merkle root, not the parser."""
    k = data.draw(st.integers(0, built.n - 1), label="record")
    position = built.records[k]
    line = built.lines[position]
    env = orjson.loads(line)
    field = data.draw(st.sampled_from(["payload", "sig"]), label="field")
    holder = env if field == "payload" else env["signatures"][0]
    raw = bytearray(base64.b64decode(holder[field]))
    offset = data.draw(st.integers(0, len(raw) - 1), label="offset")
    raw[offset] = data.draw(_other_byte(raw[offset]), label="byte")
    holder[field] = base64.b64encode(bytes(raw)).decode()
    tampered = orjson.dumps(env, option=orjson.OPT_SORT_KEYS) + b"\n"
    _assert_caught_at(built, k, line, tampered)


def _rewrite_payload(line: bytes, **changes: object) -> bytes:
    """Record ``line`` with payload fields changed, re-encoded canonically, not re-signed."""
    env = orjson.loads(line)
    payload = orjson.loads(base64.b64decode(env["payload"]))
    payload.update(changes)
    env["payload"] = base64.b64encode(canonical_json(payload)).decode()
    return canonical_json(env)


def test_a_rewritten_prev_field_is_named_one_record_early_without_signatures(
    built: Built,
) -> None:
    """Every record k with its ``prev`` pointed elsewhere (well-formed, not re-signed)."""
    for k, position in enumerate(built.records):
        line = built.lines[position]
        prev = open_record(line).record.prev
        forged = _rewrite_payload(line, prev=_flip(prev, 0).hex())
        lines = (*built.lines[:position], forged, *built.lines[position + 1 :])
        assert _index_in_both_modes(built, lines) == (k, max(k - 1, 0)), k


def test_a_rewritten_body_is_named_at_its_record(built: Built) -> None:
    """Every record k with a body field changed (well-formed, not re-signed): with
    signatures the signature fails at k; without, record k+1's chain (or the next
    checkpoint's root) no longer matches record k, and k is named."""
    for k, position in enumerate(built.records):
        line = built.lines[position]
        body = dict(open_record(line).record.body)
        body["seq"] = -1
        forged = _rewrite_payload(line, body=body)
        lines = (*built.lines[:position], forged, *built.lines[position + 1 :])
        assert _index_in_both_modes(built, lines) == (k, k), k


def _respellings(line: bytes) -> list[bytes]:
    """The same JSON value as envelope ``line``, spelled with other bytes."""
    env = orjson.loads(line)
    sig = env["signatures"][0]
    return [
        json.dumps(env, separators=(", ", ": ")).encode(),  # white space
        json.dumps(dict(reversed(env.items())), separators=(",", ":")).encode(),  # key order
        line.replace(b"application/vnd", b"application\\/vnd"),  # an escaped solidus
        line.replace(b'"sig":"' + sig["sig"][:1].encode(), b'"sig":"\\u%04x' % ord(sig["sig"][0])),
        line + b" ",  # trailing white space
    ]


def test_a_respelled_envelope_is_caught_at_that_record(built: Built) -> None:
    """Same JSON value, other bytes: the leaf hash changes while the signature (over the
    payload) still holds, so only the strict canonical-form check can name record k.
    Otherwise the change would surface one record later, at k+1's chain."""
    for k, position in enumerate(built.records):
        for respelled in _respellings(built.lines[position]):
            assert orjson.loads(respelled) == orjson.loads(built.lines[position])
            lines = (*built.lines[:position], respelled, *built.lines[position + 1 :])
            assert _index_in_both_modes(built, lines) == (k, k), (k, respelled[:60])


@props(200)
@given(data=st.data())
def test_any_changed_checkpoint_byte_fails(built: Built, data) -> None:
    checkpoints = [p for p in range(1, len(built.lines)) if p not in built.records]
    position = data.draw(st.sampled_from(checkpoints), label="checkpoint line")
    line = built.lines[position]
    offset = data.draw(st.integers(0, len(line)), label="offset")
    old = (line + b"\n")[offset]
    tampered = _with_byte(line, offset, data.draw(_other_byte(old), label="byte"))
    export = _replace_line(built, position, tampered)
    size = built.records_before(position)  # the checkpoint signs the first ``size`` records

    if position == len(built.lines) - 1 and offset == len(line):
        expected = None  # the file no longer ends with a newline
    elif tampered.startswith(CHECKPOINT_PREFIX):
        expected = size - 1  # a bad checkpoint is named by the record it follows
    else:
        expected = size  # no longer looks like a checkpoint: read as record ``size``
    for signatures in (True, False):
        err = _fails(built, export, signatures=signatures)
        event(_kind_of(err))
        assert err.index == expected, err


@props(150)
@given(data=st.data())
def test_any_changed_header_byte_fails(built: Built, data) -> None:
    header = built.lines[0]
    offset = data.draw(st.integers(0, len(header)), label="offset")
    old = (header + b"\n")[offset]
    tampered = _with_byte(header, offset, data.draw(_other_byte(old), label="byte"))
    export = _replace_line(built, 0, tampered)
    size_digits = header.rindex(b":") + 1  # ... ,"size":N}
    for signatures in (True, False):
        err = _fails(built, export, signatures=signatures)
        if err.index is None:
            assert err.line == 1 or "not end with a newline" in err.reason, err
        else:  # only a changed size gets past the header, to fail at the end
            assert size_digits <= offset < len(header) - 1, err


# --------------------------------------------------------------------------- whole lines


def test_every_dropped_record_fails_at_its_index(built: Built) -> None:
    for i, position in enumerate(built.records):
        lines = built.lines[:position] + built.lines[position + 1 :]
        # Record i+1 (or the checkpoint for size i+1) now sits where record i should.
        assert _index_in_both_modes(built, lines) == (i, i)


def test_every_duplicated_record_fails_at_the_copy(built: Built) -> None:
    for i, position in enumerate(built.records):
        lines = built.lines[: position + 1] + built.lines[position:]
        # Position i holds the genuine record; the copy right after it claims index i.
        assert _index_in_both_modes(built, lines) == (i + 1, i + 1)


@props(120)
@given(data=st.data())
def test_two_swapped_records_fail_at_the_first(built: Built, data) -> None:
    i = data.draw(st.integers(0, built.n - 2), label="first")
    j = data.draw(st.integers(i + 1, built.n - 1), label="second")
    lines = list(built.lines)
    a, b = built.records[i], built.records[j]
    lines[a], lines[b] = lines[b], lines[a]
    assert _index_in_both_modes(built, lines) == (i, i)


@props(150)
@given(data=st.data())
def test_an_inserted_copy_of_a_record_fails_where_the_sequence_deviates(built: Built, data) -> None:
    # Often right before a checkpoint line, and often a copy of the record due there.
    checkpoints = [q for q in range(1, len(built.lines)) if q not in built.records]
    at = data.draw(
        st.one_of(st.sampled_from(checkpoints), st.integers(1, len(built.lines))),
        label="insert before line",
    )
    p = built.records_before(at)  # the copy sits at record position p
    k = data.draw(
        st.one_of(st.just(min(p, built.n - 1)), st.integers(0, built.n - 1)),
        label="copied record",
    )
    lines = (*built.lines[:at], built.lines[built.records[k]], *built.lines[at:])
    if k != p:
        expected = p  # it claims index k where p is due
    elif at < len(built.lines) and built.lines[at].startswith(CHECKPOINT_PREFIX):
        # The copy *is* record p; the checkpoint for size p that follows now comes
        # after p+1 records, and names p: the first record it does not cover.
        expected = p
    else:
        expected = p + 1  # the copy is record p; the genuine record p is the extra one
    assert _index_in_both_modes(built, lines) == (expected, expected)


@props(150)
@given(data=st.data())
def test_an_inserted_foreign_record_fails(built: Built, data) -> None:
    """A correctly signed record of another log (same origin, its own key)."""
    at = data.draw(st.integers(2, len(built.lines)), label="insert before line")
    p = built.records_before(at)
    q = data.draw(st.one_of(st.just(p), st.integers(0, built.n)), label="foreign index")
    lines = (*built.lines[:at], built.foreign[q], *built.lines[at:])
    # A wrong index is named where it sits (p). The right index with the wrong chain:
    # with signatures every record before p is proved genuine, so p is named; without
    # them an edited record p-1 would look the same, so p-1 is named.
    expected = (p, p) if q != p else (p, p - 1)
    assert p >= 1
    assert _index_in_both_modes(built, lines) == expected


def test_forged_genesis_inserted_is_named_at_one(built: Built) -> None:
    """Another log's genesis record inserted before record 0.

    The first deviating position is 0, but a genesis ``key`` record is
    self-certifying: which key is trusted is settled only at the end of the
    export, because the trusted key may be a later, rotated key. So the foreign
    genesis passes as record 0, and the genuine record 0 that follows fails at
    index 1 for claiming index 0.
    """
    lines = (built.lines[0], built.foreign[0], *built.lines[1:])
    assert _index_in_both_modes(built, lines) == (1, 1)


def test_forged_records_replacing_genuine_ones(built: Built) -> None:
    """Each record replaced by the other log's correctly signed record of the same index.

    For p >= 1 this is the case above: p with signatures, p-1 without. For p = 0 the
    foreign genesis is accepted (see ``test_forged_genesis_inserted_is_named_at_one``)
    and genuine record 1 fails to chain to it: with signatures it is named (1), since
    everything before it counts as proved; without signatures record 0 is named.
    """
    for p, position in enumerate(built.records):
        lines = (*built.lines[:position], built.foreign[p], *built.lines[position + 1 :])
        expected = (1, 0) if p == 0 else (p, p - 1)
        assert _index_in_both_modes(built, lines) == expected, p


# --------------------------------------------------------------------------- truncation


def test_dropping_the_last_k_lines_fails(built: Built) -> None:
    total = len(built.lines)
    for k in range(1, total + 1):
        kept = built.lines[: total - k]
        records = built.records_before(len(kept))
        if not kept:
            expected = None  # empty file
        elif records < built.n:
            expected = records  # header promises n: the first missing record is named
        else:  # all records kept but the final checkpoint lost
            sizes = [built.records_before(p) for p in range(1, len(kept)) if p not in built.records]
            expected = max(sizes)  # the first record no kept checkpoint covers
        for signatures in (True, False):
            err = _fails(built, _blob(kept), signatures=signatures)
            assert err.index == expected, (k, err)


@props(60)
@given(data=st.data())
def test_every_proper_prefix_fails(built: Built, data) -> None:
    full = _blob(built.lines)
    cut = data.draw(st.integers(0, len(full) - 1), label="bytes kept")
    for signatures in (True, False):
        _fails(built, full[:cut], signatures=signatures)


# --------------------------------------------------------------------------- Merkle, real ledger


def test_stored_roots_match_the_export_and_its_checkpoints(built: Built) -> None:
    leaves = built.leaves
    for k in range(built.n + 1):
        assert built.roots[k] == root_of(leaves[:k]) == _ref_mth(_record_bytes(built)[:k])
    checked = 0
    for p in range(1, len(built.lines)):
        if p in built.records:
            continue
        cp = _checkpoint_at(built, p)
        assert cp.root == built.roots[cp.size]
        checked += 1
    assert checked == len(built.lines) - 1 - built.n


def _checkpoint_at(built: Built, position: int) -> Checkpoint:
    note = orjson.loads(built.lines[position])["checkpoint"]
    return open_checkpoint(note, built.keys, origin=ORIGIN)


def _record_bytes(built: Built) -> list[bytes]:
    return [built.lines[p] for p in built.records]


def test_every_stored_consistency_proof_verifies_and_matches_memory(built: Built) -> None:
    leaves = built.leaves
    for (m, k), proof in built.consistency.items():
        assert list(proof) == prove_consistency(leaves, m, k), (m, k)
        verify_consistency(m, k, proof, built.roots[m], built.roots[k])
    assert len(built.consistency) == built.n * (built.n + 1) // 2


def test_every_stored_inclusion_proof_verifies_and_matches_memory(built: Built) -> None:
    leaves = built.leaves
    for (i, k), proof in built.inclusion.items():
        assert proof.leaf == built.lines[built.records[i]]
        assert proof.leaf_hash == leaves[i]
        assert list(proof.proof) == prove_inclusion(leaves, i, k), (i, k)
        verify_inclusion(leaves[i], i, k, proof.proof, built.roots[k])
    assert len(built.inclusion) == built.n * (built.n + 1) // 2


@props(200)
@given(data=st.data())
def test_damaged_stored_proofs_fail(built: Built, data) -> None:
    k = data.draw(st.integers(2, built.n), label="size")
    m = data.draw(st.integers(1, k - 1), label="old size")
    i = data.draw(st.integers(0, k - 1), label="index")
    bit = data.draw(st.integers(0, 255), label="bit")

    cproof = list(built.consistency[(m, k)])
    j = data.draw(st.integers(0, len(cproof) - 1), label="consistency element")
    cproof[j] = _flip(cproof[j], bit)
    with pytest.raises(ProofError):
        verify_consistency(m, k, cproof, built.roots[m], built.roots[k])
    with pytest.raises(ProofError):
        verify_consistency(
            m, k, built.consistency[(m, k)], _flip(built.roots[m], bit), built.roots[k]
        )

    iproof = list(built.inclusion[(i, k)].proof)
    j = data.draw(st.integers(0, len(iproof) - 1), label="inclusion element")
    iproof[j] = _flip(iproof[j], bit)
    with pytest.raises(ProofError):
        verify_inclusion(built.leaves[i], i, k, iproof, built.roots[k])


def _flip(h: bytes, bit: int) -> bytes:
    b = bytearray(h)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


# --------------------------------------------------------------------------- Merkle, in memory
#
# An independent reference: RFC 6962 section 2.1 as written, over leaf *data*,
# with hashlib only (nothing from ledger.merkle).


def _ref_mth(data: Sequence[bytes]) -> bytes:
    n = len(data)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = _ref_split(n)
    return hashlib.sha256(b"\x01" + _ref_mth(data[:k]) + _ref_mth(data[k:])).digest()


def _ref_split(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _ref_path(m: int, data: Sequence[bytes]) -> list[bytes]:
    n = len(data)
    if n == 1:
        return []
    k = _ref_split(n)
    if m < k:
        return [*_ref_path(m, data[:k]), _ref_mth(data[k:])]
    return [*_ref_path(m - k, data[k:]), _ref_mth(data[:k])]


def _ref_subproof(m: int, data: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(data)
    if m == n:
        return [] if complete else [_ref_mth(data)]
    k = _ref_split(n)
    if m <= k:
        return [*_ref_subproof(m, data[:k], complete), _ref_mth(data[k:])]
    return [*_ref_subproof(m - k, data[k:], False), _ref_mth(data[:k])]


def _tree(n: int) -> list[bytes]:
    """n distinct leaves (distinct, so that a wrong index can never verify by accident)."""
    return [b"leaf %d" % i for i in range(n)]


@props(60)
@given(n=st.integers(0, 300))
def test_frontier_and_root_of_match_the_reference(n: int) -> None:
    data = _tree(n)
    hashes = [leaf_hash(d) for d in data]
    f = Frontier()
    for h in hashes:
        for level, index, node in f.append(h):
            lo = index << level
            assert node == _ref_mth(data[lo : lo + (1 << level)])
    assert f.size == n
    assert f.root() == root_of(hashes) == _ref_mth(data)
    resumed = Frontier(f.size, f.hashes)  # a frontier rebuilt from its hashes grows on
    resumed.append(leaf_hash(b"one more"))
    assert resumed.root() == _ref_mth([*data, b"one more"])


@props(150)
@given(data=st.data())
def test_inclusion_proofs_match_the_reference_and_verify(data) -> None:
    n = data.draw(st.integers(1, 300), label="size")
    i = data.draw(st.integers(0, n - 1), label="index")
    leaves = _tree(n)
    hashes = [leaf_hash(d) for d in leaves]
    root = _ref_mth(leaves)
    proof = prove_inclusion(hashes, i, n)
    assert proof == _ref_path(i, leaves)
    verify_inclusion(hashes[i], i, n, proof, root)

    wrong = data.draw(st.integers(0, n - 1).filter(lambda x: x != i) if n > 1 else st.none())
    if wrong is not None:
        with pytest.raises(ProofError):
            verify_inclusion(hashes[i], wrong, n, proof, root)
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1), label="damaged element")
        damaged = [*proof[:j], _flip(proof[j], 0), *proof[j + 1 :]]
        with pytest.raises(ProofError):
            verify_inclusion(hashes[i], i, n, damaged, root)
        with pytest.raises(ProofError):
            verify_inclusion(hashes[i], i, n, proof[:-1], root)
    with pytest.raises(ProofError):
        verify_inclusion(hashes[i], i, n, [*proof, hashes[0]], root)


@props(150)
@given(data=st.data())
def test_consistency_proofs_match_the_reference_and_verify(data) -> None:
    n = data.draw(st.integers(1, 300), label="new size")
    m = data.draw(st.integers(1, n), label="old size")
    leaves = _tree(n)
    hashes = [leaf_hash(d) for d in leaves]
    old_root, new_root = _ref_mth(leaves[:m]), _ref_mth(leaves)
    proof = prove_consistency(hashes, m, n)
    assert proof == _ref_subproof(m, leaves, True)
    verify_consistency(m, n, proof, old_root, new_root)
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1), label="damaged element")
        damaged = [*proof[:j], _flip(proof[j], 255), *proof[j + 1 :]]
        with pytest.raises(ProofError):
            verify_consistency(m, n, damaged, old_root, new_root)
        with pytest.raises(ProofError):
            verify_consistency(m, n, proof, old_root, _flip(new_root, 7))
        with pytest.raises(ProofError):
            verify_consistency(m, n, proof, _flip(old_root, 7), new_root)
