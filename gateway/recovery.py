"""Start-up: the gateway's state rebuilt from its own ledger.

The ledger is the gateway's memory. Everything the gateway keeps in process
(the decisions and their request ids, pending approvals with the reviews
they have, halts in force, what a rollback needs, the recent-activity counts)
is a function of the records it wrote, so a restarted gateway reads them
back (:class:`Replay`) instead of forgetting:

* a repeated ``request_id`` still returns the first decision and never runs
  it again;
* an approval given before the restart still counts, and the deadline still
  holds;
* a halt stays on until someone resumes it.

What a crash interrupted is finished by :meth:`gateway.pipeline.Gateway.recover`:
a decision that was allowed to run (its ``decision`` record, or the approval
that completed it, carries the plan) but has no ``outcome`` record is
reconciled against the runtime (the adapter's ``reconcile``) and gets one.
Nothing is executed again: an action that did not take effect is recorded as
failed, not retried.

A record this module cannot read (a body written by hand with
``govgate ledger append``, say) is skipped and named in :attr:`Replayed.skipped`;
it never stops the gateway from starting.

Example::

    replay = Replay()
    async for rec in records:          # every record, in index order
        replay.feed(rec)
    state = replay.result()
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.pipeline import Gateway
from gateway.replay import Replay, Replayed
from ledger.store import RecordQuery

__all__ = ["Replay", "Replayed", "recover"]


async def recover(gw: Gateway, *, page: int = 10_000,
                  progress: Callable[[int, int], None] | None = None) -> Replayed:  # fmt: skip
    """Rebuild ``gw``'s state from its ledger, then finish what a crash interrupted.

    Reads every record once, in pages; ``progress(done, total)`` is called per page.
    """
    ledger = gw.ledger
    total = (await ledger.store.snapshot())[0].size
    replay = Replay(keep=gw.cache, requests=gw.requests, claims_from=ledger.store.claims_from,
                    replica=gw.replica)  # fmt: skip
    after: int | None = None
    while True:
        batch = await ledger.store.query(RecordQuery(limit=page), after=after)
        for rec in batch:
            replay.feed(rec)
        if not batch:
            break
        after = batch[-1].index
        if progress is not None:
            progress(after + 1, total)
    state = replay.result()
    gw.restore(state, replay)
    await gw.finish_interrupted(state)
    return state
