"""``govgate report`` through typer, as gateway/cli.py registers it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from compliance_scenario import Built
from typer.testing import CliRunner

from compliance.cli import report_command

app = typer.Typer()
app.command("report")(report_command)
app.command("other", hidden=True)(lambda: None)  # a group, so "report" is a sub-command


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["report", *args])
    return result.exit_code, result.output


def test_json_report_from_an_export(built: Built, tmp_path: Path):
    out = tmp_path / "r.json"
    code, output = run(
        "--framework",
        "nist-ai-rmf",
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
        "--export",
        str(built.export),
        "--key",
        built.key,
        "--out",
        str(out),
    )
    assert code == 0, output
    report = json.loads(out.read_bytes())
    assert report["framework"]["id"] == "nist-ai-rmf"
    assert report["digest"]["value"] in output


def test_html_report_from_a_data_directory(built: Built, tmp_path: Path):
    out = tmp_path / "r.html"
    code, output = run(
        "--framework",
        "eu-ai-act",
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
        "--data",
        str(built.data),
        "--format",
        "html",
        "--out",
        str(out),
    )
    assert code == 0, output
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    digest = output.split("sha-256")[-1].split()[0]
    assert digest in html
    assert "Art. 14: Human oversight" in html


def test_source_must_be_given_once(built: Built, tmp_path: Path):
    code, output = run(
        "--framework",
        "eu-ai-act",
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
        "--out",
        str(tmp_path / "r.json"),
    )
    assert code != 0
    assert "exactly one" in output


def test_exit_status_tells_an_unverified_ledger_from_a_mistake(built: Built, tmp_path: Path):
    """Scripts watch for tampering: 3 is an unverified ledger and only that; 2 is a usage
    error, 1 a source or key that cannot be used."""
    period = ("--framework", "eu-ai-act", "--from", "2000-01-01", "--to", "2100-01-01")
    lines = built.export.read_bytes().splitlines(keepends=True)
    n = next(i for i, x in enumerate(lines) if i > 0 and x.startswith(b'{"payload"'))
    sig = lines[n].index(b'"sig":"') + len(b'"sig":"') + 5
    flipped = b"A" if lines[n][sig : sig + 1] != b"A" else b"B"
    lines[n] = lines[n][:sig] + flipped + lines[n][sig + 1 :]  # one signature byte
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(b"".join(lines))
    out = tmp_path / "r.json"
    code, output = run(*period, "--out", str(out), "--export", str(tampered), "--key", built.key)
    assert code == 3, output
    assert "UNVERIFIED" in output
    assert out.exists()  # the report is still written, and says so
    code, output = run(*period, "--out", str(tmp_path), "--export", str(built.export),
                       "--key", built.key)  # fmt: skip
    assert code == 2, output
    assert not (tmp_path.parent / f"{tmp_path.name}.partial").exists()
    code, output = run(*period, "--out", str(out))  # neither --data nor --export
    assert code == 2, output
    code, output = run(*period, "--out", str(out), "--export", str(built.export),
                       "--key", "not a key")  # fmt: skip
    assert code == 1, output


def test_a_bad_period_is_a_usage_error(built: Built, tmp_path: Path):
    """Exit 2, as for any malformed option, before the ledger is read."""
    source = ("--framework", "eu-ai-act", "--export", str(built.export), "--key", built.key)
    out = tmp_path / "r.json"
    for start, end, why in (
        ("2026-03-02", "2026-03-01", "must end after it starts"),
        ("2026-13-01", "2026-03-01", "is not a date"),
        ("2026-03-01T09:00:00", "2026-03-02", "no timezone"),
    ):
        code, output = run(*source, "--from", start, "--to", end, "--out", str(out))
        assert code == 2, output
        assert why in " ".join(output.split()), output
    assert not out.exists()
