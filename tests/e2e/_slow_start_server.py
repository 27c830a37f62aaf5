"""Child process for ``test_serve.py``: ``govgate serve`` whose start-up takes three
seconds more while it rebuilds its state (as on a large ledger), and says when.

Usage::

    python _slow_start_server.py serve --data DIR ...

The rest is the real ``govgate`` command line.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import gateway.serve
from gateway.cli import main

_recover = gateway.serve.recover


async def _slow(*args: Any, **kwargs: Any) -> Any:
    sys.stderr.write("rebuilding slowly\n")
    sys.stderr.flush()
    await asyncio.sleep(3)
    return await _recover(*args, **kwargs)


gateway.serve.recover = _slow  # type: ignore[assignment]

if __name__ == "__main__":
    sys.argv[0] = "govgate"
    main()
