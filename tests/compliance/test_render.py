"""HTML and PDF renderings: headless Chromium loads the page, pdftotext reads the PDF.

Both tools are installed by scripts/setup.sh (Debian ``chromium``, ``poppler-utils``);
when one is missing the tests fail rather than skip. Chromium is driven from the
command line: ``--dump-dom`` gives the DOM after load, and ``--enable-logging=stderr``
writes every console message of the page as an ``INFO:CONSOLE`` line on stderr
(``console.error`` and uncaught exceptions alike; the check is calibrated below).
"""

from __future__ import annotations

import base64
import itertools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from compliance_scenario import Built

from compliance.frameworks import FRAMEWORKS
from compliance.html import render_html
from compliance.pdf import render_pdf
from compliance.report import build_report
from ledger.canonical import canonical_json
from ledger.record import open_record

ALL_TIME = ("2000-01-01", "2100-01-01")
_CONSOLE = re.compile(r":CONSOLE(?::\d+)?\]|Uncaught")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run scripts/setup.sh")
    return path


def chromium(page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM after load and the console messages of ``page``, from headless Chromium."""
    proc = subprocess.run(
        [
            tool("chromium"),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if _CONSOLE.search(line)]
    return proc.stdout, console


def pdf_text(pdf: Path, *pages: int) -> str:
    """Text of ``pdf`` (or of the page range) with whitespace and hyphens removed, so that
    line breaks and pdftotext's de-hyphenation do not matter."""
    args = [tool("pdftotext"), "-enc", "UTF-8"]
    if pages:
        args += ["-f", str(pages[0]), "-l", str(pages[-1])]
    out = subprocess.run([*args, str(pdf), "-"], capture_output=True, check=True, timeout=60)
    return squash(out.stdout.decode())


def squash(text: str) -> str:
    return re.sub(r"[\s\-\u00ad]+", "", text)


def headings(report: dict[str, Any]) -> list[str]:
    return [f"{r['id']}: {r['title']}" for r in report["requirements"]]


def tamper(export: Path, out: Path) -> int:
    """Rewrite one decision's payload (resize -> reboot) without re-signing; its index."""
    lines = export.read_bytes().split(b"\n")
    for n, line in enumerate(lines):
        if n == 0 or not line or line.startswith(b'{"checkpoint"'):
            continue
        rec = open_record(line).record
        env = orjson.loads(line)
        decoded = base64.b64decode(env["payload"])
        if rec.kind == "decision" and b'"resize"' in decoded:
            env["payload"] = base64.b64encode(decoded.replace(b'"resize"', b'"reboot"')).decode()
            lines[n] = canonical_json(env)
            out.write_bytes(b"\n".join(lines))
            return rec.index
    raise AssertionError("no resize decision to tamper with")


@pytest.fixture(scope="module", params=sorted(FRAMEWORKS))
def report(request: pytest.FixtureRequest, built: Built) -> dict[str, Any]:
    return build_report(built.export, request.param, *ALL_TIME, key=built.key)


@pytest.fixture(scope="module")
def tampered(built: Built, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], int]:
    bad = tmp_path_factory.mktemp("tampered") / "tampered.jsonl"
    index = tamper(built.export, bad)
    return build_report(bad, "eu-ai-act", *ALL_TIME, key=built.key), index


def test_the_console_check_catches_errors_and_uncaught_exceptions(tmp_path: Path):
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html lang="en"><title>t</title><h1>x</h1>'
        "<script>console.error('deliberate'); notDefined();</script></html>"
    )
    dom, console = chromium(page, tmp_path / "profile")
    assert "<h1>x</h1>" in dom
    assert any("deliberate" in line for line in console), console
    assert any("Uncaught ReferenceError" in line for line in console), console


def test_html_loads_in_chromium_with_every_section_and_no_console_errors(
    report: dict[str, Any], tmp_path: Path
):
    page = tmp_path / "report.html"
    page.write_text(render_html(report), encoding="utf-8")
    dom, console = chromium(page, tmp_path / "profile")
    assert console == []
    assert '<html lang="en"' in dom
    integrity = dom.index('id="integrity-heading"')
    assert "VERIFIED" in dom[integrity : integrity + 2000]
    assert "NOT VERIFIED" not in dom
    for heading in headings(report):
        position = dom.find(f">{heading}</h3>".replace("&", "&amp;"))
        assert position > integrity, heading
    assert dom.count(report["digest"]["value"]) >= 2  # header and footer


def test_html_is_self_contained_and_accessible(report: dict[str, Any]):
    html = render_html(report)
    assert not re.search(r"<script|<link|<img|<iframe|\bsrc=|url\(", html)
    assert not re.search(r'href="(?!#)', html)
    levels = [int(h) for h in re.findall(r"<h([1-6])\b", html)]
    assert levels.count(1) == 1
    assert levels[0] == 1
    assert all(b - a <= 1 for a, b in itertools.pairwise(levels)), levels
    assert html.count("<table") == html.count("<caption")
    assert re.findall(r"<th(?=[\s>])(?![^>]*scope=)", html) == []
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(svgs) >= 4  # decisions, risk, importance, drift, time to approval
    assert all("<title" in s and "aria-label=" in s and "<desc" in s for s in svgs)


def test_html_escapes_what_comes_from_the_ledger(report: dict[str, Any]):
    hostile = orjson.loads(orjson.dumps(report))
    hostile["requirements"][0]["missing"] = "<script>alert(1)</script>"
    hostile["evidence"]["decisions"]["by_verb"] = {"<img src=x>": 1}
    html = render_html(hostile)
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)" in html
    assert "<img src=x>" not in html


def test_pdf_text_has_the_integrity_statement_and_every_section(
    report: dict[str, Any], tmp_path: Path
):
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(render_pdf(report))
    first = pdf_text(pdf, 1, 1)
    assert squash("Integrity statement") in first
    assert squash("VERIFIED") in first
    assert squash("NOT VERIFIED") not in first
    text = pdf_text(pdf)
    for heading in headings(report):
        assert squash(heading) in text, heading
    assert report["digest"]["value"] in text


def test_a_tampered_ledger_says_not_verified_first_in_html_and_pdf(
    tampered: tuple[dict[str, Any], int], tmp_path: Path
):
    report, index = tampered
    page = tmp_path / "tampered.html"
    page.write_text(render_html(report), encoding="utf-8")
    dom, console = chromium(page, tmp_path / "profile")
    assert console == []
    first = re.search(r"<section\b.*?</section>", dom, flags=re.S)
    assert first is not None
    assert 'id="integrity"' in first.group(0)
    assert "NOT VERIFIED" in first.group(0)
    assert f"Record index: {index}" in first.group(0)
    for heading in headings(report):
        section = dom[dom.index(f">{heading}</h3>") :][:600]
        assert "UNVERIFIED" in section, heading
    assert "VERIFIED</strong>" not in dom.replace("NOT VERIFIED</strong>", "")

    pdf = tmp_path / "tampered.pdf"
    pdf.write_bytes(render_pdf(report))
    first_page = pdf_text(pdf, 1, 1)
    assert squash("NOT VERIFIED") in first_page
    assert squash(f"Record index: {index}") in first_page
