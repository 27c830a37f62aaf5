"""A start from the replay floor rebuilds the state a start from record 0 rebuilds.

A gateway that stops writes the lowest index its state still needs
(:func:`gateway.recovery.save_floor`); the next start reads the halts, resumes
and policies below it and every record from it on. These tests run one
ledger through a mix of decisions, then compare what a start from the floor,
and from every index below it, rebuilds with what a start from 0 rebuilds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_pipeline import ALICE, APPROVE_ALL, BOB, ENGINE, act
from test_recovery import Crash, Runtime, crash_before_outcome

from gateway.decision import Halt
from gateway.pipeline import Gateway
from gateway.policy import Policy
from gateway.recovery import FLOOR_FILE, Replay, load_floor, recover, save_floor
from gateway.replay import RECENT, Replayed
from gateway.selector import parse_selector
from ledger.record import parse_time
from ledger.store import RecordQuery

EVERYTHING = b"version = 1\n[defaults]\nexecute_below = 1.0\napprove_below = 1.0\n"


def _essentials(state: Replayed) -> dict[str, Any]:
    """What the gateway's behaviour depends on (final decisions are read back on demand,
    older request ids are found through their claims)."""
    live = {
        i: (d.state, d.request_id, d.ledger_index, [r["reviewer"] for r in d.reviews], d.plan)
        for i, d in state.decisions.items()
        if not d.final
    }
    pending = {
        i: (p.required, [r.reviewer for r in p.reviews], p.deadline)
        for i, p in state.pending.items()
    }
    return {
        "live": live,
        "pending": pending,
        "halts": sorted(h.describe() for h in state.halts),
        "halt_version": state.halt_version,
        "policy_id": state.policy_id,
        "unfinished": sorted(d.decision_id for d in state.unfinished),
        "rollbacks": state.rollbacks,
        "recent": {k: list(v) for k, v in state.recent.items() if v},
        "last_index": state.last_index,
        "skipped": state.skipped,
    }


async def _replayed(gw: Gateway, floor: int, now: dt.datetime) -> Replayed:
    """What :func:`recover` rebuilds from ``floor``, without finishing anything."""
    replay = Replay(now, floor=floor)
    store = gw.ledger.store
    if floor:
        below = [r for kind in ("halt", "resume", "policy")
                 for r in await store.query(RecordQuery(kind=kind, end=floor))]  # fmt: skip
        for rec in sorted(below, key=lambda r: r.index):
            replay.feed(rec)
    for rec in await store.query(RecordQuery(start=floor, limit=100_000)):
        replay.feed(rec)
    return replay.result()


async def _history(gw: Gateway) -> dict[str, Any]:
    """A ledger whose state needs records from all over it."""
    executed = [await gw.propose(f"r-{i}", act("resize", vcpus=3 + i % 2), requester=ENGINE)
                for i in range(6)]  # fmt: skip
    assert {d.state for d in executed} == {"EXECUTED"}
    await gw.halt(Halt(selector=parse_selector("env=production")), "old drill", ALICE)
    await gw.halt(Halt(all=True), "short", ALICE)
    await gw.resume(Halt(all=True), "over", BOB)
    await gw.rollback(executed[1].decision_id, "worse", ALICE)
    await gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    waiting = await gw.propose("r-wait", act("resize", vcpus=4), requester=ENGINE)
    await gw.review(waiting.decision_id, ALICE, True, "one of two", waiting.digest)
    denied = await gw.propose("r-deny", act("resize", vcpus=5), requester=ENGINE)
    await gw.review(denied.decision_id, BOB, False, "no", denied.digest)
    await gw.activate_policy(Policy.parse(EVERYTHING,
                                          "execute-all"))  # fmt: skip
    later = [await gw.propose(f"r-late-{i}", act("resize", vcpus=3 + i % 2), requester=ENGINE)
             for i in range(4)]  # fmt: skip
    return {"executed": executed, "waiting": waiting, "denied": denied, "later": later}


async def test_a_start_from_the_floor_rebuilds_what_a_start_from_zero_does(
    runtime: Runtime,
):
    async with runtime.gateway() as gw:
        made = await _history(gw)
        head = (await gw.ledger.store.snapshot())[0].size
        # The recent window ends an hour after the third late decision: it starts there.
        [third] = await gw.ledger.store.query(
            RecordQuery(decision_id=made["later"][2].decision_id, kind="decision")
        )
        now = parse_time(third.time) + RECENT
        floor = await save_floor(gw, runtime.data.path, now=now)
        assert floor == made["waiting"].ledger_index  # the one decision still pending
        assert 0 < floor < head
        full = _essentials(await _replayed(gw, 0, now))
        assert full["pending"]
        assert full["halts"] == ["env=production"]
        assert full["recent"]
        for lower in range(floor + 1):  # any floor below the right one is right too
            assert _essentials(await _replayed(gw, lower, now)) == full, lower
        saved = orjson.loads((runtime.data.path / FLOOR_FILE).read_bytes())
        assert saved["index"] == floor

    async with runtime.gateway() as gw:
        assert await load_floor(gw, runtime.data.path, now=now) == (floor, "")
        state = await recover(gw, floor=floor, now=now)
        assert state.records < head  # it read less ...
        assert _essentials(state) == full  # ... and rebuilt the same
        # A request id decided below the floor still gets its first decision, not a second.
        first = made["executed"][0]
        again = await gw.propose("r-0", act("resize", vcpus=3), requester=ENGINE)
        assert again.decision_id == first.decision_id
        assert len(await gw.ledger.store.query(RecordQuery(kind="decision"))) == 12
        done = await gw.review(made["waiting"].decision_id, BOB, True, "two of two",
                               made["waiting"].digest)  # fmt: skip
        assert done.state == "EXECUTED", done.reasons
        halted = await gw.propose("r-prod", act("reboot", "db-1"), requester=ENGINE)
        assert halted.state == "HALTED"  # the halt from below the floor still holds


async def test_a_rollback_without_outcome_or_a_running_proposal_holds_the_floor(
    runtime: Runtime,
):
    async with runtime.gateway() as gw:
        done = [await gw.propose(f"r-{i}", act("resize", vcpus=3 + i % 2), requester=ENGINE)
                for i in range(3)]  # fmt: skip
        crash_before_outcome(gw)
        with pytest.raises(Crash):
            await gw.rollback(done[0].decision_id, "worse", ALICE)
        assert gw.replay_floor() == done[0].ledger_index  # the rollback has no outcome
    async with runtime.gateway() as gw:
        await recover(gw)
        for i in range(3, 6):
            await gw.propose(f"r-{i}", act("resize", vcpus=3 + i % 2), requester=ENGINE)
        running = asyncio.ensure_future(
            gw.propose("r-slow", act("resize", vcpus=5), requester=ENGINE)
        )
        await asyncio.sleep(0)
        assert gw.replay_floor() is None  # a proposal is under way
        await running
        future = dt.datetime.now(dt.UTC) + 2 * RECENT
        floor = await save_floor(gw, runtime.data.path, now=future)
        head = (await gw.ledger.store.snapshot())[0].size
        assert floor == head  # nothing held: the next start reads only what comes next


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda b: b | {"leaf": "00" * 32}, "written for another ledger"),
        (lambda b: b | {"index": 10_000}, "past the ledger's head"),
        (lambda b: b | {"written": "2999-01-01T00:00:00.000000Z"}, "in the future"),
        (lambda b: b | {"index": -1}, "not a replay floor"),
        (lambda b: b | {"index": True}, "not a replay floor"),
        (lambda b: {"format": "something else"}, "not a replay floor"),
        (lambda b: "not json", "not a replay floor"),
    ],
)
async def test_a_floor_that_does_not_fit_the_ledger_is_not_used(
    runtime: Runtime,
    change: Any,
    why: str,
):
    async with runtime.gateway() as gw:
        for i in range(3):
            await gw.propose(f"r-{i}", act("resize", vcpus=3 + i % 2), requester=ENGINE)
        future = dt.datetime.now(dt.UTC) + 2 * RECENT
        assert await save_floor(gw, runtime.data.path, now=future)
        path: Path = runtime.data.path / FLOOR_FILE
        changed = change(orjson.loads(path.read_bytes()))
        path.write_bytes(changed.encode() if isinstance(changed, str) else orjson.dumps(changed))
        floor, reason = await load_floor(gw, runtime.data.path, now=future)
        assert floor == 0
        assert why in reason
