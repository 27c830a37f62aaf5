"""The compliance report as one self-contained, accessible HTML page.

:func:`render_html` turns the JSON report of :func:`compliance.report.build_report`
into HTML with the jinja2 templates in ``compliance/templates/``. The page has
no external resources and no script: CSS is inline, charts are inline SVG drawn
from the evidence numbers (:mod:`compliance._charts`). Every value goes through
jinja2's autoescaping; nothing from the ledger is trusted as markup.

Order, whatever the JSON's key order: the integrity statement first (a ledger
that does not verify is stated in a banner at the top, with the error and the
record it names, and every later section is marked unverified), then one
section per framework requirement, then the charts, then the evidence in full.
The report's own digest is shown in the header and the footer. The renderer
does not recompute or check the digest; it shows what the report says.

Example::

    report = build_report(Path("ledger.jsonl"), "eu-ai-act", "2026-11-01", "2026-12-01", key=key)
    Path("report.html").write_text(render_html(report), encoding="utf-8")
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2

from compliance import _charts

__all__ = ["render_html"]

_TEMPLATES = Path(__file__).parent / "templates"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SECTION_TITLES = {
    "completeness": "Completeness of the record",
    "decisions": "Decisions",
    "risk": "Risk scores and thresholds",
    "oversight": "Human oversight",
    "outcomes": "Outcomes",
    "incidents": "Incidents",
    "models": "Models",
    "explanations": "Explanations",
    "drift": "Drift",
    "retention": "Retention",
}
_STATUS_TEXT = {
    "evidenced": "Evidenced",
    "partial": "Partially evidenced",
    "outside-gateway": "Outside what the gateway records",
}


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.do"],
    )
    env.filters["anchor"] = _anchor
    env.filters["compact"] = _compact
    return env


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one HTML document (a ``str``; write it as UTF-8)."""
    template = _environment().get_template("report.html.j2")
    return template.render(**_context(report))


def _anchor(text: str) -> str:
    """A fragment id from a requirement id: ``Art. 19 / 26(6)`` -> ``req-art-19-26-6``."""
    return "req-" + re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")


def _compact(value: Any) -> str:
    """A short text form of a counter dict, list or scalar for the summary tables."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_compact(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(_compact(v) for v in value) or "none"
    if value is None:
        return "not recorded"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _context(report: Mapping[str, Any]) -> dict[str, Any]:
    integrity: Mapping[str, Any] = report["integrity"]
    evidence: Mapping[str, Mapping[str, Any]] = report["evidence"]
    verified = bool(integrity.get("verified")) and report.get("evidence_status") == "verified"
    digest = str((report.get("digest") or {}).get("value", ""))
    requirements = [
        {
            **req,
            "anchor": _anchor(req["id"]),
            "status_text": _STATUS_TEXT.get(req["status"], req["status"]),
            "summaries": [
                {
                    "name": name,
                    "title": _SECTION_TITLES.get(name, name),
                    "facts": _summary(name, evidence.get(name) or {}),
                }
                for name in req["evidence"]
            ],
        }
        for req in report["requirements"]
    ]
    charts = [
        _charts.decisions_chart(evidence.get("decisions") or {}),
        _charts.risk_chart(evidence.get("risk") or {}),
        _charts.importance_chart(evidence.get("explanations") or {}),
        *_charts.drift_charts(evidence.get("drift") or {}),
        _charts.time_to_approval_chart(evidence.get("oversight") or {}),
    ]
    sections = [
        {"name": name, "title": _SECTION_TITLES.get(name, name), "body": body}
        for name, body in evidence.items()
    ]
    return {
        "report": report,
        "framework": report["framework"],
        "period": report["period"],
        "integrity": integrity,
        "verified": verified,
        "digest": digest,
        # Only a hex digest may go into the CSS page footer (a <style> is not HTML-escaped).
        "css_digest": digest if _HEX64.fullmatch(digest) else "",
        "requirements": requirements,
        "charts": charts,
        "sections": sections,
    }


def _get(body: Mapping[str, Any], *path: str) -> Any:
    value: Any = body
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _summary(name: str, body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The few figures of one evidence section that bear on a requirement."""

    def g(*path: str) -> str:
        return _compact(_get(body, *path))

    if name == "completeness":
        return [
            ("Records in the period", g("records_in_period")),
            ("Records in the ledger", g("records_in_ledger")),
            ("Records by kind", g("records_by_kind")),
            ("Unreadable records", g("unreadable_records")),
            (f"Gaps longer than {g('gap_threshold_hours')} h", g("gaps", "count")),
            ("Checkpoints signed in the period", g("checkpoints_in_period")),
            ("Covering checkpoint (tree size)", g("covering_checkpoint", "size")),
        ]
    if name == "decisions":
        return [
            ("Decisions", g("count")),
            ("By verdict", g("by_verdict")),
            ("Without a request id", g("without_request_id")),
            ("Dry runs", g("dry_runs")),
            ("Fallbacks", g("fallbacks", "count")),
            ("Refused by the stop switch", g("halted_by_stop_switch")),
        ]
    if name == "risk":
        recorded = [bool(_get(p, "thresholds", "recorded")) for p in body.get("policies") or []]
        return [
            ("Scored / unscored decisions", f"{g('scored')} / {g('unscored')}"),
            ("Risk mean, min, max", f"{g('summary', 'mean')}, {g('summary', 'min')}, "
             f"{g('summary', 'max')}"),
            ("Policies in force", str(len(recorded))),
            ("Thresholds recorded", "yes" if recorded and all(recorded) else "no"),
            ("Residual risk, auto-executed (count, max)",
             f"{g('residual_risk_accepted', 'auto_executed', 'count')}, "
             f"{g('residual_risk_accepted', 'auto_executed', 'max')}"),
            ("Residual risk, approved by people (count, max)",
             f"{g('residual_risk_accepted', 'approved_by_people', 'count')}, "
             f"{g('residual_risk_accepted', 'approved_by_people', 'max')}"),
        ]  # fmt: skip
    if name == "oversight":
        rates = {who: _get(r, "approval_rate") for who, r in (body.get("reviewers") or {}).items()}
        return [
            ("Approvals / denials", f"{g('approvals')} / {g('denials')}"),
            ("Completed by approval", g("completed_by_approval")),
            ("Expired / still pending", f"{g('expiries')} / {g('still_pending_at_end')}"),
            ("Approval rate per reviewer", _compact(rates)),
            ("Time to approval, mean (s)", g("time_to_approval_seconds", "mean")),
            ("Rollbacks", g("overrides", "rollbacks")),
            ("Halts / resumes", f"{g('halts', 'count')} / {g('resumes', 'count')}"),
            ("Access refusals", g("access_refusals")),
        ]
    if name == "outcomes":
        return [
            ("Outcomes by status", g("by_status")),
            ("Rollback outcomes", g("rollbacks")),
            ("Recovered after a restart", g("recovered_after_restart")),
        ]
    if name == "incidents":
        deadlines = [
            f"{i.get('severity')} at {i.get('time')}: {_get(i, 'art73', 'basis')} by "
            f"{_get(i, 'art73', 'deadline')}"
            for i in body.get("items") or []
            if _get(i, "art73", "serious_incident")
        ]
        return [
            ("Incidents", g("count")),
            ("By severity", g("by_severity")),
            ("Art. 73 deadlines", "; ".join(deadlines) or "no serious incident"),
        ]
    if name == "models":
        return [
            ("Model in force at the start", g("in_force_at_start")),
            ("Model activations", g("activations", "count")),
            ("Decisions per model", g("decisions_by_model")),
            ("Model cards found", str(len(body.get("cards") or {}))),
        ]
    if name == "explanations":
        top = (body.get("global_importance") or [])[:3]
        return [
            ("Decisions with SHAP explanations", g("decisions_explained")),
            ("Decisions without", g("decisions_without_explanation")),
            ("Most important features", ", ".join(str(e.get("feature")) for e in top) or "none"),
        ]
    if name == "drift":
        out = []
        for model, m in sorted((body.get("models") or {}).items()):
            if not m.get("available"):
                out.append((f"Model {model[:12]}", f"not computed: {m.get('why', 'no reference')}"))
                continue
            levels: dict[str, int] = {}
            for f in m.get("features") or []:
                levels[str(f.get("level"))] = levels.get(str(f.get("level")), 0) + 1
            out.append((f"Model {model[:12]}, features by drift level", _compact(levels)))
        return out or [("Drift", "no model scored decisions")]
    if name == "retention":
        return [
            ("Oldest record", g("oldest_record")),
            ("Days held", g("held_days")),
            ("Minimum (days)", g("minimum_days")),
            ("Minimum met", g("meets_minimum")),
        ]
    return []
