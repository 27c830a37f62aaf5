"""Reading an adapter's event stream in tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from adapters.runtime import LifecycleEvent

__all__ = ["drain"]


async def drain(events: AsyncIterator[LifecycleEvent], quiet: float = 1.0) -> list[LifecycleEvent]:
    """Every event until none has arrived for ``quiet`` seconds."""
    seen = []
    while True:
        try:
            seen.append(await asyncio.wait_for(anext(events), quiet))
        except TimeoutError:
            return seen
