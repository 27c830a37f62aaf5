"""End-to-end tests of the ``govgate`` keys, ledger and demo commands, as an operator
or auditor runs them.

``gg`` (see ``cli_harness.py``) runs a command in process or, with ``gg.sub``, as
the installed script, and fails a test whose output shows a private key or salt.
Records that a test needs but does not exercise are appended with the library
directly (quicker than one process per record).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import math
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from cli_harness import ORIGIN, QUIET, Govgate

from ledger import DataDir, Draft, NoteSigner, NoteVerifier, open_checkpoint
from ledger.errors import NoteError, ProofError
from ledger.merkle import leaf_hash, root_of, verify_consistency, verify_inclusion
from ledger.record import Record, open_record

VKEY_RE = re.compile(r"example\.com/log\+([0-9a-f]{8})\+[A-Za-z0-9+/]{44}")
HMAC_RE = re.compile(r"hmac-sha256:[0-9a-f]{64}")


def _append(data: Path, drafts: Sequence[Draft], *, pause: float = 0.0) -> list[Record]:
    """Append ``drafts`` one transaction each, through the library."""

    async def go() -> list[Record]:
        out = []
        async with DataDir(data).open_ledger(QUIET) as ledger:
            for draft in drafts:
                out.append(await ledger.append(draft))
                if pause:
                    await asyncio.sleep(pause)
        return out

    return asyncio.run(go())


def _envelopes(data: Path) -> list[bytes]:
    async def go() -> list[bytes]:
        async with DataDir(data).store() as store:
            head, _ = await store.snapshot()
            return await store.envelopes(0, head.size)

    return asyncio.run(go())


def _notes(n: int) -> list[Draft]:
    return [Draft("note", {"n": i}) for i in range(n)]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


# -- keys ---------------------------------------------------------------------------


def test_keys_generate_prints_verifier_key_and_refuses_to_overwrite(
    tmp_path: Path, gg: Govgate
) -> None:
    data = tmp_path / "data"
    r = gg.sub("keys", "generate", "--data", data, "--name", ORIGIN)
    assert r.code == 0, r
    vkey = r.out.strip()
    assert r.out == vkey + "\n", "stdout must be the verifier key alone"
    m = VKEY_RE.fullmatch(vkey)
    assert m, vkey
    verifier = NoteVerifier.from_key_string(vkey)  # the hash matches the key
    assert (verifier.name, verifier.key_id) == (ORIGIN, m.group(1))
    assert m.group(1) in r.msg  # stderr names the key id created

    key_file = data / "keys" / "log.key"
    assert _mode(key_file) == 0o600
    assert _mode(data / "hmac.salt") == 0o600
    assert _mode(data / "keys") & 0o077 == 0
    # The file holds the private half of exactly the printed key.
    assert NoteSigner.from_key_string(key_file.read_text().strip()).verifier_key == vkey

    before = key_file.read_bytes(), key_file.stat()
    for name in (ORIGIN, "other.example/log"):
        again = gg.sub("keys", "generate", "--data", data, "--name", name)
        assert again.code != 0, again
        assert "already exists" in again.msg, again
        assert "refusing to overwrite" in again.msg, again
        assert again.out == ""
    after = key_file.read_bytes(), key_file.stat()
    assert after[0] == before[0]
    assert (after[1].st_ino, after[1].st_mtime_ns) == (before[1].st_ino, before[1].st_mtime_ns)

    assert gg("keys", "public", "--data", data).out == vkey + "\n"
    # --data defaults to $GOVGATE_DATA_DIR.
    assert gg("keys", "public", env={"GOVGATE_DATA_DIR": str(data)}).out == vkey + "\n"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604], ids=oct)
def test_key_file_readable_by_others_is_refused(
    log: tuple[Path, str], gg: Govgate, mode: int
) -> None:
    data, vkey = log
    key_file = data / "keys" / "log.key"
    key_file.chmod(mode)
    r = gg.sub("keys", "public", "--data", data)
    assert r.code == 1, r
    assert "chmod 600" in r.msg, r
    assert str(key_file) in r.msg
    assert r.out == ""
    # Appending needs the key too, and is refused the same way.
    r = gg("ledger", "append", "--data", data, "--kind", "note", "--body", "{}")
    assert r.code == 1, r
    assert "chmod 600" in r.msg, r
    assert _mode(key_file) == mode, "the CLI must not silently change the mode"
    key_file.chmod(0o600)
    assert gg.sub("keys", "public", "--data", data).out.strip() == vkey


def test_missing_key_says_how_to_create_one(tmp_path: Path, gg: Govgate) -> None:
    r = gg("keys", "public", "--data", tmp_path / "empty")
    assert r.code == 1
    assert "govgate keys generate" in r.msg, r


# -- append ---------------------------------------------------------------------------


def test_append_prints_the_durable_record(log: tuple[Path, str], gg: Govgate) -> None:
    data, vkey = log
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = gg(
        "ledger", "append", "--data", data, "--kind", "decision",
        "--body", '{"verb": "start", "parameters": {"vcpus": 4}}',
        "--actor", "autoscaler", "--target", "libvirt/vm-1",
        "--decision-id", "d-1", "--trace-id", trace,
    )  # fmt: skip
    assert r.code == 0, r
    rec = r.json()
    assert r.out.count("\n") == 1
    assert rec["index"] == 1  # record 0 is the log's genesis key record
    assert rec["kind"] == "decision"
    assert rec["body"] == {"verb": "start", "parameters": {"vcpus": 4}}
    assert (rec["actor"], rec["target"], rec["decision_id"], rec["trace_id"]) == (
        "autoscaler", "libvirt/vm-1", "d-1", trace,
    )  # fmt: skip
    assert rec["key_id"] == NoteVerifier.from_key_string(vkey).key_id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", rec["time"])

    envelopes = _envelopes(data)
    assert len(envelopes) == 2
    assert rec["prev"] == leaf_hash(envelopes[0]).hex()
    assert rec["leaf_hash"] == leaf_hash(envelopes[1]).hex()
    stored = open_record(envelopes[1]).record
    assert stored.to_json() == rec


def test_append_rejects_bad_input_and_writes_nothing(log: tuple[Path, str], gg: Govgate) -> None:
    data, _ = log
    assert gg("ledger", "append", "--data", data, "--kind", "note", "--body", "{}").code == 0
    base = ["ledger", "append", "--data", str(data)]
    cases = [
        (["--kind", "note", "--body", '{"a": '], "--body is not JSON"),
        (["--kind", "note", "--body", "not json"], "--body is not JSON"),
        (["--kind", "note", "--body", "[1, 2]"], "--body must be a JSON object"),
        (["--kind", "note", "--body", '"text"'], "--body must be a JSON object"),
        (["--kind", "Bad Kind!", "--body", "{}"], "kind 'Bad Kind!' must match"),
        (["--kind", "", "--body", "{}"], "kind '' must match"),
        (["--kind", "note", "--body", "{}", "--trace-id", "xyz"], "trace_id must be 32"),
        (["--kind", "key", "--body", "{}"], "key records are written by the ledger itself"),
        (["--kind", "note", "--body", '{"x": 1e400}'], "--body"),
    ]
    for extra, message in cases:
        r = gg(*base, *extra)
        assert r.code in (1, 2), r
        assert message in r.msg, r
        assert r.out == "", r
    assert len(_envelopes(data)) == 2, "a refused append wrote a record"


def test_append_records_body_numbers_exactly_or_refuses_them(
    log: tuple[Path, str], gg: Govgate
) -> None:
    """An integer that JSON-as-float cannot hold exactly must be refused, never rounded:
    the ledger's point is to record what was asked, byte for byte."""
    data, _ = log
    for big in ("9007199254740993", "123456789012345678901234567890"):
        r = gg("ledger", "append", "--data", data, "--kind", "note", "--body", f'{{"x": {big}}}')
        if r.code == 0:
            assert f'"x":{big}' in r.out, f"--body integer {big} was recorded otherwise: {r.out}"
        else:
            assert r.code in (1, 2), r
            assert r.out == ""
            assert big in r.msg or "--body" in r.msg, r


def test_sensitive_fields_are_stored_as_salted_hmacs(log: tuple[Path, str], gg: Govgate) -> None:
    data, _ = log
    body = {"user": "bob", "password": "s3cret", "creds": {"token": "t0k3n-xyz"}}
    r = gg(
        "ledger", "append", "--data", data, "--kind", "decision",
        "--body", orjson.dumps(body).decode(),
        "--sensitive", "password", "--sensitive", "creds.token",
    )  # fmt: skip
    assert r.code == 0, r
    stored = r.json()["body"]
    assert stored["user"] == "bob"
    assert HMAC_RE.fullmatch(stored["password"]), stored
    assert HMAC_RE.fullmatch(stored["creds"]["token"]), stored
    assert "s3cret" not in r.out
    assert "t0k3n-xyz" not in r.out
    payload = open_record(_envelopes(data)[-1]).payload
    assert "s3cret" not in orjson.dumps(payload).decode()

    # An auditor holding the salt checks a candidate value.
    check = gg("ledger", "hmac", "--data", data, '"s3cret"')
    assert check.code == 0, check
    assert check.out.strip() == stored["password"]
    assert (
        gg("ledger", "hmac", "--data", data, '"t0k3n-xyz"').out.strip() == stored["creds"]["token"]
    )
    assert gg("ledger", "hmac", "--data", data, '"s3cret2"').out.strip() != stored["password"]
    bad = gg("ledger", "hmac", "--data", data, "s3cret")
    assert bad.code == 2
    assert "VALUE is not JSON" in bad.msg, bad

    # A misspelt path would store the secret in clear for good: refused, nothing appended.
    before = len(_envelopes(data))
    typo = gg(
        "ledger", "append", "--data", data, "--kind", "decision",
        "--body", orjson.dumps(body).decode(), "--sensitive", "pasword",
    )  # fmt: skip
    assert typo.code == 1, typo
    assert "sensitive path 'pasword' names nothing in the body" in typo.msg, typo
    assert typo.out == ""
    assert len(_envelopes(data)) == before


# -- query ----------------------------------------------------------------------------

T1, T2 = "0af7651916cd43dd8448eb211c80319c", "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def populated(log: tuple[Path, str]) -> tuple[Path, list[dict[str, Any]]]:
    """Ten records over varied kinds, actors, targets, decisions and traces, each in
    its own transaction a few milliseconds apart (so that times differ)."""
    data, _ = log
    spec = [
        ("decision", "alice", "libvirt/vm-1", "d-1", T1),
        ("approval", "bob", "libvirt/vm-1", "d-1", T1),
        ("outcome", "", "libvirt/vm-1", "d-1", T1),
        ("decision", "alice", "libvirt/vm-2", "d-2", T2),
        ("denial", "", "libvirt/vm-2", "d-2", T2),
        ("decision", "carol", "libvirt/vm-3", "d-3", ""),
        ("halt", "carol", "", "", ""),
        ("decision", "alice", "libvirt/vm-1", "d-4", ""),
        ("resume", "carol", "", "", ""),
        ("decision", "bob", "libvirt/vm-2", "d-5", T2),
    ]
    drafts = [
        Draft(kind, {"n": n}, actor=actor, target=target, decision_id=did, trace_id=trace)
        for n, (kind, actor, target, did, trace) in enumerate(spec)
    ]
    _append(data, drafts, pause=0.003)
    everything = [open_record(e).record.to_json() for e in _envelopes(data)]
    assert len(everything) == 11
    times = [r["time"] for r in everything]
    assert times == sorted(set(times)), "set-up: record times should be distinct and ascending"
    return data, everything


def test_query_filters(populated: tuple[Path, list[dict[str, Any]]], gg: Govgate) -> None:
    data, everything = populated
    t = [r["time"] for r in everything]

    def query(*args: str) -> list[dict[str, Any]]:
        r = gg("ledger", "query", "--data", data, *args)
        assert r.code == 0, r
        return r.json_lines()

    def where(**want: str) -> list[dict[str, Any]]:
        return [r for r in everything if all(r[k] == v for k, v in want.items())]

    assert query() == everything
    cases: list[tuple[list[str], list[dict[str, Any]]]] = [
        (["--kind", "decision"], where(kind="decision")),
        (["--actor", "alice"], where(actor="alice")),
        (["--target", "libvirt/vm-2"], where(target="libvirt/vm-2")),
        (["--decision-id", "d-1"], where(decision_id="d-1")),
        (["--trace-id", T2], where(trace_id=T2)),
        (["--kind", "decision", "--actor", "alice"], where(kind="decision", actor="alice")),
        (["--from-index", "3", "--to-index", "7"], everything[3:7]),
        (["--from-index", "9"], everything[9:]),
        (["--since", t[5]], everything[5:]),
        (["--until", t[5]], everything[:5]),
        (["--since", t[3], "--until", t[8]], everything[3:8]),
        (["--kind", "decision", "--since", t[5]], where(kind="decision")[2:]),
        (["--limit", "3"], everything[:3]),
        (["--kind", "decision", "--page-size", "2"], where(kind="decision")),
        (["--kind", "decision", "--page-size", "2", "--limit", "3"], where(kind="decision")[:3]),
        (["--page-size", "3", "--limit", "7"], everything[:7]),
        (["--kind", "expiry"], []),
    ]  # fmt: skip
    for args, expected in cases:
        assert query(*args) == expected, args
        assert len(expected) < len(everything), f"set-up: {args} should filter something"
    assert len(where(kind="decision")) > 4, "set-up: paging needs more than two pages"
    assert [r["index"] for r in where(kind="decision")[2:]] == [6, 8, 10]
    assert query("--page-size", "2") == everything  # six pages, nothing lost or repeated

    # The same instant written with another UTC offset selects the same records.
    plus2 = dt.timezone(dt.timedelta(hours=2))
    shifted = dt.datetime.fromisoformat(t[5].replace("Z", "+00:00")).astimezone(plus2)
    assert shifted.isoformat().endswith("+02:00")
    assert query("--since", shifted.isoformat()) == everything[5:]

    for bad in (["--since", "yesterday"], ["--until", "2026-01-01T00:00:00"],
                ["--since", "0001-01-01T00:00:00+01:00"],  # before the year 1 in UTC
                ["--until", "9999-12-31T23:59:59-01:00"]):  # fmt: skip
        r = gg("ledger", "query", "--data", data, *bad)
        assert r.code == 2, r
        assert bad[0] in r.msg, r
        assert "Traceback" not in r.err, r
    r = gg("ledger", "query", "--data", data.parent / "nowhere")
    assert r.code == 1
    assert "no ledger" in r.msg, r


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["ledger", "query", "--from-index", "5", "--to-index", "2"], "index"),
        (["ledger", "export", "--out", "{tmp}/no/such/dir/x.jsonl"], "no/such/dir"),
    ],
    ids=["query-from-after-to", "export-into-missing-dir"],
)
def test_bad_arguments_give_one_line_errors_not_tracebacks(
    tmp_path: Path, log: tuple[Path, str], gg: Govgate, args: list[str], word: str
) -> None:
    """The CLI promises: errors exit non-zero with one line that says what to do."""
    data, _ = log
    _append(data, _notes(6))
    argv = [a.format(tmp=tmp_path) for a in args]
    r = gg.sub(*argv[:2], "--data", data, *argv[2:])
    assert r.code in (1, 2), r
    assert "Traceback" not in r.err, f"a traceback instead of an error message: {r}"
    assert word in r.msg, r


# -- checkpoints and proofs ----------------------------------------------------------------


def test_checkpoint_note_verifies_and_sizes_are_kept(log: tuple[Path, str], gg: Govgate) -> None:
    data, vkey = log
    verifier = NoteVerifier.from_key_string(vkey)
    _append(data, _notes(5))

    r = gg("ledger", "checkpoint", "--data", data)
    assert r.code == 0, r
    cp = open_checkpoint(r.out, [verifier], origin=ORIGIN)
    assert cp.size == 6
    assert cp.root == root_of([leaf_hash(e) for e in _envelopes(data)])
    assert gg("ledger", "checkpoint", "--data", data).out == r.out, "no new records: same note"

    _append(data, _notes(3))
    later = gg("ledger", "checkpoint", "--data", data)
    cp2 = open_checkpoint(later.out, [verifier], origin=ORIGIN)
    assert cp2.size == 9
    assert cp2.root == root_of([leaf_hash(e) for e in _envelopes(data)])

    assert gg("ledger", "checkpoint", "--data", data, "--size", "6").out == r.out
    assert gg("ledger", "checkpoint", "--data", data, "--size", "9").out == later.out
    for size, why in (("7", "no checkpoint was signed for size 7"),
                      ("100", "size 100 is beyond the log's size 9")):  # fmt: skip
        missing = gg("ledger", "checkpoint", "--data", data, "--size", size)
        assert missing.code == 1, missing
        assert why in missing.msg, missing
        assert missing.out == ""
    assert gg("ledger", "checkpoint", "--data", data, "--size", "0").code == 2


def test_inclusion_proofs_verify_against_the_signed_root(
    log: tuple[Path, str], gg: Govgate
) -> None:
    data, vkey = log
    verifier = NoteVerifier.from_key_string(vkey)
    _append(data, _notes(10))
    cp = open_checkpoint(gg("ledger", "checkpoint", "--data", data).out, [verifier])
    envelopes = _envelopes(data)
    assert cp.size == len(envelopes) == 11

    for index in (0, 1, 5, 10):
        r = gg("ledger", "proof", "--data", data, "--index", str(index))
        assert r.code == 0, r
        p = r.json()
        assert set(p) == {"index", "tree_size", "leaf", "leaf_hash", "proof"}
        assert (p["index"], p["tree_size"]) == (index, cp.size)
        leaf = _b64(p["leaf"])
        assert leaf == envelopes[index]
        lh = _b64(p["leaf_hash"])
        assert lh == hashlib.sha256(b"\x00" + leaf).digest()
        proof = [_b64(h) for h in p["proof"]]
        assert all(len(h) == 32 for h in proof)
        verify_inclusion(lh, index, cp.size, proof, cp.root)
        with pytest.raises(ProofError):  # the check is not vacuous
            verify_inclusion(lh, (index + 1) % cp.size, cp.size, proof, cp.root)

    # Against an earlier tree size, whose root we compute ourselves.
    p = gg("ledger", "proof", "--data", data, "--index", "3", "--size", "6").json()
    assert p["tree_size"] == 6
    root6 = root_of([leaf_hash(e) for e in envelopes[:6]])
    verify_inclusion(_b64(p["leaf_hash"]), 3, 6, [_b64(h) for h in p["proof"]], root6)

    beyond = gg("ledger", "proof", "--data", data, "--index", "11")
    assert beyond.code == 1, beyond
    assert "index 11 is not in a tree of size 11" in beyond.msg, beyond


def test_consistency_proof_between_stored_checkpoints(log: tuple[Path, str], gg: Govgate) -> None:
    data, vkey = log
    verifier = NoteVerifier.from_key_string(vkey)
    _append(data, _notes(4))
    old = open_checkpoint(gg("ledger", "checkpoint", "--data", data).out, [verifier])
    _append(data, _notes(7))
    new = open_checkpoint(gg("ledger", "checkpoint", "--data", data).out, [verifier])
    assert (old.size, new.size) == (5, 12)

    for extra in ([], ["--size", str(new.size)]):
        r = gg("ledger", "consistency", "--data", data, "--old", str(old.size), *extra)
        assert r.code == 0, r
        p = r.json()
        assert set(p) == {"old_size", "tree_size", "proof"}
        assert (p["old_size"], p["tree_size"]) == (old.size, new.size)
        proof = [_b64(h) for h in p["proof"]]
        verify_consistency(old.size, new.size, proof, old.root, new.root)
        with pytest.raises(ProofError):  # a different old root is caught
            verify_consistency(old.size, new.size, proof, new.root, new.root)

    bad = gg("ledger", "consistency", "--data", data, "--old", "13")
    assert bad.code == 1, bad
    assert "old size 13 is not within 1..12" in bad.msg, bad


# -- export and verify (subprocess) -----------------------------------------------------------


def _record_line(lines: list[bytes], index: int) -> int:
    """The position in ``lines`` of record ``index``."""
    for pos, line in enumerate(lines):
        if line.startswith(b'{"payload"') and open_record(line).record.index == index:
            return pos
    raise AssertionError(f"record {index} not in export")


def _flip(line: bytes, offset: int) -> bytes:
    """``line`` with the base64 character at ``offset`` replaced by another one."""
    old = line[offset : offset + 1]
    assert len(old) == 1
    assert old in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    new = b"B" if old == b"A" else b"A"
    return line[:offset] + new + line[offset + 1 :]


def test_export_never_writes_over_the_data_directorys_own_files(
    tmp_path: Path, log: tuple[Path, str], gg: Govgate
) -> None:
    data, _ = log
    _append(data, _notes(2))
    keep = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    targets = [data / "ledger.db", data / "ledger.db-wal", data / "ledger.db.lookup",
               data / "keys" / "log.key", data / "keys" / "new.jsonl", data / "hmac.salt",
               data / "keys" / ".." / "ledger.db"]  # fmt: skip
    for out in targets:
        r = gg("ledger", "export", "--data", data, "--out", out)
        assert r.code == 2, (out, r)
        assert "one of the data directory's own files" in r.msg, (out, r)
    assert {p: p.read_bytes() for p in keep} == keep
    assert gg("ledger", "export", "--data", data, "--out", data).code == 2  # a directory
    beside = data / "export.jsonl"  # the data directory itself is fine for other files
    assert gg("ledger", "export", "--data", data, "--out", beside).code == 0
    assert gg("ledger", "query", "--data", data).code == 0


def test_export_verifies_and_one_changed_byte_is_named(
    tmp_path: Path, log: tuple[Path, str], gg: Govgate
) -> None:
    data, vkey = log
    _append(data, _notes(20))
    export = tmp_path / "export.jsonl"
    r = gg.sub("ledger", "export", "--data", data, "--out", export)
    assert r.code == 0, r
    assert "exported 21 records" in r.msg, r

    ok = gg.sub("ledger", "verify", export, "--key", vkey)
    assert ok.code == 0, ok
    assert "OK 21 records" in ok.msg, ok
    assert open_checkpoint(ok.out, [NoteVerifier.from_key_string(vkey)]).size == 21
    fast = gg.sub("ledger", "verify", export, "--key", vkey, "--no-signatures")
    assert fast.code == 0, fast
    assert "record signatures not checked" in fast.msg, fast

    lines = export.read_bytes().split(b"\n")
    pos = _record_line(lines, 7)
    payload_at = len(b'{"payload":"') + 40
    sig_at = lines[pos].index(b'"sig":"') + len(b'"sig":"') + 10
    for offset in (payload_at, sig_at):
        bad_lines = list(lines)
        bad_lines[pos] = _flip(lines[pos], offset)
        tampered = tmp_path / f"tampered-{offset}.jsonl"
        tampered.write_bytes(b"\n".join(bad_lines))
        assert len(tampered.read_bytes()) == len(export.read_bytes())
        bad = gg.sub("ledger", "verify", tampered, "--key", vkey)
        assert bad.code == 1, bad
        assert "FAILED" in bad.msg, bad
        assert "record 7" in bad.msg, bad
        assert bad.out == "", "a failed verification must not print a checkpoint"
    # Without signature checks a payload change is still caught (maybe at a later record).
    tampered = tmp_path / f"tampered-{payload_at}.jsonl"
    bad = gg.sub("ledger", "verify", tampered, "--key", vkey, "--no-signatures")
    assert bad.code == 1, bad


def test_verify_refuses_wrong_keys_and_bad_arguments(
    tmp_path: Path, log: tuple[Path, str], gg: Govgate
) -> None:
    data, vkey = log
    _append(data, _notes(3))
    export = tmp_path / "export.jsonl"
    assert gg("ledger", "export", "--data", data, "--out", export).code == 0

    impostor = NoteSigner.generate(ORIGIN).verifier_key  # same log name, another key
    r = gg.sub("ledger", "verify", export, "--key", impostor)
    assert r.code == 1, r
    assert "not one of this log's keys" in r.msg, r
    other = NoteSigner.generate("other.example/log").verifier_key
    r = gg.sub("ledger", "verify", export, "--key", other)
    assert r.code == 1, r
    assert "other.example/log" in r.msg, r

    r = gg.sub("ledger", "verify", tmp_path / "missing.jsonl", "--key", vkey)
    assert r.code == 2, r
    assert "is not a file" in r.msg, r
    for key in ("nonsense", vkey[:-4], vkey.replace("+", "+0", 1)):
        r = gg.sub("ledger", "verify", export, "--key", key)
        assert r.code == 2, r
        assert "--key" in r.msg, r
    r = gg.sub("ledger", "verify", export)
    assert r.code == 2, r
    assert "--key" in r.msg, r

    # A truncated export (last checkpoint line dropped) fails too.
    lines = export.read_bytes().split(b"\n")
    assert lines[-2].startswith(b'{"checkpoint"')
    truncated = tmp_path / "truncated.jsonl"
    truncated.write_bytes(b"\n".join([*lines[:-2], b""]))
    r = gg.sub("ledger", "verify", truncated, "--key", vkey)
    assert r.code == 1, r
    assert "no signed checkpoint covers" in r.msg, r


def test_verify_shows_progress_unless_quiet(
    tmp_path: Path, log: tuple[Path, str], gg: Govgate
) -> None:
    data, vkey = log

    async def many() -> None:
        async with DataDir(data).open_ledger(QUIET) as ledger:
            await ledger.append_many(_notes(5000))

    asyncio.run(many())
    export = tmp_path / "export.jsonl"
    assert gg("ledger", "export", "--data", data, "--out", export).code == 0
    r = gg("ledger", "verify", export, "--key", vkey)
    assert r.code == 0, r
    assert "verifying" in r.msg, r
    assert "5001/5001 records" in r.msg, r
    quiet = gg("ledger", "verify", export, "--key", vkey, "--quiet")
    assert quiet.code == 0, quiet
    assert "verifying" not in quiet.msg, quiet
    assert "OK 5001 records" in quiet.msg, quiet


# -- rotation ----------------------------------------------------------------------------


def test_rotated_log_verifies_with_the_original_and_the_new_key(
    tmp_path: Path, log: tuple[Path, str], gg: Govgate
) -> None:
    data, old_key = log
    old_id = NoteVerifier.from_key_string(old_key).key_id
    _append(data, _notes(3))

    r = gg.sub("keys", "rotate", "--data", data, "--reason", "scheduled")
    assert r.code == 0, r
    new_key = r.out.strip()
    new = NoteVerifier.from_key_string(new_key)
    assert new_key != old_key
    assert new.name == ORIGIN
    assert "rotated; key record at index 4" in r.msg, r
    assert gg.sub("keys", "public", "--data", data).out.strip() == new_key

    retired = data / "keys" / "retired" / f"{old_id}.key"
    assert retired.is_file()
    assert _mode(retired) == 0o600
    assert NoteSigner.from_key_string(retired.read_text().strip()).verifier_key == old_key
    assert _mode(data / "keys" / "log.key") == 0o600
    assert not (data / "keys" / "log.key.next").exists()

    for n in range(3):
        a = gg("ledger", "append", "--data", data, "--kind", "note", "--body", f'{{"after": {n}}}')
        assert a.code == 0, a
        assert a.json()["key_id"] == new.key_id

    keys = gg("ledger", "query", "--data", data, "--kind", "key").json_lines()
    assert [k["index"] for k in keys] == [0, 4]
    assert keys[1]["key_id"] == old_id, "the rotation record is signed by the old key"
    assert keys[1]["body"]["key"] == new_key
    assert keys[1]["body"]["reason"] == "scheduled"

    export = tmp_path / "export.jsonl"
    assert gg.sub("ledger", "export", "--data", data, "--out", export).code == 0
    for trusted in (old_key, new_key):
        v = gg.sub("ledger", "verify", export, "--key", trusted)
        assert v.code == 0, v
        assert f"keys {old_id}, {new.key_id}" in v.msg, v
    # The last checkpoint is signed by the new key only.
    last = gg.sub("ledger", "verify", export, "--key", new_key, "-q").out
    open_checkpoint(last, [new])
    with pytest.raises(NoteError):
        open_checkpoint(last, [NoteVerifier.from_key_string(old_key)])


# -- demo ----------------------------------------------------------------------------------


def test_demo_runs_and_catches_tampering(tmp_path: Path, gg: Govgate) -> None:
    data = tmp_path / "demo"
    # A relative --data, as the README's ./scripts/demo.sh runs it (demo-data).
    r = gg.sub("demo", "--data", "demo", "--records", "200", "--pace", "0", timeout=120,
               cwd=tmp_path)  # fmt: skip
    assert r.code == 0, r
    text = " ".join(r.out.split())
    assert "Tampering is caught" in text, r
    assert re.search(r"changed one byte on line \d+: record \d+", text), r
    assert "went unnoticed" not in text
    # What the demo exported verifies on its own, with the key it printed.
    vkey = gg.sub("keys", "public", "--data", data).out.strip()
    assert vkey in text
    v = gg.sub("ledger", "verify", data / "export.jsonl", "--key", vkey, "-q")
    assert v.code == 0, v
    t = gg.sub("ledger", "verify", data / "export-tampered.jsonl", "--key", vkey, "-q")
    assert t.code == 1, t
    assert "Scoring 200 proposals with the risk model" in text
    assert "-> deny" in text or "-> approval" in text
    # The gateway over gRPC: a refused self-approval, reviews, the stop switch, a rollback.
    assert "PERMISSION_DENIED" in text
    assert "it needs the role approver" in text  # the demo's roles file is in force
    assert "alice approves" in text
    assert "bob denies" in text
    assert "HALTED" in text
    assert "ROLLED_BACK" in text
    # A second run on the same directory: the gateway rebuilds its state and goes on.
    again = gg.sub("demo", "--data", data, "--records", "20", "--pace", "0", timeout=120)
    assert again.code == 0, again
    text = " ".join(again.out.split())
    assert "rebuilt from" in text
    assert "ROLLED_BACK" in text


def test_demo_adds_the_identities_a_data_directorys_ca_lacks(tmp_path: Path, gg: Govgate) -> None:
    """The README's tour makes a CA with two identities; the demo needs a third (bob)."""
    data = tmp_path / "tour"
    assert gg("keys", "generate", "--data", data).code == 0
    made = gg("certs", "init", "--data", data, "--identity", "engine-1", "--identity", "alice")
    assert made.code == 0, made
    assert not (data / "certs" / "bob.pem").exists()
    r = gg.sub("demo", "--data", data, "--records", "20", "--pace", "0", timeout=120)
    assert r.code == 0, r
    assert (data / "certs" / "bob.pem").exists()
    assert "ROLLED_BACK" in " ".join(r.out.split())


def test_demo_decisions_carry_reproducible_scores(tmp_path: Path, gg: Govgate) -> None:
    """An auditor re-scores a recorded decision from its body alone and gets the same bits."""
    from adapters.action import Action, RuntimeState
    from explain.features import FEATURE_NAMES, Context, featurize
    from explain.history import parse_time
    from explain.registry import Registry
    from explain.scorer import Scorer

    data = tmp_path / "demo"
    assert gg.sub("demo", "--data", data, "--records", "60", "--pace", "0", timeout=120).code == 0
    decisions = gg("ledger", "query", "--data", data, "--kind", "decision").json_lines()
    engine = "spiffe://govgate.local/engine-1"
    sample = [d for d in decisions if d["actor"] != engine]
    served = [d for d in decisions if d["actor"] == engine]  # made by the gateway over gRPC
    assert len(sample) == 60
    assert len(served) >= 8
    verdicts = {d["body"]["verdict"] for d in sample}
    assert verdicts <= {"execute", "approval", "deny"}
    assert len(verdicts) >= 2
    assert {"EXECUTING", "PENDING_APPROVAL", "DENIED", "HALTED"} <= {
        d["body"]["verdict"] for d in served
    }
    for d in [*sample[:5], *(x for x in served if "risk" in x["body"])]:
        body = d["body"]
        model = Registry(data / "models").load(body["model_id"])
        # From the vector the record says the model scored: every bit of the explanation.
        seen = body["features"]
        vector = np.array([[math.nan if seen[n] is None else float(seen[n])
                            for n in FEATURE_NAMES]], dtype=np.float32)  # fmt: skip
        again = Scorer(model).score(vector).explanation(0).to_record()
        assert again == {k: body[k] for k in again}, d["index"]
        # From the recorded action and state: the same score. (The vector itself may differ
        # in its last bits: the record keeps the target's uptime in whole seconds.)
        x = featurize(
            Action.from_json(body["action"]),
            RuntimeState.from_json(body["state"]),
            Context(now=parse_time(body["scored_at"], "scored_at")),
        )
        derived = Scorer(model).score(x[None, :]).explanation(0).to_record()
        for key in ("risk", "contributions", "base_value"):
            assert derived[key] == body[key], (d["index"], key)
