"""End-to-end fixtures: ``gg`` runs commands (see cli_harness); ``log`` is a keyed data dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_harness import ORIGIN, Govgate, secrets_under


@pytest.fixture
def gg(tmp_path: Path) -> Iterator[Govgate]:
    runner = Govgate()
    yield runner
    secrets = secrets_under(tmp_path)
    for run in runner.runs:
        for text in (run.out, run.err):
            assert "PRIVATE+KEY" not in text, f"a private key was printed by: {run}"
            leaked = [s for s in secrets if s in text]
            assert not leaked, f"a secret was printed by: {run}"


@pytest.fixture
def log(tmp_path: Path, gg: Govgate) -> tuple[Path, str]:
    """A data directory with a key (through the CLI, in process) and its verifier key."""
    data = tmp_path / "data"
    r = gg("keys", "generate", "--data", data, "--name", ORIGIN)
    assert r.code == 0, r
    return data, r.out.strip()
