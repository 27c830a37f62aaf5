"""The JSON report on a ledger the real gateway wrote: numbers, integrity, schema, digest."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from compliance_scenario import Built

from compliance.evidence import Period
from compliance.frameworks import FRAMEWORKS
from compliance.report import build_report, report_bytes, report_digest
from ledger.canonical import canonical_json
from ledger.record import format_time, open_record

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "compliance" / "schema" / "report-v1.json").read_text()
)
ALL_TIME = ("2000-01-01", "2100-01-01")


VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


def check_schema(value: Any, schema: dict[str, Any] = SCHEMA) -> None:
    """Validate against report-v1.json (JSON Schema draft 2020-12) with ``jsonschema``."""
    assert schema is SCHEMA
    errors = sorted(VALIDATOR.iter_errors(value), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]


def test_the_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_the_schema_check_rejects_what_it_should():
    with pytest.raises(AssertionError):
        check_schema({"format": "govgate-compliance-report/1"}, SCHEMA)


@pytest.fixture(scope="module")
def report(built: Built) -> dict[str, Any]:
    return build_report(built.export, "eu-ai-act", *ALL_TIME, key=built.key)


def test_counts_match_what_the_gateway_did(report: dict[str, Any]):
    ev = report["evidence"]
    d = ev["decisions"]
    assert d["count"] == 6
    assert d["by_verdict"] == {"DENIED": 1, "EXECUTING": 1, "HALTED": 1, "PENDING_APPROVAL": 3}
    assert d["by_verb"] == {"delete": 1, "reboot": 3, "resize": 1, "suspend": 1}
    assert d["by_runtime"] == {"libvirt": 6}
    assert d["without_request_id"] == 0
    assert d["halted_by_stop_switch"] == 1
    o = ev["oversight"]
    assert (o["approvals"], o["denials"], o["completed_by_approval"], o["expiries"]) == (1, 1, 1, 1)
    assert o["still_pending_at_end"] == 0
    assert o["reviewers"]["spiffe://govgate.local/alice"] == {
        "approved": 1,
        "denied": 0,
        "approval_rate": 1.0,
    }
    assert o["reviewers"]["spiffe://govgate.local/bob"]["denied"] == 1
    assert o["time_to_approval_seconds"]["count"] == 1
    assert o["overrides"]["rollbacks"] == 1
    assert o["halts"]["count"] == 1
    assert o["halts"]["items"][0]["scope"] == "everything"
    assert o["resumes"]["count"] == 1
    assert o["resumes"]["items"][0]["actor"] == "spiffe://govgate.local/bob"
    assert sum(ev["outcomes"]["by_status"].values()) == 2
    assert ev["outcomes"]["rollbacks"] == {"reverted": 1}
    assert ev["incidents"]["by_severity"] == {"critical": 1, "minor": 1, "serious": 1}
    assert ev["risk"]["scored"] == 5  # all but the halted one (the forbidden delete too)
    assert sum(b["count"] for b in ev["risk"]["histogram"]) == ev["risk"]["scored"]
    assert ev["explanations"]["decisions_explained"] == ev["risk"]["scored"]
    features = [e["feature"] for e in ev["explanations"]["global_importance"]]
    assert len(features) == 19
    assert ev["completeness"]["unreadable_records"] == 0


def test_the_thresholds_come_from_the_policy_file_only_when_its_hash_matches(
    built: Built, report: dict[str, Any]
):
    (policy,) = report["evidence"]["risk"]["policies"]
    assert (
        policy["policy_id"] == hashlib.sha256((built.data / "policy.toml").read_bytes()).hexdigest()
    )
    assert policy["thresholds"]["recorded"] is True
    assert policy["thresholds"]["defaults"]["execute_below"] == "1.0"
    (built.data / "policy.toml").rename(built.data / "policy.moved")
    try:
        r = build_report(built.export, "eu-ai-act", *ALL_TIME, key=built.key)
    finally:
        (built.data / "policy.moved").rename(built.data / "policy.toml")
    (policy,) = r["evidence"]["risk"]["policies"]
    assert policy["thresholds"]["recorded"] is False
    assert "defaults" not in policy["thresholds"]


def test_integrity_names_the_covering_checkpoint_and_how_to_reverify(
    built: Built, report: dict[str, Any]
):
    i = report["integrity"]
    assert i["verified"] is True
    assert i["error"] is None
    assert i["signatures_checked"] is True
    assert i["verifier_key"] == built.key
    assert f"govgate ledger verify ledger.jsonl --key {built.key}" in i["reverify"]
    assert i["covering_checkpoint"]["size"] == i["records"]
    assert report["evidence_status"] == "verified"
    assert all(s["verified"] for s in report["evidence"].values())


def test_art73_deadlines_are_counted_from_the_incident_record(report: dict[str, Any]):
    items = {i["severity"]: i for i in report["evidence"]["incidents"]["items"]}
    for severity, days in (("serious", 15), ("critical", 2)):
        art = items[severity]["art73"]
        aware = dt.datetime.fromisoformat(items[severity]["time"].replace("Z", "+00:00"))
        assert art["serious_incident"] is True
        assert art["days"] == days
        assert art["deadline"] == format_time(aware + dt.timedelta(days=days))
        assert art["if_death"] == format_time(aware + dt.timedelta(days=10))
    assert items["minor"]["art73"]["serious_incident"] is False


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_two_builds_give_the_same_bytes_and_a_valid_digest(built: Built, framework: str):
    a = build_report(built.export, framework, *ALL_TIME, key=built.key)
    b = build_report(built.export, framework, *ALL_TIME, key=built.key)
    assert report_bytes(a) == report_bytes(b)
    assert a["digest"]["value"] == report_digest(a)
    body = {k: v for k, v in a.items() if k != "digest"}
    assert a["digest"]["value"] == hashlib.sha256(canonical_json(body)).hexdigest()
    check_schema(a, SCHEMA)
    ids = [r["id"] for r in a["requirements"]]
    assert ids == [r.id for r in FRAMEWORKS[framework].requirements]


def test_a_data_directory_gives_the_same_evidence_as_its_export(
    built: Built, report: dict[str, Any]
):
    r = build_report(built.data, "eu-ai-act", *ALL_TIME)
    assert r["source"]["kind"] == "data-dir"
    assert r["integrity"]["verified"] is True
    assert r["evidence"] == report["evidence"]
    assert report_bytes(r) == report_bytes(build_report(built.data, "eu-ai-act", *ALL_TIME))


def test_the_period_filters_by_record_time(built: Built, report: dict[str, Any]):
    lines = built.export.read_bytes().splitlines()[1:]
    recs = [open_record(x).record for x in lines if not x.startswith(b'{"checkpoint"')]
    incident = next(r for r in recs if r.kind == "incident")
    r = build_report(built.export, "eu-ai-act", ALL_TIME[0], incident.time, key=built.key)
    ev = r["evidence"]
    assert ev["decisions"]["count"] == 6
    assert ev["incidents"]["count"] == 0
    assert ev["completeness"]["records_in_period"] == incident.index
    r = build_report(built.export, "eu-ai-act", incident.time, ALL_TIME[1], key=built.key)
    assert r["evidence"]["decisions"]["count"] == 0
    assert r["evidence"]["incidents"]["count"] == 3
    empty = build_report(built.export, "eu-ai-act", "2001-01-01", "2001-02-01", key=built.key)
    assert empty["evidence"]["completeness"]["records_in_period"] == 0
    assert empty["evidence"]["decisions"]["count"] == 0
    check_schema(empty, SCHEMA)


def test_a_tampered_export_is_reported_unverified_everywhere(built: Built, tmp_path: Path):
    lines = built.export.read_bytes().split(b"\n")
    n = next(
        i
        for i, x in enumerate(lines)
        if b"cGF5bG9hZ" not in x
        and i > 0
        and not x.startswith(b'{"checkpoint"')
        and open_record(x).record.kind == "decision"
    )
    env = orjson.loads(lines[n])
    index = open_record(lines[n]).record.index
    payload = env["payload"]
    decoded = __import__("base64").b64decode(payload).replace(b'"resize"', b'"reboot"')
    env["payload"] = __import__("base64").b64encode(decoded).decode()
    lines[n] = canonical_json(env)
    bad = tmp_path / "tampered.jsonl"
    bad.write_bytes(b"\n".join(lines))
    r = build_report(bad, "eu-ai-act", *ALL_TIME, key=built.key)
    i = r["integrity"]
    assert i["verified"] is False
    assert i["error"]["record_index"] == index
    assert f"record {index}" in i["error"]["message"]
    assert r["evidence_status"] == "unverified"
    assert all(s["verified"] is False for s in r["evidence"].values())
    assert all(
        q["status"] != "evidenced" and q["evidence_verified"] is False for q in r["requirements"]
    )
    check_schema(r, SCHEMA)


def test_a_wrong_key_is_not_verified(built: Built, tmp_path: Path):
    other = built.key.replace("example.com/govgate", "example.com/other")
    shutil.copy(built.export, tmp_path / "e.jsonl")
    from compliance.errors import SourceError

    with pytest.raises(SourceError):
        build_report(tmp_path / "e.jsonl", "eu-ai-act", *ALL_TIME, key=other)


def test_bad_arguments_are_refused(built: Built):
    from compliance.errors import ReportError

    with pytest.raises(ReportError, match="framework"):
        build_report(built.export, "iso-42001", *ALL_TIME, key=built.key)
    with pytest.raises(ReportError, match="end after"):
        build_report(built.export, "eu-ai-act", "2026-02-01", "2026-01-01", key=built.key)
    with pytest.raises(ReportError, match="--key"):
        build_report(built.export, "eu-ai-act", *ALL_TIME)
    assert Period.parse("2026-01-01", "2026-01-02").start_text == "2026-01-01T00:00:00.000000Z"
    # RFC 3339 allows a lower-case z; an offset that leaves the calendar is refused clearly.
    lower = Period.parse("2026-01-01T00:00:00z", "2026-01-02T00:00:00z")
    assert lower.start_text == "2026-01-01T00:00:00.000000Z"
    with pytest.raises(ValueError, match="out of range"):
        Period.parse("0001-01-01T00:00:00+01:00", "2026-01-01")


def test_a_data_directory_without_a_ledger_is_refused_and_left_as_it_was(tmp_path: Path):
    """Opening it would write a genesis record, and the report would count it."""
    from compliance.errors import SourceError
    from ledger import DataDir

    data = DataDir(tmp_path / "data")
    data.generate_key("example.com/govgate")
    before = sorted(p.name for p in data.path.iterdir())
    with pytest.raises(SourceError, match="no ledger"):
        build_report(data.path, "eu-ai-act", *ALL_TIME)
    assert sorted(p.name for p in data.path.iterdir()) == before
    assert not data.has_ledger()
