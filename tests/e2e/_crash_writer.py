"""Child process for ``test_crash.py``: append under load and acknowledge durable records.

Usage::

    python _crash_writer.py DATA_DIR [--writers N] [--count N] [--ledger-url URL]

Opens the ledger in DATA_DIR (whose key must exist) with frequent count- and
time-triggered checkpoints and runs N concurrent asyncio writers. Each time
``Ledger.append`` returns, the record is durable by contract, and only then
does the writer print one line ``INDEX LEAF_HASH_HEX`` to standard output
with a single ``write(2)`` (shorter than PIPE_BUF, so atomic on a pipe): a
line the parent reads is an acknowledgement the ledger must keep.

Without ``--count`` it appends until it is killed (the parent sends SIGKILL).
With ``--count N`` it appends N records in all, then closes the ledger
normally (which signs a final checkpoint) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
from pathlib import Path

from ledger import DataDir, Draft, LedgerConfig


async def run(data: Path, writers: int, count: int | None, url: str | None) -> None:
    config = LedgerConfig(checkpoint_every=50, checkpoint_interval=0.05)
    pid = os.getpid()
    tickets = itertools.count()
    async with DataDir(data, url).open_ledger(config) as log:

        async def writer(w: int) -> None:
            while True:
                n = next(tickets)
                if count is not None and n >= count:
                    return
                draft = Draft(
                    "note",
                    {"pid": pid, "writer": w, "n": n},
                    actor=f"crash-writer-{w}",
                )
                rec = await log.append(draft)
                os.write(1, f"{rec.index} {rec.leaf_hash.hex()}\n".encode())

        await asyncio.gather(*(writer(w) for w in range(writers)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data", type=Path)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--count", type=int, default=None)
    parser.add_argument("--ledger-url", default=None, help="a PostgreSQL ledger instead")
    args = parser.parse_args()
    asyncio.run(run(args.data, args.writers, args.count, args.ledger_url))


if __name__ == "__main__":
    main()
