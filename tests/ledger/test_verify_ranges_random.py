"""Randomized, seeded differential tests of fast verification in byte ranges.

Fast verification (``signatures=False``) scans an export file in byte ranges
(:func:`ledger._scan.scan_byte_range`, in-process or in worker processes) and
an export read from a stream in chunks of records, and joins the results in
order (:func:`ledger.verify._join`). Whatever the cut, the verdict must be the
one of a scan of the whole file in one range: the failing record index *and*
line, or the same size, root, checkpoint count and key ids. Against full
verification (``signatures=True``) only the index is compared (it names the
edited record, fast mode may name its successor's line or none). Every case is
drawn from a ``random.Random`` with a fixed seed, so a failure reproduces.

What is checked, on three real ledgers (built with ``open_ledger``, one key
rotation, bodies and targets of very different sizes, a checkpoint every 1, 2
and 7 records):

1. The untouched export: fast mode, in random range sizes (1..5000 bytes), in
   ranges cut at arbitrary offsets (every line start, so that a range may hold
   nothing but a checkpoint line; line starts +-1; random offsets), through the
   process pool and as a stream in random chunk sizes, gives the result of
   full verification (``signatures=True``).
2. 450 random single changes (a byte anywhere, payloads decoded, edited and
   re-encoded so that the envelope stays well-formed: claimed index -1, with
   leading zeros or huge, kind, key id, time, prev, trace id, target; lines
   dropped, duplicated, swapped, moved, inserted, emptied; the file truncated or
   followed by garbage): every way of cutting gives one verdict, fast mode fails
   exactly when full verification fails, and it fails whenever a record line
   changed. 210 pairs of changes: every way of cutting the *file* gives one
   verdict.
3. 120 exports with lines around the verifier's maximum length (``_MAX_LINE``
   made small): the same, and a line too long or not ended
   fails with record index None.
4. The bulk scanner (``_scan._Bulk``, whole runs and fed in random batches) gives
   exactly ``_scan._scan_each``'s result or declines, and declines whenever the
   reference finds a fault, on 2400 random runs of lines of changed exports
   (most ending with a record whose payload was edited, where the chain after
   it cannot give the edit away).
5. 160 logs crafted record by record with :func:`ledger.record.seal` (correct chain,
   but now and then a record or checkpoint signed by the wrong key, a time going
   back, a wrong checkpoint size or root, a key record naming another log's key,
   a wrong header size or trusted key): fast mode names the record full
   verification names, however it is cut.

Ways of cutting: one range; two random ``range_bytes`` (1..5000 and 150..1500);
arbitrary cut offsets (``_cut`` repeats ``_verify_chunked``'s join loop over
:func:`~ledger._scan.scan_byte_range`); a stream in 1..20 records a chunk; now
and then the process pool (``threads=2``). About 30 s on two cores.

The tests at the end pin down three bugs these checks found (fixed): a key record
that kept the old key right after a rotation passed, a rotation to the key already
active failed, and a stream hid an earlier fault behind a truncated last line.
"""

from __future__ import annotations

import asyncio
import binascii
import datetime as dt
import io
import itertools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from ledger import DataDir, Draft, LedgerConfig, NoteSigner, NoteVerifier, _scan, verify
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.errors import VerificationError
from ledger.export import EXPORT_FORMAT, export_ledger
from ledger.merkle import Frontier
from ledger.record import ZERO_HASH, seal

WHOLE = 1 << 30  # one range holds any test export
Verdict = tuple[Any, ...]
_PREFIX = b'{"payload":"'
_CHECKPOINT = b'{"checkpoint"'
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


# ------------------------------------------------------------------ verdicts


def _outcome(run: Callable[[], verify.VerifyResult]) -> Verdict:
    try:
        r = run()
    except VerificationError as e:
        return ("fail", e.index, e.line)
    return ("ok", r.size, r.root, r.checkpoints, tuple(r.key_ids))


def _fast(path: Path, key: NoteVerifier, range_bytes: int, threads: int = 1) -> Verdict:
    return _outcome(
        lambda: verify.verify_export(
            path, key, signatures=False, range_bytes=range_bytes, threads=threads
        )
    )


def _stream(data: bytes, key: NoteVerifier, chunk: int) -> Verdict:
    return _outcome(
        lambda: verify.verify_stream(
            io.BytesIO(data), key, signatures=False, stream_chunk=chunk, threads=1
        )
    )


def _full(path: Path, key: NoteVerifier) -> Verdict:
    return _outcome(lambda: verify.verify_export(path, key, signatures=True, threads=2))


def _cut(path: Path, data: bytes, key: NoteVerifier, cuts: list[int]) -> Verdict:
    """Fast mode with ranges ending at ``cuts`` (any offsets), joined as ``_verify_chunked``
    joins its ranges (its loop, repeated so that any cut can be tried). The header must be
    intact."""

    def run() -> verify.VerifyResult:
        header_end = data.index(b"\n") + 1
        total = orjson.loads(data[:header_end])["size"]
        st = verify._State(
            key, False, result=verify.VerifyResult(key.name, signatures_checked=False)
        )
        bounds = sorted({header_end, len(data), *(c for c in cuts if header_end < c < len(data))})
        lines_before = 2
        for begin, end in itertools.pairwise(bounds):
            res = _scan.scan_byte_range(str(path), begin, end, verify._MAX_LINE)
            verify._join(st, res, lines_before)
            lines_before += res.lines
        return verify._finish(st, total, key)

    return _outcome(run)


def _status(v: Verdict) -> Verdict:
    """Failed or not, and everything about a success."""
    return v if v[0] == "ok" else ("fail",)


def _index(v: Verdict) -> Verdict:
    """The verdict without the line (full verification may name another line)."""
    return v[:2] if v[0] == "fail" else v


def _random_cuts(rng: random.Random, data: bytes) -> list[int]:
    starts = [k + 1 for k, c in enumerate(data) if c == ord("\n")]
    how = rng.randrange(4)
    if how == 0:  # every line its own range: checkpoint lines alone, records alone
        return starts
    if how == 1:
        return [s for s in starts if rng.random() < 0.3]
    if how == 2:  # just before and just after line starts
        return [s + rng.choice((-1, 1)) for s in starts if rng.random() < 0.5]
    return sorted(rng.randrange(len(data) + 1) for _ in range(rng.randint(1, 12)))


def _header_ok(data: bytes, header: bytes) -> bool:
    return data.startswith(header + b"\n")


def _every_way(
    rng: random.Random,
    path: Path,
    data: bytes,
    key: NoteVerifier,
    header: bytes,
    *,
    stream: bool = True,
    pool: bool = False,
) -> tuple[Verdict, dict[str, Verdict]]:
    """The whole-range verdict, and the verdict of other random cuts of the same export."""
    whole = _fast(path, key, WHOLE)
    others: dict[str, Verdict] = {}
    # Any size (the smallest are rare: a range costs a file open, and cuts at every line
    # start are made below), and one of a few lines.
    for size in (rng.randint(1, 5000), rng.randint(150, 1500)):
        others[f"range_bytes={size}"] = _fast(path, key, size)
    if _header_ok(data, header):
        cuts = _random_cuts(rng, data)
        others[f"cuts={cuts}"] = _cut(path, data, key, cuts)
    if stream:
        chunk = rng.randint(1, 20)
        others[f"stream_chunk={chunk}"] = _stream(data, key, chunk)
    if pool:
        size = rng.randint(200, 3000)
        others[f"pool, range_bytes={size}"] = _fast(path, key, size, threads=2)
    return whole, others


def _assert_same(name: str, whole: Verdict, others: dict[str, Verdict]) -> None:
    for how, got in others.items():
        assert got == whole, f"{name}: {how} gives {got}, one range gives {whole}"


# ------------------------------------------------------------------ real ledgers


@dataclass(frozen=True)
class Built:
    every: int
    path: Path
    data: bytes
    first: NoteVerifier
    second: NoteVerifier

    @property
    def lines(self) -> list[bytes]:
        return self.data.split(b"\n")[:-1]


_TARGETS = ("", "t", 'a "quoted" \\ target', "ünïcödé ☃", "\n\t\x01", "x" * 350, "y" * 40)


def _draft(rng: random.Random, i: int) -> Draft:
    size = rng.choice((0, 1, 20, 200, 900, 3000))
    body = {"i": i, "text": "b" * size, "n": rng.randint(-(10**6), 10**6)}
    trace = rng.choice(("", f"{rng.getrandbits(128) | 1:032x}"))
    return Draft(
        rng.choice(("decision", "note", "approval", "outcome")),
        body,
        actor=rng.choice(("", "alice")),
        target=rng.choice(_TARGETS),
        trace_id=trace,
    )


@pytest.fixture(scope="module", params=[1, 2, 7], ids=lambda every: f"every{every}")
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    every: int = request.param
    rng = random.Random(1000 + every)
    base = tmp_path_factory.mktemp(f"ranges{every}")
    d = DataDir(base / "data")
    first = d.generate_key("ranges.test/log").verifier
    path = base / "export.jsonl"

    async def build() -> NoteVerifier:
        config = LedgerConfig(checkpoint_every=every, checkpoint_interval=0)
        async with d.open_ledger(config) as log:
            for i in range(rng.randint(12, 20)):
                await log.append(_draft(rng, i))
            second = (await d.rotate(log, "test")).verifier
            for i in range(rng.randint(12, 20)):
                await log.append(_draft(rng, i))
            await export_ledger(log, path)
        return second

    second = asyncio.run(build())
    return Built(every, path, path.read_bytes(), first, second)


# ------------------------------------------------------------------ mutations


def _garbage(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randint(1, 40)).replace(b"\n", b"")


def _digits_at(payload: bytes) -> tuple[int, int]:
    """Where the digits of the payload's last ``"index":`` are."""
    at = payload.rfind(b'"index":') + len(b'"index":')
    end = at
    while end < len(payload) and payload[end : end + 1].isdigit():
        end += 1
    return at, end


def _field(payload: bytes, name: bytes) -> tuple[int, int]:
    """Where the string value of the payload's last ``"name":"`` field is."""
    at = payload.rfind(b'"' + name + b'":"') + len(name) + 4
    return at, payload.index(b'"', at)


def _edit_payload(rng: random.Random, raw: bytes, key_ids: list[str]) -> tuple[str, bytes]:
    """Decode a record's payload, change it, encode it again (the envelope stays well-formed)."""
    q = raw.index(b'"', len(_PREFIX))
    p = binascii.a2b_base64(raw[len(_PREFIX) : q])
    tail = raw[q:]
    what = rng.choice(
        ("index", "index", "kind", "key_id", "time", "prev", "trace", "target", "byte")
    )
    if what == "index":
        at, end = _digits_at(p)
        value = int(p[at:end])
        new = rng.choice(
            ("-1", f"0{value}", "00", str(10**19 - 1), str(10**18), str(value + 1), "1e3", "")
        )
        p = p[:at] + new.encode() + p[end:]
    elif what == "kind":
        at, end = _field(p, b"kind")
        p = p[:at] + rng.choice((b"key", b"KEY", b"", b"a" * 65, b"note")) + p[end:]
    elif what == "key_id":
        at, end = _field(p, b"key_id")
        new_id = rng.choice([*key_ids, "0000000g", "ABCDEF01"]).encode()
        p = p[:at] + new_id + p[end:]
        if rng.random() < 0.5:  # the envelope's keyid too
            tail = re.sub(rb'"keyid":"[^"]*"', b'"keyid":"' + new_id + b'"', tail)
    elif what == "time":
        at, end = _field(p, b"time")
        old = p[at:end]
        new_time = rng.choice((b"2000-01-01T00:00:00.000000Z", b"2999-01-01T00:00:00.000000Z"))
        p = p[:at] + rng.choice((new_time, old[:-1], old + b"0", old.replace(b"T", b" "))) + p[end:]
    elif what == "prev":
        at, end = _field(p, b"prev")
        p = p[:at] + rng.choice((b"0" * 64, p[at:end].upper(), p[at : end - 1])) + p[end:]
    elif what == "trace":
        at, end = _field(p, b"trace_id")
        p = p[:at] + rng.choice((b"", b"a" * 31, b"A" * 32, b"1" * 32)) + p[end:]
    elif what == "target":
        at, end = _field(p, b"target")
        inside = rng.choice((b'\\"index\\":0,', b'"index":0,', b"z" * 400, b"\\", b"\n"))
        p = p[:at] + inside + p[end:]
    else:
        pos = rng.randrange(max(0, len(p) - 300), len(p)) if rng.random() < 0.7 else 0
        pos = rng.randrange(len(p)) if pos == 0 else pos
        char = bytes([rng.choice(b'0123456789abcdefABCDEF"\\:,{}\n -Z.')])
        edit = rng.randrange(3)
        p = p[:pos] + (b"" if edit == 2 else char) + p[pos + (edit != 1) :]
    return f"payload {what}", _PREFIX + binascii.b2a_base64(p, newline=False) + tail


_MUTATIONS = (
    *("byte", "byte", "byte", "payload", "payload", "payload", "drop", "duplicate", "swap"),
    *("move", "insert", "empty", "truncate", "garbage"),
)


def _mutate(rng: random.Random, lines: list[bytes], key_ids: list[str]) -> tuple[str, bytes]:
    """One random change to an export (``lines``: its lines, header first, no newlines)."""
    out = list(lines)
    kind = rng.choice(_MUTATIONS)
    k = rng.randrange(1, len(out))
    name = f"{kind} at line {k + 1}"
    if kind == "byte":
        k = 0 if rng.random() < 0.03 else k
        raw = bytearray(out[k])
        pos = rng.randrange(len(raw))
        new = rng.choice((rng.choice(_B64), rng.randrange(256), ord('"'), ord("\\"), ord("\n")))
        raw[pos] = new if new != raw[pos] else new ^ 1
        out[k] = bytes(raw)
        name = f"byte {pos} of line {k + 1} := {raw[pos]}"
    elif kind == "payload":
        records = [i for i, raw in enumerate(out) if raw.startswith(_PREFIX)]
        k = rng.choice(records)
        what, out[k] = _edit_payload(rng, out[k], key_ids)
        name = f"{what} of line {k + 1}"
    elif kind == "drop":
        del out[k]
    elif kind == "duplicate":
        out.insert(k, out[k])
    elif kind == "swap":
        j = k + 1 if k + 1 < len(out) and rng.random() < 0.7 else rng.randrange(1, len(out))
        out[j], out[k] = out[k], out[j]
        name = f"swap lines {k + 1}, {j + 1}"
    elif kind == "move":
        j = rng.randrange(1, len(out))
        out.insert(j, out.pop(k))
        name = f"move line {k + 1} to {j + 1}"
    elif kind == "insert":
        new_line = rng.choice(
            (out[rng.randrange(1, len(out))], _garbage(rng), b'{"checkpoint":"x"}', _PREFIX)
        )
        out.insert(k, new_line)
    elif kind == "empty":
        for _ in range(rng.randint(1, 3)):
            out.insert(rng.randrange(1, len(out) + 1), b"")
    data = b"\n".join(out) + b"\n"
    if kind == "truncate":
        at = rng.randrange(len(out[0]) + 1, len(data))
        data, name = data[:at], f"truncate at byte {at}"
    elif kind == "garbage":
        data += _garbage(rng) + rng.choice((b"", b"\n"))
    return name, data


def _records(data: bytes) -> list[bytes]:
    """Every line after the header that is not a checkpoint line, a partial last one too."""
    return [raw for raw in data.split(b"\n")[1:] if not raw.startswith(_CHECKPOINT)]


def _key_ids(b: Built) -> list[str]:
    return [b.first.key_id, b.second.key_id]


# ------------------------------------------------------------------ 1. untouched


def test_untouched_export_gives_the_full_result_however_it_is_cut(built: Built) -> None:
    rng = random.Random(11 + built.every)
    expected = _full(built.path, built.first)
    assert expected[0] == "ok"
    assert _full(built.path, built.second) == expected
    header = built.lines[0]
    for key in (built.first, built.second):
        whole, others = _every_way(
            rng, built.path, built.data, key, header, pool=key is built.first
        )
        assert whole == expected
        _assert_same("untouched", whole, others)
    for size in (1, 7, rng.randint(1, 100), rng.randint(100, 5000)):
        assert _fast(built.path, built.first, size) == expected, size
        chunk = rng.randint(1, 20)
        assert _stream(built.data, built.first, chunk) == expected, chunk
    # Every line start a range start, and ranges from just before or after each line start.
    starts = [k + 1 for k, c in enumerate(built.data) if c == ord("\n")]
    for shift in (0, -1, 1):
        cuts = [s + shift for s in starts]
        assert _cut(built.path, built.data, built.first, cuts) == expected, shift


# ------------------------------------------------------------------ 2. mutations


@pytest.mark.parametrize("seed", range(3))
def test_random_changes_get_one_verdict_however_the_export_is_cut(
    built: Built, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(f"single {built.every} {seed}")
    lines = built.lines
    target = tmp_path / "m.jsonl"
    kinds: dict[str, int] = {}
    for n in range(50):
        name, data = _mutate(rng, lines, _key_ids(built))
        kinds[name.split(" ")[0]] = kinds.get(name.split(" ")[0], 0) + 1
        target.write_bytes(data)
        whole, others = _every_way(
            rng, target, data, built.first, lines[0], pool=n == 0 and seed == 0
        )
        _assert_same(name, whole, others)
        full = _full(target, built.first)
        assert _status(full) == _status(whole), f"{name}: full {full}, fast {whole}"
        if _records(data) != _records(built.data):
            assert whole[0] == "fail", f"{name}: a changed record line is not detected"
    assert len(kinds) >= 8, kinds


def test_pairs_of_changes_get_one_verdict_however_the_file_is_cut(
    built: Built, tmp_path: Path
) -> None:
    """Two faults: the first one wins whatever the cut."""
    rng = random.Random(f"pairs {built.every}")
    target = tmp_path / "m2.jsonl"
    for _ in range(70):
        name1, once = _mutate(rng, built.lines, _key_ids(built))
        if not once.endswith(b"\n"):
            once += b"\n"
        name2, data = _mutate(rng, once.split(b"\n")[:-1], _key_ids(built))
        name = f"{name1}; then {name2}"
        target.write_bytes(data)
        whole, others = _every_way(rng, target, data, built.first, built.lines[0])
        _assert_same(name, whole, others)
        assert _status(_full(target, built.first)) == _status(whole), name


# ------------------------------------------------------------------ 3. long lines


def test_lines_around_the_maximum_length(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line of ``_MAX_LINE`` bytes (newline included) is read; one byte more is refused
    (record index None) wherever it falls in a range, and a last line without its newline is
    refused as truncated. The limit is made small (the verifier passes it to the scanner)."""
    rng = random.Random(f"long {built.every}")
    lines = built.lines
    limit = max(len(raw) for raw in lines) + 1 + rng.randint(0, 3)
    monkeypatch.setattr(verify, "_MAX_LINE", limit)
    target = tmp_path / "long.jsonl"
    assert _fast(built.path, built.first, WHOLE)[0] == "ok"
    for _ in range(40):
        out = list(lines)
        k = rng.randrange(1, len(out))
        want = limit + rng.choice((-1, 0, 1, 2, 100))  # the line's length, newline included
        how = rng.randrange(3)
        if how == 0:  # a record or checkpoint line made longer inside
            raw = out[k]
            at = rng.randrange(len(_PREFIX), len(raw))
            out[k] = raw[:at] + b"A" * max(0, want - 1 - len(raw)) + raw[at:]
            data = b"\n".join(out) + b"\n"
        elif how == 1:  # a long line inserted
            out.insert(k, _PREFIX + b"A" * (want - 1 - len(_PREFIX)))
            data = b"\n".join(out) + b"\n"
        else:  # a long last line, newline or not
            data = b"\n".join(out) + b"\n" + b"B" * want + rng.choice((b"", b"\n"))
        name = f"how {how}, line {k + 1}, length {want}, limit {limit}"
        target.write_bytes(data)
        whole, others = _every_way(rng, target, data, built.first, lines[0])
        _assert_same(name, whole, others)
        assert _status(_full(target, built.first)) == _status(whole), name
        too_long = any(len(raw) + 1 > limit for raw in data.split(b"\n")[:-1]) or (
            len(data) - data.rfind(b"\n") - 1 > limit
        )
        if too_long or not data.endswith(b"\n"):
            assert whole[:2] == ("fail", None), name


# ------------------------------------------------------------------ 4. the bulk scanner


def test_bulk_scan_is_the_reference_scan_or_declines_on_random_runs(built: Built) -> None:
    rng = random.Random(f"bulk {built.every}")
    vouched = declined = faults = 0
    lines = built.lines
    records = [k for k, raw in enumerate(lines) if raw.startswith(_PREFIX)]
    for n in range(200):
        k = 0
        if n % 10 == 0:
            data = built.data
        elif n % 10 < 7:  # a payload edited where the scanners read it, the envelope intact
            out, k = list(lines), rng.choice(records)
            out[k] = _edit_payload(rng, out[k], _key_ids(built))[1]
            data = b"\n".join(out) + b"\n"
        else:
            data = _mutate(rng, lines, _key_ids(built))[1]
        body = data.split(b"\n")[1:-1]
        if not body:
            continue
        for _ in range(4):
            if k and rng.random() < 0.6:  # a run that ends with the edited record: the chain
                at = rng.randrange(k)  # after it cannot give it away
                run = body[at:k]
            else:
                at = rng.randrange(len(body))
                run = body[at : at + rng.randint(1, len(body))]
            first = rng.randint(0, 100)
            each = _scan._scan_each(first, run)
            bulk = _scan._scan_bulk(first, run)
            assert bulk is None or bulk == each, (n, at, len(run))
            if each.error is not None:
                assert bulk is None, f"bulk scan missed {each.error}"
                faults += 1
            # Fed a few lines at a time, as scan_byte_range feeds it.
            fed = _scan._Bulk()
            cut, ok = 0, True
            while ok and cut < len(run):
                step = rng.randint(1, 6)
                ok = fed.add(run[cut : cut + step])
                cut += step
            batched = fed.result(first) if ok else None
            assert batched is None or batched == each, (n, at, len(run), "batched")
            vouched += bulk is not None
            declined += bulk is None
    assert vouched > 50, (vouched, declined, faults)
    assert declined > 100, (vouched, declined, faults)
    assert faults > 50, (vouched, declined, faults)


# ------------------------------------------------------------------ 5. crafted logs

_ORIGIN = "crafted.test/log"


@pytest.fixture(scope="module")
def signers() -> tuple[list[NoteSigner], NoteSigner]:
    """Four keys of the crafted log, and one of another log (a rotation to it renames)."""
    return [NoteSigner.generate(_ORIGIN) for _ in range(4)], NoteSigner.generate("other.test/log")


def _key_draft(new: NoteSigner) -> Draft:
    return Draft("key", {"key": new.verifier_key, "key_id": new.key_id, "reason": "r"})


def _export(lines: list[bytes], size: int) -> bytes:
    header = orjson.dumps(
        {"format": EXPORT_FORMAT, "origin": _ORIGIN, "size": size}, option=orjson.OPT_SORT_KEYS
    )
    return b"\n".join([header, *lines]) + b"\n"


def _craft(
    rng: random.Random, keys: list[NoteSigner], other: NoteSigner, bad: float
) -> tuple[bytes, NoteVerifier]:
    """A log sealed record by record: the chain is right, but each choice goes wrong with
    probability ``bad``. A key record may name the key already active."""
    frontier, prev, lines = Frontier(), ZERO_HASH, []
    active = genesis = rng.choice(keys)
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    n = rng.randint(1, 30)
    for i in range(n):
        is_key = rng.random() > bad if i == 0 else rng.random() < 0.2
        signer = active
        if rng.random() < bad:
            signer = rng.choice(keys)
        new = active
        if is_key:
            if i > 0 or rng.random() < bad:
                new = rng.choice(keys)
            if rng.random() < bad / 2:
                new = other
            draft = _key_draft(new)
        else:
            draft = Draft("note", {"i": i, "x": "y" * rng.randint(0, 600)}, target="t" * i)
        when += dt.timedelta(microseconds=-1 if rng.random() < bad else rng.choice((0, 1, 10**6)))
        rec = seal(draft, index=i, prev=prev, time=when, signer=signer)
        lines.append(rec.envelope)
        frontier.append(rec.leaf_hash)
        prev, active = rec.leaf_hash, new
        last = i == n - 1
        while rng.random() < 0.3 or (last and rng.random() > bad):
            by = active if active is not other and rng.random() > bad else rng.choice(keys)
            size = frontier.size + (rng.choice((-1, 1)) if rng.random() < bad else 0)
            root = frontier.root() if rng.random() > bad else bytes(32)
            note = sign_checkpoint(Checkpoint(_ORIGIN, size, root), by)
            lines.append(orjson.dumps({"checkpoint": note}))
            if last:
                break
    size = frontier.size + (1 if rng.random() < bad else 0)
    trusted = genesis if rng.random() > bad else rng.choice(keys)
    return _export(lines, size), trusted.verifier


def test_crafted_logs_name_the_record_full_verification_names(
    signers: tuple[list[NoteSigner], NoteSigner], tmp_path: Path
) -> None:
    keys, other = signers
    target = tmp_path / "crafted.jsonl"
    passed = 0
    for seed in range(160):
        rng = random.Random(f"crafted {seed}")
        data, trusted = _craft(rng, keys, other, bad=rng.choice((0.0, 0.02, 0.05)))
        target.write_bytes(data)
        full = _full(target, trusted)
        whole, others = _every_way(rng, target, data, trusted, data.split(b"\n")[0])
        assert _index(whole) == _index(full), f"seed {seed}: fast {whole}, full {full}"
        _assert_same(f"seed {seed}", whole, others)
        passed += full[0] == "ok"
    assert 30 < passed < 140, passed


# ------------------------------------------------------------------ bugs found


_Plan = list[tuple[Draft, NoteSigner, NoteSigner | None]]


def _crafted(keys: list[NoteSigner], plan: _Plan) -> bytes:
    """An export of ``plan``: (draft, signer, signer of a checkpoint right after it or None)."""
    frontier, prev, lines = Frontier(), ZERO_HASH, []
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for i, (draft, signer, by) in enumerate(plan):
        rec = seal(draft, index=i, prev=prev, time=when + dt.timedelta(seconds=i), signer=signer)
        lines.append(rec.envelope)
        frontier.append(rec.leaf_hash)
        prev = rec.leaf_hash
        if by is not None:
            note = sign_checkpoint(Checkpoint(_ORIGIN, frontier.size, frontier.root()), by)
            lines.append(orjson.dumps({"checkpoint": note}))
    return _export(lines, frontier.size)


def _note(i: int) -> Draft:
    return Draft("note", {"i": i})


def test_key_record_right_after_a_rotation_signed_by_the_replaced_key(
    signers: tuple[list[NoteSigner], NoteSigner], tmp_path: Path
) -> None:
    """Record 2 rotates k0 -> k1; record 3, another key record, still carries k0 (naming k2).
    Full verification fails at record 3; fast mode does too when a range starts at record 3,
    but passes when records 2 and 3 are in one range."""
    (k0, k1, k2, _), _ = signers
    plan: _Plan = [
        (_key_draft(k0), k0, None),
        (_note(1), k0, None),
        (_key_draft(k1), k0, None),
        (_key_draft(k2), k0, None),  # should be signed by k1
        (_note(4), k2, k2),
    ]
    target = tmp_path / "kk.jsonl"
    data = _crafted([k0, k1, k2], plan)
    target.write_bytes(data)
    assert _index(_full(target, k0.verifier)) == ("fail", 3)
    assert _index(_fast(target, k0.verifier, 1)) == ("fail", 3)  # one record a range
    assert _index(_stream(data, k0.verifier, 1)) == ("fail", 3)
    assert _index(_fast(target, k0.verifier, WHOLE)) == ("fail", 3)  # actual: ("ok", 5, ...)


def test_rotation_to_the_active_key(
    signers: tuple[list[NoteSigner], NoteSigner], tmp_path: Path
) -> None:
    """Record 2 is a key record (signed by k0) naming k0 again. Full verification accepts
    the log; fast mode rejects record 3 unless a range boundary falls between 2 and 3."""
    (k0, *_), _ = signers
    plan: _Plan = [(_key_draft(k0), k0, None), (_note(1), k0, None), (_key_draft(k0), k0, None)]
    plan += [(_note(3), k0, None), (_note(4), k0, k0)]
    target = tmp_path / "same.jsonl"
    data = _crafted([k0], plan)
    target.write_bytes(data)
    full = _full(target, k0.verifier)
    assert full[0] == "ok"
    assert _stream(data, k0.verifier, 3) == full  # records 0-2, then 3-4: boundary after 2
    assert _fast(target, k0.verifier, WHOLE) == full  # actual: ("fail", 3, None)


def test_stream_names_an_earlier_fault_before_a_truncated_line(
    signers: tuple[list[NoteSigner], NoteSigner], tmp_path: Path
) -> None:
    """Record 1's body damaged (found at record 2's prev: record 1), and the export cut off
    in its last line. Full verification and fast mode over the file name record 1; fast
    mode over a stream (here with the default chunk) reports only the truncation."""
    (k0, *_), _ = signers
    plan: _Plan = [(_key_draft(k0), k0, None), *[(_note(i), k0, None) for i in range(1, 5)]]
    plan.append((_note(5), k0, k0))
    lines = _crafted([k0], plan).split(b"\n")
    raw = bytearray(lines[2])  # record 1
    raw[40] = ord("A") if raw[40] != ord("A") else ord("B")
    data = b"\n".join([*lines[:2], bytes(raw), *lines[3:]])[:-1]  # no final newline
    target = tmp_path / "stream.jsonl"
    target.write_bytes(data)
    assert _index(_full(target, k0.verifier)) == ("fail", 1)
    file_verdict = _fast(target, k0.verifier, WHOLE)
    assert file_verdict == ("fail", 1, 4)
    assert _stream(data, k0.verifier, 1) == file_verdict  # a chunk a record: joined in time
    # actual: ("fail", None, 8), "export does not end with a newline (truncated?)"
    assert _stream(data, k0.verifier, verify.STREAM_CHUNK) == file_verdict
