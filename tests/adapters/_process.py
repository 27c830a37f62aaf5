"""Stopping the daemons the adapter tests start."""

from __future__ import annotations

import signal
import subprocess

__all__ = ["stop"]


def stop(proc: subprocess.Popen[bytes], grace: float = 15) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; a process already gone is fine."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
