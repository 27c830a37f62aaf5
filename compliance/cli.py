"""``govgate report``: the compliance report as a typer sub-command.

Registered in ``gateway/cli.py`` with ``app.command("report")(report_command)``.
Progress goes to standard error; the report is written to ``--out`` (RFC 8785
JSON, or its HTML or PDF rendering; the digest printed on standard error).
Exit status: 0 when the ledger verifies; 3 when it does not (the report is still
written, and says so first), so scripts notice; 1 with one line when a source,
key or output cannot be used; 2 on a usage error (an option missing or
malformed, as for every command).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from compliance.errors import ReportError

__all__ = ["report_command"]

_err = Console(stderr=True)
UNVERIFIED = 3  # the exit status when the ledger does not verify (2 is click's usage error)


class FrameworkName(enum.StrEnum):
    EU_AI_ACT = "eu-ai-act"
    NIST_AI_RMF = "nist-ai-rmf"


class Format(enum.StrEnum):
    JSON = "json"
    HTML = "html"
    PDF = "pdf"


def report_command(
    framework: Annotated[FrameworkName, typer.Option(help="Framework to map the evidence to.")],
    start: Annotated[str, typer.Option("--from", help="Period start (YYYY-MM-DD or RFC 3339).")],
    end: Annotated[str, typer.Option("--to", help="Period end, exclusive.")],
    out: Annotated[Path, typer.Option(help="Report file.")],
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.JSON,
    data: Annotated[Path | None, typer.Option(help="Data directory to report on.")] = None,
    export: Annotated[Path | None, typer.Option(help="Ledger export to report on.")] = None,
    key: Annotated[str | None, typer.Option(help="Verifier key (required with --export).")] = None,
    models: Annotated[Path | None, typer.Option(help="Model registry for model cards.")] = None,
    policy: Annotated[
        list[Path] | None, typer.Option(help="Policy file(s), matched by SHA-256.")
    ] = None,
    signatures: Annotated[
        bool, typer.Option(help="Check every record signature (off: chain, roots, checkpoints).")
    ] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Compliance evidence (EU AI Act, NIST AI RMF) from the ledger, for a period."""
    if (data is None) == (export is None):
        raise typer.BadParameter("give exactly one of --data DIR or --export FILE")
    if not out.parent.is_dir():
        raise typer.BadParameter(f"directory {out.parent} does not exist", param_hint="--out")
    if out.is_dir():
        raise typer.BadParameter(f"{out} is a directory; name the report file", param_hint="--out")
    from compliance.tally import Period  # here: it imports numpy, which --help need not

    try:
        Period.parse(start, end)  # refused here, as a usage error (exit 2), not as a source
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--from/--to") from None
    source = data if data is not None else export
    assert source is not None
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=_err,
        disable=quiet,
    )
    tasks: dict[str, object] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)  # type: ignore[arg-type]

    from compliance.report import build_report  # here: other commands need none of it

    try:
        with bar:
            report = build_report(
                source,
                framework.value,
                start,
                end,
                key=key,
                progress=update,
                signatures=signatures,
                models=models,
                policies=policy or (),
            )
    except ReportError as err:
        _err.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from None
    try:
        body = _render(report, fmt)
    except ReportError as err:
        _err.print(f"[red]error:[/red] {err}")
        raise typer.Exit(1) from None
    tmp = out.with_name(out.name + ".partial")
    tmp.write_bytes(body)
    tmp.replace(out)
    integrity = report["integrity"]
    if not integrity["verified"]:
        _err.print(
            f"[red]UNVERIFIED[/red] the ledger does not verify: "
            f"{integrity['error']['message']}; report written to {out}"
        )
        raise typer.Exit(UNVERIFIED)
    _err.print(f"report written to {out}; sha-256 {report['digest']['value']}")


def _render(report: dict[str, Any], fmt: Format) -> bytes:
    """The bytes ``--out`` gets; weasyprint is imported only for PDF."""
    from compliance.report import report_bytes

    if fmt is Format.HTML:
        from compliance.html import render_html

        return render_html(report).encode("utf-8")
    if fmt is Format.PDF:
        from compliance.pdf import render_pdf

        return render_pdf(report)
    return report_bytes(report)
