"""The workers' supervisor (gateway.workers) with stand-in workers: small scripts that
listen (write their port file) or crash as a test needs. ``govgate serve --workers`` itself
is tested end to end in tests/e2e/test_serve.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gateway import workers
from gateway.workers import Supervisor, worker_names

# A stand-in worker: listens (writes its port file) on its first start and crashes 0.2 s
# later; every later start crashes before it listens.
CRASHER = """
import sys, time
from pathlib import Path
args = sys.argv[1:]
port_file = Path(args[len(args) - 1 - args[::-1].index("--port-file") + 1])
starts = Path(sys.argv[1])
n = int(starts.read_text()) + 1 if starts.exists() else 1
starts.write_text(str(n))
if n == 1:
    port_file.write_text("4321")
    time.sleep(0.2)
sys.exit(3)
"""


class Scripted(Supervisor):
    def __init__(self, script: Path, starts: Path, said: list[str]) -> None:
        super().__init__([], ["w-1"], "127.0.0.1", 0, say=said.append)
        self.script, self.starts = script, starts

    def _command(self, w: workers._Worker) -> list[str]:
        return [sys.executable, str(self.script), str(self.starts), *super()._command(w)]


def test_worker_names_stay_the_same_from_one_start_to_the_next():
    assert worker_names("", 3) == ["worker-1", "worker-2", "worker-3"]
    assert worker_names("gw", 2) == ["gw-1", "gw-2"]


def test_a_worker_that_keeps_crashing_before_it_listens_stops_the_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(workers, "RESTART_DELAY_S", 0.01)
    monkeypatch.setattr(workers, "_MAX_RESTART_DELAY_S", 0.04)
    script, starts, said = tmp_path / "crasher.py", tmp_path / "starts", []
    script.write_text(CRASHER)
    assert Scripted(script, starts, said).run() == 1
    # The first start listened, then crashed; five starts again, each ending before it
    # listened: the fifth in a row gives up.
    assert int(starts.read_text()) == 1 + workers._MAX_FAILED_STARTS
    assert any("workers listening on 127.0.0.1:4321" in line for line in said)
    assert sum("starting it again" in line for line in said) == workers._MAX_FAILED_STARTS
    assert "exited 5 times in a row before it listened (status 3)" in said[-1]
