"""The compliance report: integrity statement, evidence and framework mapping, as JSON.

:func:`build_report` reads a ledger (a data directory, or an export and its
verifier key) twice, streaming: once to verify it (:func:`ledger.verify.verify_export`:
signatures, chain, Merkle roots, checkpoints), once to aggregate the evidence
(:class:`compliance.evidence.Evidence`). A data directory is first exported to
a temporary file, which signs a checkpoint for the current size if none exists
(the only write; records are never touched).

The report is a JSON value in the ``govgate-compliance-report/1`` format
(``compliance/schema/report-v1.json``). It is reproducible: the same ledger
and period give the same RFC 8785 bytes, because nothing in it depends on the
clock or the file system paths. ``digest`` is the SHA-256 of the canonical
JSON of the report without ``digest`` (:func:`report_digest` recomputes it).

If the ledger does not verify, the report says so first
(``integrity.verified: false`` with the error and the record it names), every
evidence section carries ``verified: false``, and no requirement is
``evidenced``.

Example::

    report = build_report(Path("ledger.jsonl"), "eu-ai-act", "2026-11-01", "2026-12-01",
                          key="govgate.local/ledger+1234abcd+AU...")
    Path("report.json").write_bytes(report_bytes(report))
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from compliance.errors import ReportError, SourceError
from compliance.evidence import Evidence, ModelCard, Period, PolicyText
from compliance.frameworks import FRAMEWORKS, assess
from ledger import DataDir, LedgerConfig, LedgerError, NoteVerifier, VerificationError
from ledger._workers import ScanPool
from ledger.canonical import canonical_json
from ledger.export import EXPORT_FORMAT, export_ledger
from ledger.verify import export_parts, verify_export

__all__ = ["FORMAT", "Progress", "build_report", "read_part", "report_bytes", "report_digest"]

FORMAT = "govgate-compliance-report/1"
Progress = Callable[[str, int, int], None]  # (stage, done, total)
_ONE_JOB = LedgerConfig(checkpoint_interval=0, checkpoint_every=0, checkpoint_on_close=False)
_MAX_POLICY = 1 << 20
_PART = 1 << 14  # records per part read apart (a fixed count: see _aggregate)


def report_bytes(report: dict[str, Any]) -> bytes:
    """The report's RFC 8785 bytes (what ``--out`` writes, plus a final newline)."""
    return canonical_json(report) + b"\n"


def report_digest(report: dict[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``report`` without its ``digest`` field."""
    body = {k: v for k, v in report.items() if k != "digest"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def build_report(
    source: Path,
    framework: str,
    start: str,
    end: str,
    *,
    key: str | None = None,
    progress: Progress | None = None,
    signatures: bool = True,
    models: Path | None = None,
    policies: Iterable[Path] = (),
) -> dict[str, Any]:
    """The report for ``[start, end)`` over the ledger at ``source``.

    ``source`` is a data directory (its own key verifies it unless ``key`` is
    given) or an export file (``key`` required). ``models`` is a model registry
    directory (default: the data directory's ``models``, plus the bundled models);
    ``policies`` are policy files to look up thresholds by their SHA-256.
    """
    if framework not in FRAMEWORKS:
        raise ReportError(f"unknown framework {framework!r} (known: {', '.join(FRAMEWORKS)})")
    try:
        period = Period.parse(start, end)
    except ValueError as err:
        raise ReportError(str(err)) from None
    if source.is_dir():
        data = DataDir(source)
        if not data.has_ledger():  # opening it would write a genesis record and report on it
            raise SourceError(f"there is no ledger in {source} (no {data.db_path.name})")
        try:
            trusted = _verifier(key) if key else data.signer().verifier
        except LedgerError as err:
            raise SourceError(f"cannot read the data directory's key: {err}") from err
        with tempfile.TemporaryDirectory(prefix="govgate-report-") as tmp:
            export = Path(tmp) / "ledger.jsonl"
            try:
                asyncio.run(_export(data, export, progress))
            except LedgerError as err:
                raise SourceError(f"cannot export the ledger of {source}: {err}") from err
            return _build(
                export,
                "data-dir",
                trusted,
                framework,
                period,
                progress,
                signatures,
                models or source / "models",
                [source, *policies],
            )
    if not source.is_file():
        raise SourceError(f"{source} is neither a data directory nor an export file")
    if not key:
        raise SourceError("an export needs the log's verifier key (--key)")
    return _build(
        source,
        "export",
        _verifier(key),
        framework,
        period,
        progress,
        signatures,
        models,
        list(policies),
    )


def _verifier(key: str) -> NoteVerifier:
    try:
        return NoteVerifier.from_key_string(key)
    except LedgerError as err:
        raise SourceError(f"bad verifier key: {err}") from err


async def _export(data: DataDir, out: Path, progress: Progress | None) -> None:
    def update(done: int, total: int) -> None:
        if progress is not None:
            progress("exporting", done, total)

    async with data.open_ledger(_ONE_JOB) as log:
        await export_ledger(log, out, progress=update)


def _build(
    export: Path,
    kind: str,
    trusted: NoteVerifier,
    framework: str,
    period: Period,
    progress: Progress | None,
    signatures: bool,
    models: Path | None,
    policy_places: list[Path],
) -> dict[str, Any]:
    integrity = _integrity(export, trusted, progress, signatures)
    evidence = Evidence(
        period,
        policy_text=_policy_finder(policy_places),
        model_card=_card_finder(models),
        as_of=dt.datetime.now(dt.UTC),  # a period not over yet has no gap after now
    )
    header = _aggregate(export, evidence, progress, models)
    verified = bool(integrity["verified"])
    integrity["origin"] = str(header.get("origin", ""))
    integrity["covering_checkpoint"] = evidence.covering
    if integrity["covering_checkpoint"] is None and verified:
        integrity["covering_note"] = "no signed checkpoint covers the period"
    sections = {name: {"verified": verified, **body} for name, body in evidence.result().items()}
    fw = FRAMEWORKS[framework]
    report: dict[str, Any] = {
        "format": FORMAT,
        "framework": {"id": fw.id, "title": fw.title, "reference": fw.reference},
        "period": period.to_json(),
        "source": {"kind": kind, "export_format": EXPORT_FORMAT},
        "integrity": integrity,
        "evidence_status": "verified" if verified else "unverified",
        "evidence": sections,
        "requirements": assess(framework, sections, verified=verified),
    }
    report["digest"] = {
        "algorithm": "sha-256",
        "value": report_digest(report),
        "over": "RFC 8785 canonical JSON of this report without 'digest'",
    }
    return report


def _integrity(
    export: Path, trusted: NoteVerifier, progress: Progress | None, signatures: bool
) -> dict[str, Any]:
    def update(done: int, total: int) -> None:
        if progress is not None:
            progress("verifying", done, total)

    checks = (
        "signatures, hash chain, Merkle roots and signed checkpoints"
        if signatures
        else "hash chain, Merkle roots and signed checkpoints (record signatures not checked)"
    )
    out: dict[str, Any] = {
        "verified": False,
        "checks": checks,
        "signatures_checked": signatures,
        "verifier_key": trusted.key_string,
        "export_sha256": _sha256_file(export),
        "reverify": f"govgate ledger verify ledger.jsonl --key {trusted.key_string} "
        "(for a data directory, first: govgate ledger export --data DIR "
        "--out ledger.jsonl)",
        "error": None,
    }
    try:
        result = verify_export(export, trusted, signatures=signatures, progress=update)
    except VerificationError as err:
        out["error"] = {"message": str(err), "record_index": err.index, "line": err.line}
        out.update(records=None, checkpoints=None, root=None, key_ids=[], final_checkpoint=None)
        return out
    out.update(
        verified=True,
        records=result.size,
        checkpoints=result.checkpoints,
        root=base64.b64encode(result.root).decode(),
        key_ids=list(result.key_ids),
        final_checkpoint=result.last_checkpoint,
    )
    return out


_PAYLOAD = b'{"payload":"'


class _Fields:
    """A record's payload fields (an :class:`~compliance.evidence.Entry`), read from its
    envelope without :func:`~ledger.record.open_record`'s strict checks of form: the
    verifier has checked every line already, and a report on a ledger that fails
    verification says so before any figure. Raises ``ValueError`` (or ``KeyError``,
    ``TypeError``) for a line that is not an envelope of a payload object."""

    __slots__ = ("actor", "body", "decision_id", "index", "kind", "target", "time")

    def __init__(self, line: bytes) -> None:
        if line.startswith(_PAYLOAD):  # canonical: the payload is the first field, no escapes
            payload = line[len(_PAYLOAD) : line.index(b'"', len(_PAYLOAD))]
        else:
            payload = orjson.loads(line)["payload"].encode()
        p = orjson.loads(binascii.a2b_base64(payload))
        self.index: int = p["index"]
        self.time: str = p["time"]
        self.kind: str = p["kind"]
        self.actor: str = p["actor"]
        self.target: str = p["target"]
        self.decision_id: str = p["decision_id"]
        self.body: dict[str, Any] = p["body"]


def _aggregate(
    export: Path, evidence: Evidence, progress: Progress | None, models: Path | None
) -> dict[str, Any]:
    """Feed every record and checkpoint line of ``export`` to ``evidence``; return the header.

    The export is read in parts of :data:`_PART` records, by worker processes when there
    is more than one part and more than one CPU, and the parts' evidence is merged in
    order. The parts are cut by record count alone, so a report's figures never depend on
    the machine that made it.
    """
    header: dict[str, Any] = {}
    with export.open("rb") as f:
        try:
            parsed = orjson.loads(f.readline())
        except orjson.JSONDecodeError:
            parsed = None
        start_of_records = f.tell()
    if isinstance(parsed, dict):
        header = parsed
    total: int = header["size"] if isinstance(header.get("size"), int) else 0
    try:
        parts = [(p.offset, p.length, p.start) for p in export_parts(export, _PART)]
    except VerificationError:  # a broken export (the integrity section says so): one part
        parts = [(start_of_records, export.stat().st_size - start_of_records, 0)]
    task = (str(export), evidence.period, str(models) if models else "", evidence.drift)
    workers = min(os.cpu_count() or 1, len(parts))
    done = 0

    def merge(part: Evidence) -> None:
        nonlocal done
        evidence.merge(part)
        done += part.records
        if progress is not None:
            progress("reading", done, max(total, done))

    if workers > 1:
        with ScanPool(workers, "compliance.report:read_part") as pool:
            for part in pool.map((*task, offset, length, start) for offset, length, start in parts):
                merge(part)
    else:
        for offset, length, start in parts:
            merge(read_part(*task, offset, length, start))
    evidence.finish()
    return header


def read_part(
    export: str, period: Period, models: str, drift: bool, offset: int, length: int, start: int
) -> Evidence:
    """The evidence of one part of an export (see :func:`_aggregate`), for merging."""
    evidence = Evidence(
        period, model_card=_card_finder(Path(models) if models else None), drift=drift
    ).starting_at(start)
    with open(export, "rb", buffering=1 << 20) as f:
        f.seek(offset)
        left = length
        while left > 0:
            raw = f.readline(left)
            if not raw:
                break
            left -= len(raw)
            if raw.startswith(b'{"checkpoint"'):
                _checkpoint_line(evidence, raw.rstrip(b"\n"))
                continue
            try:
                rec = _Fields(raw)
            except (ValueError, KeyError, TypeError, binascii.Error):
                evidence.unreadable_record()
                continue
            if not (isinstance(rec.body, dict) and isinstance(rec.time, str)
                    and isinstance(rec.kind, str)):  # fmt: skip
                evidence.unreadable_record()
                continue
            evidence.feed(rec)
    evidence.flush()
    return evidence


def _checkpoint_line(evidence: Evidence, line: bytes) -> None:
    """Size and root of a checkpoint line (its signature is the verifier's business)."""
    try:
        note = orjson.loads(line)["checkpoint"]
        _origin, size, root = str(note).split("\n", 3)[:3]
        evidence.checkpoint(int(size), root, str(note))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        evidence.unreadable_record()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _policy_finder(places: list[Path]) -> Callable[[str, str], PolicyText | None]:
    """Look a policy up by its recorded source path (absolute, or under a data directory)
    and among the given files; only bytes whose SHA-256 is the policy id count."""

    def find(policy_id: str, source: str) -> PolicyText | None:
        candidates: list[Path] = []
        if source:
            src = Path(source)
            candidates.append(src)
            candidates += [p / src for p in places if p.is_dir() and not src.is_absolute()]
        candidates += [p for p in places if p.is_file()]
        for path in candidates:
            try:
                if path.is_file() and path.stat().st_size <= _MAX_POLICY:
                    raw = path.read_bytes()
                    if hashlib.sha256(raw).hexdigest() == policy_id:
                        return PolicyText(policy_id, raw)
            except OSError:
                continue
        return None

    return find


def _card_finder(models: Path | None) -> Callable[[str], ModelCard | None]:
    """Model cards from ``models`` and the bundled models, by full model id."""

    def find(model_id: str) -> ModelCard | None:
        from explain.drift import Profile
        from explain.errors import ExplainError
        from explain.registry import Registry

        registry = Registry(models if models is not None else Path("/nonexistent"))
        try:
            entry = registry.resolve(model_id)
            if entry.id != model_id:
                return None
            card = registry.card(model_id)
            raw = entry.card_path.read_bytes()
        except (ExplainError, OSError, ValueError):
            return None
        try:
            profile: Any = Profile.from_json(card.get("reference"))
        except ExplainError:
            profile = None
        return ModelCard(model_id, card, hashlib.sha256(raw).hexdigest(), profile)

    return find
