"""Charts of explanations, drawn with ``shap``'s plots on matplotlib's Agg backend.

* :func:`waterfall` — one decision: from the base value, each feature's push
  up or down to the final log-odds.
* :func:`importance` — many decisions: a beeswarm (every decision a dot,
  coloured by the feature's value) or a bar chart of mean |contribution|.

The format follows the file suffix (``.png`` or ``.svg``). Drawing is slow
(tens of milliseconds, and importing ``shap`` takes seconds), so the gateway
never draws on its hot path: charts are for the CLI and the compliance
reports.

Example::

    waterfall(scores.explanation(0), Path("decision.svg"))
    importance(scores, Path("importance.png"), kind="beeswarm")
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from explain.explanation import Explanation
from explain.features import FEATURE_NAMES
from explain.scorer import Scores

__all__ = ["FORMATS", "importance", "waterfall"]

FORMATS = (".png", ".svg")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _shap() -> Any:
    # shap's colour module calls a matplotlib API that matplotlib has marked for
    # deprecation; that is shap's business, not the user's, so keep it quiet.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        import shap

    return shap


def _check_path(path: Path) -> None:
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"chart file must end in {' or '.join(FORMATS)}: {path}")


def _save(plt: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plt.gcf()
    # svg.fonttype "none" keeps labels as text: searchable, selectable, accessible.
    plt.rcParams["svg.fonttype"] = "none"
    fig.savefig(path, format=path.suffix.lower()[1:], bbox_inches="tight", dpi=120)
    plt.close(fig)


def waterfall(explanation: Explanation, path: Path, *, max_display: int = 10) -> Path:
    """Draw one decision's waterfall chart (log-odds) to ``path``."""
    _check_path(path)
    shap = _shap()
    plt = _pyplot()
    values = np.array([explanation.contributions[n] for n in FEATURE_NAMES])
    data = np.array([explanation.values[n] for n in FEATURE_NAMES])
    exp = shap.Explanation(
        values=values,
        base_values=explanation.base_value,
        data=np.where(np.isnan(data), np.nan, np.round(data, 3)),
        feature_names=list(FEATURE_NAMES),
    )
    plt.figure()
    shap.plots.waterfall(exp, max_display=max_display, show=False)
    risk = explanation.risk
    plt.title(
        f"risk {risk:.3f} = sigmoid({explanation.margin:+.3f} log-odds); "
        f"model {explanation.model_id[:12]}",
        fontsize=9,
    )
    _save(plt, path)
    return path


def importance(
    scores: Scores,
    path: Path,
    *,
    kind: Literal["beeswarm", "bar"] = "beeswarm",
    max_display: int = 12,
) -> Path:
    """Draw global feature importance over a set of scored decisions to ``path``."""
    _check_path(path)
    if kind not in ("beeswarm", "bar"):
        raise ValueError(f"unknown chart kind {kind!r} (beeswarm or bar)")
    if len(scores) == 0:
        raise ValueError("no decisions to chart")
    shap = _shap()
    plt = _pyplot()
    exp = shap.Explanation(
        values=scores.contributions,
        base_values=np.full(len(scores), scores.base_value),
        data=scores.features.astype(np.float64),
        feature_names=list(FEATURE_NAMES),
    )
    plt.figure()
    if kind == "beeswarm":
        shap.plots.beeswarm(exp, max_display=max_display, show=False)
    else:
        shap.plots.bar(exp, max_display=max_display, show=False)
    n = len(scores)
    plt.title(f"what drives risk over {n} decision{'s' * (n != 1)} (log-odds)", fontsize=9)
    _save(plt, path)
    return path
