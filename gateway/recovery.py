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
(:func:`floor_path`, one per replica): the lowest index whose record its state
still needs. That is the decision record of every decision not yet final
(pending, or allowed to run) or whose outcome is not yet durable, the record of
every rollback without an outcome, the first record of the last hour (the risk
model's recent-activity window) and, with replicas, the first record not yet
read from the others. While work that may still write records is under way (a
proposal or an approved action whose caller left, an outcome waiting for the
ledger), no floor is written.
The next start reads the halts, resumes and policy activations below the
floor (few, found through the query index) and every record from the floor on.

A floor stays right later, whatever happens after it was written: a decision
that is not final at a later time either was not final then or was recorded
after it, and the same holds for rollbacks and the recent window. So a crash
after a clean stop only means the next start reads more than it needs. The
file carries a MAC keyed by the data directory's secret salt, and is bound to
the ledger by the leaf hashes of the record just below it and of the head it
saw. It is not used (the whole ledger is read, and the reason said) when the
MAC or either record does not match (a hand-written file; a ledger restored
from a backup that lacks records the floor was saved over), when it is another
replica's, was written in the future (the clock stepped back), is not a small
regular file, or the ledger has records from before it kept claims (their
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
import hashlib
import hmac
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from gateway.pipeline import Gateway
from gateway.replay import RECENT, Replay, Replayed
from ledger.record import format_time, parse_time
from ledger.store import RecordQuery

__all__ = ["FLOOR_FILE", "Replay", "Replayed", "floor_path", "load_floor", "recover", "save_floor"]

FLOOR_FILE = "replay-floor.json"
_FLOOR_FORMAT = "govgate-replay-floor/1"
_BELOW_FLOOR = ("halt", "resume", "policy")  # the kinds whose state outlives a final decision
_MAX_FLOOR_BYTES = 4096


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


def floor_path(data: Path, replica: str = "") -> Path:
    """Where a gateway (a replica: each its own, even in a shared data directory) keeps
    its replay floor."""
    return data / (f"replay-floor.{replica}.json" if replica else FLOOR_FILE)


def _mac(salt: bytes, body: dict[str, Any]) -> str:
    """The floor's MAC, keyed by the data directory's secret salt: a floor is taken only
    from a gateway that could read it, never from a file written by hand."""
    key = hmac.new(salt, b"govgate replay floor v1", hashlib.sha256).digest()
    return hmac.new(key, orjson.dumps(body, option=orjson.OPT_SORT_KEYS), "sha256").hexdigest()


async def _leaf(gw: Gateway, index: int) -> bytes:
    """The leaf hash of record ``index`` (b"" below 0)."""
    if index < 0:
        return b""
    [rec] = await gw.ledger.store.query(RecordQuery(start=index, end=index + 1, limit=1))
    return bytes(rec.leaf_hash)


async def save_floor(
    gw: Gateway, data: Path, *, salt: bytes, now: dt.datetime | None = None
) -> int | None:
    """Write the replay floor of ``gw`` as it stands (see the module's docs) to
    :func:`floor_path`; returns it, or None when none can be vouched for now (work under
    way: the file, if any, is left as it was, which stays right)."""
    held = gw.replay_floor()
    if held is None:
        return None
    now = now or dt.datetime.now(dt.UTC)
    store = gw.ledger.store
    head = (await store.snapshot())[0].size
    if gw.shared:
        head = min(head, gw.synced_upto)  # what this replica has read of the others'
    floor = head if held < 0 else min(head, held)
    recent = await store.query(RecordQuery(since=format_time(now - RECENT), limit=1))
    if recent:
        floor = min(floor, recent[0].index)
    body: dict[str, Any] = {
        "format": _FLOOR_FORMAT,
        "index": floor,
        "leaf": (await _leaf(gw, floor - 1)).hex(),  # binds it to this ledger ...
        "head": head,
        "head_leaf": (await _leaf(gw, head - 1)).hex(),  # ... and to all it had read
        "replica": gw.replica,
        "written": format_time(now),
    }
    body["mac"] = _mac(salt, body)
    path = floor_path(data, gw.replica)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".partial", dir=data)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(body, option=orjson.OPT_SORT_KEYS) + b"\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return floor


def _read_small(path: Path) -> bytes:
    """A small regular file's bytes; never blocks on a FIFO, never follows a link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError("not a regular file")
        if info.st_size > _MAX_FLOOR_BYTES:
            raise OSError(f"larger than {_MAX_FLOOR_BYTES} bytes")
        return os.read(fd, _MAX_FLOOR_BYTES + 1)
    finally:
        os.close(fd)


async def load_floor(
    gw: Gateway, data: Path, *, salt: bytes, now: dt.datetime | None = None
) -> tuple[int, str]:
    """The replay floor to start from, and why none is used ("" when it is, or when there
    is no file): 0 means read the whole ledger."""
    path = floor_path(data, gw.replica)
    try:
        raw = _read_small(path)
    except FileNotFoundError:
        return 0, ""
    except OSError as err:
        return 0, f"{path} cannot be read ({err})"
    try:
        body = orjson.loads(raw)
        if not isinstance(body, dict) or body.get("format") != _FLOOR_FORMAT:
            raise ValueError(f"not a {_FLOOR_FORMAT} file")
        mac = body.pop("mac")
        if not isinstance(mac, str) or not hmac.compare_digest(mac, _mac(salt, body)):
            raise ValueError("its MAC does not match this data directory's salt")
        index, head = body["index"], body["head"]
        for value in (index, head):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError("index and head must be record counts")
        if index > head:
            raise ValueError("index is past head")
        leaf, head_leaf = bytes.fromhex(body["leaf"]), bytes.fromhex(body["head_leaf"])
        when, replica = parse_time(body["written"]), body["replica"]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        return 0, f"{path} is not a replay floor ({err})"
    store = gw.ledger.store
    size = (await store.snapshot())[0].size
    if replica != gw.replica:
        return 0, f"{path} is replica {replica!r}'s, not {gw.replica!r}'s"
    if store.claims_from > 0:
        return 0, "the ledger has records from before it kept claims"
    if head > size:  # restored from a backup, or a failover lost transactions
        return 0, f"{path} was written at a head of {head} records; the ledger has {size}"
    if when > (now or dt.datetime.now(dt.UTC)):
        return (
            0,
            f"{path} was written at {body['written']}, in the future (the clock stepped back?)",
        )
    if await _leaf(gw, index - 1) != leaf or await _leaf(gw, head - 1) != head_leaf:
        return 0, f"{path} was written for another ledger (its records differ)"
    return index, ""
