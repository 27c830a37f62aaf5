"""Child process for ``test_serve.py``: ``govgate serve`` whose libvirt calls to execute
block in the adapter's worker thread for ten minutes, as a call into a hung libvirtd does.

Usage::

    python _stuck_server.py serve --data DIR ...

The rest is the real ``govgate`` command line.
"""

from __future__ import annotations

import asyncio
import sys
import time

from adapters.libvirt import LibvirtAdapter
from adapters.runtime import Outcome, Plan
from gateway.cli import main


async def _stuck(self: LibvirtAdapter, plan: Plan) -> Outcome:
    sys.stderr.write(f"stuck executing {plan.action.verb}\n")
    sys.stderr.flush()
    await asyncio.get_running_loop().run_in_executor(self._executor, time.sleep, 600)
    raise AssertionError("the stuck call returned")


LibvirtAdapter._execute = _stuck  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.argv[0] = "govgate"
    main()
