"""The committed containerd stubs are exactly what scripts/gen-containerd-stubs.sh makes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = Path("adapters/kata/_containerd")


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / PKG).rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def test_stubs_are_fresh(tmp_path: Path):
    subprocess.run(
        [str(ROOT / "scripts" / "gen-containerd-stubs.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    fresh, committed = _files(tmp_path), _files(ROOT)
    assert fresh, "the generator wrote nothing"
    stale = sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))
    assert not stale, f"stale stubs (run scripts/gen-containerd-stubs.sh): {stale}"
