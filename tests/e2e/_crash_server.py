"""Child process for ``test_serve.py``: ``govgate serve`` that dies at one exact point.

Usage::

    python _crash_server.py serve --data DIR ...

Runs the real ``govgate`` command line, except that the first decision allowed
to execute kills the process with SIGKILL right after its decision record is
durable and before the adapter is called: the crash that start-up recovery
must finish. No Python clean-up runs (no ``finally``, no ledger close), as in a
real crash.
"""

from __future__ import annotations

import os
import signal
import sys

from gateway.cli import main
from gateway.decision import Decision
from gateway.pipeline import Gateway


async def _die(self: Gateway, d: Decision) -> None:
    sys.stderr.write(f"crashing before executing {d.decision_id}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


Gateway._execute = _die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv[0] = "govgate"
    main()
