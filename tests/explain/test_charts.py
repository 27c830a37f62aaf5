"""Charts are real files in the format asked for, and show what they explain."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from explain.bootstrap import generate, to_matrix
from explain.charts import importance, waterfall
from explain.model import Model
from explain.scorer import Scorer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def scores(bundled_model: Model):
    return Scorer(bundled_model).score(to_matrix(generate(120, seed=4))[0])


def test_waterfall_png_and_svg(tmp_path, scores):
    exp = scores.explanation(0)
    png = waterfall(exp, tmp_path / "one.png")
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000
    svg = waterfall(exp, tmp_path / "sub" / "one.svg")
    root = ET.fromstring(svg.read_bytes())
    assert root.tag.endswith("svg")
    text = svg.read_text()
    top = exp.top(1)[0]
    assert top.feature in text  # labels are kept as text, not paths
    assert f"risk {exp.risk:.3f}" in text


@pytest.mark.parametrize("kind", ["beeswarm", "bar"])
def test_importance_charts(tmp_path, scores, kind):
    path = importance(scores, tmp_path / f"{kind}.svg", kind=kind)
    text = path.read_text()
    assert f"over {len(scores)} decisions" in text
    assert "destructiveness" in text


def test_bad_chart_requests(tmp_path, scores):
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        waterfall(scores.explanation(0), tmp_path / "x.gif")
    with pytest.raises(ValueError, match="kind"):
        importance(scores, tmp_path / "x.png", kind="pie")  # type: ignore[arg-type]
    assert not (tmp_path / "x.png").exists()
