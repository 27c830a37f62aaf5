"""The reference tables in docs/explain.md say what the code does."""

from __future__ import annotations

import re
from pathlib import Path

from adapters.action import VERBS
from explain.features import DESTRUCTIVENESS, FEATURES

DOC = (Path(__file__).resolve().parents[1] / "docs" / "explain.md").read_text()


def _rows(first_cell: str) -> dict[str, list[str]]:
    """Table rows whose first cell is a code span, keyed by it."""
    rows = {}
    for line in DOC.splitlines():
        m = re.match(r"\| `([^`]+)` \|(.*)\|$", line)
        if m and line.startswith(first_cell):
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def test_verb_table_matches_the_code():
    rows = _rows("| `")
    for verb, info in VERBS.items():
        cells = rows[verb.value]
        permission, libvirt_api, kata, reversibility, destructiveness = cells[:5]
        assert permission == (f"`domain.{info.permission}`" if info.permission else "—"), verb
        assert libvirt_api == (info.libvirt_api or "—"), verb
        assert kata == (info.kata or "—"), verb
        assert reversibility == info.reversibility.value, verb
        assert float(destructiveness) == DESTRUCTIVENESS[verb], verb
        for name in info.parameters:
            assert f"`{name}`" in cells[5], (verb, name)


def test_feature_table_matches_the_code():
    rows = _rows("| `")
    for f in FEATURES:
        cells = rows[f.name]
        assert cells[-1].replace("\u2212", "-") == f"{f.monotone:+d}".replace("+0", "0"), f.name
