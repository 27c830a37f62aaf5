"""Model cards: what a model is, what it was trained on, how well it does, where not to use it.

A card is JSON (``<model id>.card.json``, the machine-readable record that the
compliance reports and the drift check read) and Markdown
(``<model id>.card.md``, rendered from the JSON for people). It names the
model by its id, so a card cannot silently describe another model.

Example::

    card = build_card(model_id=..., ...)
    Path(f"{card['model_id']}.card.md").write_text(render_markdown(card))
"""

from __future__ import annotations

import datetime as dt
import platform
from typing import TYPE_CHECKING, Any

from explain.drift import Profile
from explain.features import FEATURES, SCHEMA_VERSION

if TYPE_CHECKING:
    from explain.train import DataSource

__all__ = ["CARD_FORMAT", "build_card", "render_markdown"]

CARD_FORMAT = "govgate.model-card/v1"

INTENDED_USE = (
    "Scores the risk that a proposed action on a virtual machine or sandbox "
    "(start, stop, delete, resize, snapshot, revert, migrate, ...) leads to an "
    "incident, so that govgate can decide between executing it, asking a human "
    "and denying it. The score supports human oversight; it is not the only "
    "safeguard: hard policy rules, approval thresholds and the stop switch apply "
    "whatever the score."
)

LIMITS_BOOTSTRAP = (
    "Trained on synthetic proposals labelled by documented rules of thumb "
    "(explain/bootstrap.py), not on any site's incidents: it encodes priors, "
    "and its held-out metrics measure how well it learned those rules, not how "
    "well it predicts real incidents. Retrain on real history as soon as there is some.",
)
LIMITS_COMMON = (
    "Sees only the features of its schema: it knows nothing of the guest's "
    "workload, the content of disks, or actions on other targets beyond the "
    "recent-action count.",
    "Scores are probabilities under the training distribution; when the drift "
    "check reports a significant shift, scores are less trustworthy.",
    "Not for decisions about people; not a substitute for change management.",
)


def build_card(
    *,
    model_id: str,
    params: dict[str, Any],
    booster_params: dict[str, Any],
    source: DataSource,
    digest: str,
    rows: int,
    positives: int,
    train_rows: int,
    metrics: dict[str, Any],
    profile: Profile,
    created: dt.datetime,
) -> dict[str, Any]:
    limits = (LIMITS_BOOTSTRAP if source.kind == "bootstrap" else ()) + LIMITS_COMMON
    return {
        "format": CARD_FORMAT,
        "model_id": model_id,
        "created": created.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "schema_version": SCHEMA_VERSION,
        "model_type": "XGBoost gradient-boosted trees, binary:logistic",
        "software": {"xgboost": _xgboost_version(), "python": platform.python_version()},
        "features": [
            {
                "name": f.name,
                "description": f.description,
                "unknown": f.unknown,
                "monotone": f.monotone,
            }
            for f in FEATURES
        ],
        "constraints": {f.name: f.monotone for f in FEATURES if f.monotone},
        "parameters": params,
        "booster_parameters": booster_params,
        "data": {
            "source": source.kind,
            "detail": source.detail,
            **source.extra,
            "sha256": digest,
            "rows": rows,
            "positives": positives,
            "train_rows": train_rows,
            "holdout_rows": rows - train_rows,
        },
        "metrics": metrics,
        "intended_use": INTENDED_USE,
        "limits": list(limits),
        "reference": profile.to_json(),
    }


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _xgboost_version() -> str:
    import xgboost as xgb  # here: reading a card (the report, drift) needs no XGBoost

    return str(xgb.__version__)


def render_markdown(card: dict[str, Any]) -> str:
    """The card for people. Everything here is also in the JSON."""
    m, d = card["metrics"], card["data"]
    lines = [
        f"# Model card: `{card['model_id'][:16]}`",
        "",
        f"- **Model id (SHA-256 of the file):** `{card['model_id']}`",
        f"- **Created:** {card['created']}",
        f"- **Type:** {card['model_type']}",
        f"- **Feature schema:** `{card['schema_version']}`",
        f"- **Software:** XGBoost {card['software']['xgboost']}, "
        f"Python {card['software']['python']}",
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        "## Limits",
        "",
        *[f"- {limit}" for limit in card["limits"]],
        "",
        "## Training data",
        "",
        f"- **Source:** {d['source']} ({d['detail']})",
        f"- **SHA-256 of the featurized data:** `{d['sha256']}`",
        f"- **Rows:** {d['rows']} ({d['positives']} labelled harmful); "
        f"{d['train_rows']} for training, {d['holdout_rows']} held out",
        "",
        "## Parameters",
        "",
        "| parameter | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(v)} |" for k, v in card["parameters"].items()],
        "",
        "Monotone constraints (+1: a higher value never lowers risk; -1: never raises it): "
        + ", ".join(f"`{k}` {v:+d}" for k, v in card["constraints"].items())
        + ".",
        "",
        "## Held-out metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *[
            f"| {name} | {_fmt(m[key])} |"
            for name, key in (
                ("ROC-AUC", "roc_auc"),
                ("PR-AUC (average precision)", "pr_auc"),
                ("Brier score", "brier"),
                ("Log loss", "log_loss"),
                ("Held-out rows", "holdout_rows"),
                ("Held-out positive rate", "holdout_positive_rate"),
            )
        ],
        "",
        "Calibration (held-out rows by predicted risk):",
        "",
        "| predicted | rows | mean predicted | observed rate |",
        "|---|---|---|---|",
        *[
            f"| {b['bin']} | {b['rows']} | {_fmt(b['mean_predicted'])} | "
            f"{_fmt(b['observed_rate'])} |"
            for b in m["calibration"]
        ],
        "",
        "## Features",
        "",
        "| feature | meaning | when unknown | monotone |",
        "|---|---|---|---|",
        *[
            f"| `{f['name']}` | {f['description']} | {f['unknown']} | {f['monotone']:+d} |"
            for f in card["features"]
        ],
        "",
    ]
    return "\n".join(lines)
