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

Replay floor
------------
Reading the whole ledger at every start takes time in proportion to its size
(about 8,000 records a second). Most of it is final decisions that the state
keeps nothing of. So a gateway that stops cleanly writes a *replay floor*
(``DATA/replay-floor.json``): the lowest index whose record its state still
needs. That is the decision record of every decision not yet final (pending,
or allowed to run with no outcome), the record of every rollback without an
outcome, the first record of the last hour (the risk model's recent-activity
window) and, with replicas, the first record not yet read from the others.
The next start reads the halts, resumes and policy activations below the
floor (few, found through the query index) and every record from the floor on.

A floor stays right later, whatever happens after it was written: a decision
that is not final at a later time either was not final then or was recorded
after it, and the same holds for rollbacks and the recent window. So a crash
after a clean stop only means the next start reads more than it needs. The
file is bound to the ledger by the leaf hash of the record just below it, and
is not used (the whole ledger is read, and the reason said) when it does not
match, names a record past the head, was written in the future (the clock
stepped back), or the ledger has records from before it kept claims (their
request ids live only in memory). Request ids decided below the floor are
found through their claims, as for those that left the in-memory index.

Example::

    replay = Replay()
    async for rec in records:          # every record, in index order
        replay.feed(rec)
    state = replay.result()
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from gateway.pipeline import Gateway
from gateway.replay import RECENT, Replay, Replayed
from ledger.record import format_time, parse_time
from ledger.store import RecordQuery

__all__ = ["FLOOR_FILE", "Replay", "Replayed", "load_floor", "recover", "save_floor"]

FLOOR_FILE = "replay-floor.json"
_FLOOR_FORMAT = "govgate-replay-floor/1"
_BELOW_FLOOR = ("halt", "resume", "policy")  # the kinds whose state outlives a final decision


async def recover(gw: Gateway, *, page: int = 10_000, floor: int = 0,
                  now: dt.datetime | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Replayed:  # fmt: skip
    """Rebuild ``gw``'s state from its ledger, then finish what a crash interrupted.

    Reads every record from ``floor`` on (:func:`load_floor`; 0: every record) once, in
    pages, and below it the halts, resumes and policy activations; ``progress(done,
    total)`` is called per page. ``now``: the time the recent-activity window ends at.
    """
    ledger = gw.ledger
    total = (await ledger.store.snapshot())[0].size
    replay = Replay(now, keep=gw.cache, requests=gw.requests,
                    claims_from=ledger.store.claims_from, replica=gw.replica,
                    floor=floor)  # fmt: skip
    below = []
    for kind in _BELOW_FLOOR if floor else ():
        below += await _all(gw, RecordQuery(kind=kind, end=floor, limit=page))
    for rec in sorted(below, key=lambda r: r.index):
        replay.feed(rec)
    after: int | None = floor - 1 if floor else None
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


async def _all(gw: Gateway, query: RecordQuery) -> list[Any]:
    out: list[Any] = []
    after: int | None = None
    while batch := await gw.ledger.store.query(query, after=after):
        out += batch
        after = batch[-1].index
    return out


async def save_floor(gw: Gateway, data: Path, now: dt.datetime | None = None) -> int | None:
    """Write the replay floor of ``gw`` as it stands (see the module's docs) to
    ``data/replay-floor.json``; returns it, or None when none can be vouched for now (work
    under way: the file, if any, is left as it was, which stays right)."""
    held = gw.replay_floor()
    if held is None:
        return None
    now = now or dt.datetime.now(dt.UTC)
    store = gw.ledger.store
    floor = (await store.snapshot())[0].size
    if gw.shared:
        floor = min(floor, gw.synced_upto)
    if held >= 0:
        floor = min(floor, held)
    recent = await store.query(RecordQuery(since=format_time(now - RECENT), limit=1))
    if recent:
        floor = min(floor, recent[0].index)
    leaf = b""
    if floor > 0:
        [below] = await store.query(RecordQuery(start=floor - 1, end=floor, limit=1))
        leaf = below.leaf_hash
    body = {"format": _FLOOR_FORMAT, "index": floor, "leaf": leaf.hex(),
            "written": format_time(now)}  # fmt: skip
    path = data / FLOOR_FILE
    fd, tmp = tempfile.mkstemp(prefix=FLOOR_FILE, suffix=".partial", dir=data)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(body, option=orjson.OPT_SORT_KEYS) + b"\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return floor


async def load_floor(gw: Gateway, data: Path, now: dt.datetime | None = None) -> tuple[int, str]:
    """The replay floor to start from, and why none is used ("" when it is, or when there
    is no file): 0 means read the whole ledger."""
    path = data / FLOOR_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return 0, ""
    except OSError as err:
        return 0, f"{path} cannot be read ({err})"
    try:
        body = orjson.loads(raw)
        if not isinstance(body, dict) or body.get("format") != _FLOOR_FORMAT:
            raise ValueError(f"not a {_FLOOR_FORMAT} file")
        index, leaf, written = body["index"], body["leaf"], body["written"]
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ValueError("index is not a record index")
        if not isinstance(leaf, str) or not isinstance(written, str):
            raise ValueError("leaf and written must be strings")
        leaf_hash, when = bytes.fromhex(leaf), parse_time(written)
    except (orjson.JSONDecodeError, KeyError, ValueError) as err:
        return 0, f"{path} is not a replay floor ({err})"
    store = gw.ledger.store
    head = (await store.snapshot())[0].size
    if store.claims_from > 0:
        return 0, "the ledger has records from before it kept claims"
    if index > head:
        return 0, f"{path} names record {index}, past the ledger's head {head}"
    if when > (now or dt.datetime.now(dt.UTC)):
        return 0, f"{path} was written at {written}, in the future (the clock stepped back?)"
    if index > 0:
        [below] = await store.query(RecordQuery(start=index - 1, end=index, limit=1))
        if below.leaf_hash != leaf_hash:
            return 0, f"{path} was written for another ledger (record {index - 1} differs)"
    return index, ""
