"""Chart geometry for the HTML report: numbers in, rectangles and lines out.

Pure functions over the report's evidence; no markup here. The template
(``templates/chart.html.j2``) turns a :class:`Chart` into inline SVG, so every
label goes through jinja2's autoescaping. A series that the evidence does not
hold gives a chart with ``missing`` set (a sentence saying why) and nothing to
draw: the report says so instead of drawing an empty frame.

Example::

    chart = risk_chart(report["evidence"]["risk"])
    if chart.missing: print(chart.missing)
    else: print(len(chart.bars), "bars")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "Bar",
    "Chart",
    "Marker",
    "decisions_chart",
    "drift_charts",
    "importance_chart",
    "risk_chart",
    "time_to_approval_chart",
]

# Drawing area, in SVG user units.
WIDTH = 640.0
ROW = 18.0  # height of one horizontal bar row
LABEL_W = 170.0  # left margin for row labels (horizontal charts)
PLOT_H = 200.0  # plot height of column charts
MARGIN = 30.0
# Colour-blind-safe palette (Okabe-Ito), one colour per state, in a fixed order.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


@dataclass(frozen=True)
class Segment:
    x: float
    y: float
    w: float
    h: float
    colour: str
    title: str  # tooltip and text alternative for this piece


@dataclass(frozen=True)
class Bar:
    label: str
    value_text: str
    label_x: float
    label_y: float
    value_x: float
    value_y: float
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class Marker:
    """A threshold line across the plot."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    label_x: float
    label_y: float
    anchor: str = "start"  # SVG text-anchor: "end" near the right edge, so labels stay inside


def _marker(x: float, y1: float, y2: float, label: str, i: int) -> Marker:
    # Labels of successive markers go on successive lines so that close thresholds stay legible.
    right = x > WIDTH - 160
    return Marker(x, y1, x, y2, label, x - 3 if right else x + 3, 10.0 + 11.0 * i,
                  "end" if right else "start")  # fmt: skip


@dataclass(frozen=True)
class Chart:
    id: str
    title: str
    description: str  # the text alternative: what the chart shows, in words
    width: float = WIDTH
    height: float = 0.0
    bars: tuple[Bar, ...] = ()
    markers: tuple[Marker, ...] = ()
    axis: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # x1, y1, x2, y2
    legend: tuple[tuple[str, str], ...] = ()  # (colour, label)
    missing: str = ""
    notes: tuple[str, ...] = field(default=())


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _hbars(
    chart_id: str,
    title: str,
    description: str,
    rows: Sequence[tuple[str, float]],
    markers: Sequence[tuple[float, str]] = (),
    colour: str = PALETTE[0],
) -> Chart:
    """Horizontal bars, one row per label, scaled to the largest value or marker."""
    top = max([v for _, v in rows] + [m for m, _ in markers] + [1e-12])
    plot_w = WIDTH - LABEL_W - 70.0
    margin = MARGIN + 11.0 * len(markers)
    height = margin + ROW * len(rows) + MARGIN
    bars = []
    for i, (label, value) in enumerate(rows):
        y = margin + i * ROW
        w = max(value, 0.0) / top * plot_w
        seg = Segment(LABEL_W, y + 2, w, ROW - 4, colour, f"{label}: {_fmt(value)}")
        bars.append(
            Bar(label, _fmt(value), LABEL_W - 6, y + ROW - 5, LABEL_W + w + 4, y + ROW - 5, (seg,))
        )
    lines = []
    for i, (value, label) in enumerate(markers):
        x = LABEL_W + value / top * plot_w
        lines.append(_marker(x, 12.0 + 11.0 * i, height - MARGIN, label, i))
    return Chart(
        chart_id,
        title,
        description,
        height=height,
        bars=tuple(bars),
        markers=tuple(lines),
        axis=(LABEL_W, margin, LABEL_W, height - MARGIN),
    )


def _columns(
    chart_id: str,
    title: str,
    description: str,
    columns: Sequence[tuple[str, Sequence[tuple[str, float]]]],
    colours: Mapping[str, str],
    markers: Sequence[tuple[float, str]] = (),
    span: tuple[float, float] | None = None,
) -> Chart:
    """Stacked columns. ``markers`` are x positions in the units of ``span`` (lo, hi)."""
    top = max([sum(v for _, v in segs) for _, segs in columns] + [1e-12])
    left = MARGIN + 20.0
    plot_w = WIDTH - left - MARGIN
    col_w = plot_w / max(len(columns), 1)
    top_margin = MARGIN + 11.0 * len(markers)
    base = top_margin + PLOT_H
    bars = []
    for i, (label, segs) in enumerate(columns):
        x = left + i * col_w
        y = base
        pieces = []
        for name, value in segs:
            h = value / top * PLOT_H
            y -= h
            if value:
                pieces.append(
                    Segment(
                        x + 1, y, max(col_w - 2, 1), h, colours[name], f"{label} {name}: {value:g}"
                    )
                )
        total = sum(v for _, v in segs)
        bars.append(
            Bar(label, f"{total:g}", x + col_w / 2, base + 14, x + col_w / 2, y - 3, tuple(pieces))
        )
    lines = []
    if span is not None:
        lo, hi = span
        for i, (value, label) in enumerate(markers):
            x = left + (value - lo) / (hi - lo) * plot_w
            lines.append(_marker(x, 12.0 + 11.0 * i, base, label, i))
    return Chart(
        chart_id,
        title,
        description,
        height=base + 30.0,
        bars=tuple(bars),
        markers=tuple(lines),
        axis=(left, base, WIDTH - MARGIN, base),
        legend=tuple((colours[n], n) for n in colours) if len(colours) > 1 else (),
    )


def decisions_chart(decisions: Mapping[str, Any]) -> Chart:
    """Decisions per day, stacked by the state in the decision record."""
    title = "Decisions over time by state"
    by_day: Mapping[str, Mapping[str, int]] = decisions.get("by_day") or {}
    if not by_day:
        return Chart("chart-decisions", title, "", missing="No decisions in the period.")
    states = sorted({s for day in by_day.values() for s in day})
    colours = {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(states)}
    cols = [(day, [(s, float(by_day[day].get(s, 0))) for s in states]) for day in sorted(by_day)]
    desc = "; ".join(
        f"{day}: " + ", ".join(f"{n} {s}" for s, n in sorted(by_day[day].items()))
        for day in sorted(by_day)
    )
    return _columns(
        "chart-decisions", title, f"Decisions per day and state. {desc}.", cols, colours
    )


def risk_chart(risk: Mapping[str, Any]) -> Chart:
    """The 20-bin risk histogram, with the thresholds of each policy whose file was found."""
    title = "Risk distribution against thresholds"
    hist: Sequence[Mapping[str, Any]] = risk.get("histogram") or []
    if not hist or not risk.get("scored"):
        return Chart("chart-risk", title, "", missing="No scored decisions in the period.")
    markers: list[tuple[float, str]] = []
    notes: list[str] = []
    for p in risk.get("policies") or []:
        th = p.get("thresholds") or {}
        short = str(p.get("policy_id", ""))[:12]
        if not th.get("recorded"):
            notes.append(f"Thresholds of policy {short} not recorded: {th.get('why', 'unknown')}.")
            continue
        for key in ("execute_below", "approve_below"):
            try:
                value = float((th.get("defaults") or {})[key])
            except (KeyError, TypeError, ValueError):
                continue
            if 0.0 <= value <= 1.0:
                markers.append((value, f"{key} {value:g} ({short})"))
    if not markers and not notes:
        notes.append("No policy thresholds are recorded for the period.")
    cols = [(f"{b['from']:g}", [("decisions", float(b["count"]))]) for b in hist]
    desc = (
        f"Risk of {risk['scored']} scored decisions in 20 bins from 0 to 1; "
        + ", ".join(f"{b['from']:g}-{b['to']:g}: {b['count']}" for b in hist if b["count"])
        + (". Thresholds: " + "; ".join(m for _, m in markers) if markers else "")
        + "."
    )
    chart = _columns(
        "chart-risk",
        title,
        desc,
        cols,
        {"decisions": PALETTE[0]},
        markers,
        (float(hist[0]["from"]), float(hist[-1]["to"])),
    )
    return replace(chart, notes=tuple(notes))


def importance_chart(explanations: Mapping[str, Any]) -> Chart:
    """Mean |SHAP| per feature (log-odds), largest first."""
    title = "Global feature importance (mean |SHAP|)"
    rows = [
        (str(e["feature"]), float(e["mean_abs_shap"]))
        for e in explanations.get("global_importance") or []
    ]
    if not rows:
        return Chart(
            "chart-importance", title, "", missing="No decision in the period has SHAP values."
        )
    desc = "Mean absolute SHAP value per feature, in log-odds: " + ", ".join(
        f"{f} {_fmt(v)}" for f, v in rows
    )
    return _hbars("chart-importance", title, desc + ".", rows)


def drift_charts(drift: Mapping[str, Any]) -> list[Chart]:
    """One chart per model: PSI per feature, with the moderate and significant thresholds."""
    models: Mapping[str, Mapping[str, Any]] = drift.get("models") or {}
    if not models:
        return [Chart("chart-drift", "Drift per feature", "", missing="No model scored decisions.")]
    th = drift.get("thresholds") or {}
    out = []
    for i, (model, body) in enumerate(sorted(models.items())):
        title = f"Drift per feature, model {model[:12]}"
        if not body.get("available") or not body.get("features"):
            why = body.get("why") or "no drift reference for this model"
            out.append(Chart(f"chart-drift-{i}", title, "", missing=f"Not computed: {why}."))
            continue
        rows = [(str(f["feature"]), float(f["psi"])) for f in body["features"]]
        markers = [
            (float(th[k]), f"{k} {th[k]:g}")
            for k in ("moderate", "significant")
            if isinstance(th.get(k), int | float)
        ]
        desc = (
            f"Population stability index of {body.get('decisions', 0)} decisions against the "
            "training profile: " + ", ".join(f"{f} {_fmt(v)}" for f, v in rows) + "."
        )
        out.append(_hbars(f"chart-drift-{i}", title, desc, rows, markers, PALETTE[5]))
    return out


def time_to_approval_chart(oversight: Mapping[str, Any]) -> Chart:
    """Time from decision to the approval that completed it, in fixed bins."""
    title = "Time to approval"
    tta: Mapping[str, Any] = oversight.get("time_to_approval_seconds") or {}
    hist = tta.get("histogram") or []
    if not tta.get("count") or not hist:
        return Chart("chart-approval", title, "", missing="No decision was completed by approval.")
    cols = [(str(b["bin"]), [("approvals", float(b["count"]))]) for b in hist]
    desc = (
        f"{tta['count']} approvals; mean {_fmt(float(tta['mean']))} s; "
        + ", ".join(f"{b['bin']}: {b['count']}" for b in hist)
        + "."
    )
    return _columns("chart-approval", title, desc, cols, {"approvals": PALETTE[2]})
