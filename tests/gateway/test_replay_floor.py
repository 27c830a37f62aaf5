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
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_pipeline import ALICE, APPROVE_ALL, BOB, ENGINE, act
from test_recovery import Crash, Runtime, crash_before_outcome

from gateway.decision import Halt
from gateway.errors import LedgerUnavailableError
from gateway.pipeline import Gateway
from gateway.policy import Policy
from gateway.recovery import FLOOR_FILE, Replay, floor_path, load_floor, recover, save_floor
from gateway.replay import RECENT, Replayed
from gateway.selector import parse_selector
from ledger import Draft
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
        floor = await save_floor(gw, runtime.data.path, salt=runtime.data.salt(), now=now)
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
        assert await load_floor(gw, runtime.data.path, salt=runtime.data.salt(), now=now) == (
            floor,
            "",
        )
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
        floor = await save_floor(gw, runtime.data.path, salt=runtime.data.salt(), now=future)
        head = (await gw.ledger.store.snapshot())[0].size
        assert floor == head  # nothing held: the next start reads only what comes next


async def _saved(runtime: Runtime, decisions: int = 3) -> tuple[Gateway, dt.datetime]:
    gw_cm = runtime.gateway()
    gw = await gw_cm.__aenter__()
    for i in range(decisions):
        await gw.propose(f"r-{i}", act("resize", vcpus=3 + i % 2), requester=ENGINE)
    future = dt.datetime.now(dt.UTC) + 2 * RECENT
    assert await save_floor(gw, runtime.data.path, salt=runtime.data.salt(), now=future)
    await gw_cm.__aexit__(None, None, None)
    return gw, future


def _resign(path: Path, salt: bytes, **changes: Any) -> None:
    """Edit a floor file and sign it again, as only its own gateway could."""
    from gateway.recovery import _mac

    body = orjson.loads(path.read_bytes())
    del body["mac"]
    body.update(changes)
    body["mac"] = _mac(salt, body)
    path.write_bytes(orjson.dumps(body))


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"leaf": "00" * 32}, "written for another ledger"),
        ({"head_leaf": "00" * 32}, "written for another ledger"),
        ({"head": 10_000, "index": 10_000}, "the ledger has"),
        ({"written": "2999-01-01T00:00:00.000000Z"}, "in the future"),
        ({"index": -1}, "not a replay floor"),
        ({"index": True}, "not a replay floor"),
        ({"index": 5, "head": 4}, "index is past head"),
        ({"replica": "gw-2"}, "is replica 'gw-2'"),
    ],
)
async def test_a_floor_that_does_not_fit_the_ledger_is_not_used(
    runtime: Runtime, change: dict[str, Any], why: str
):
    await _saved(runtime)
    path = runtime.data.path / FLOOR_FILE
    _resign(path, runtime.data.salt(), **change)
    async with runtime.gateway() as gw:
        floor, reason = await load_floor(gw, runtime.data.path, salt=runtime.data.salt(),
                                         now=dt.datetime.now(dt.UTC) + 2 * RECENT)  # fmt: skip
        assert floor == 0
        assert why in reason


async def test_a_floor_not_written_by_its_gateway_is_not_used(runtime: Runtime, tmp_path: Path):
    """A hand-written file (the real leaf hashes are readable by anyone who can query the
    ledger) lacks the MAC keyed by the data directory's salt; a FIFO or a link is not read."""
    _, future = await _saved(runtime)
    path = runtime.data.path / FLOOR_FILE
    body = orjson.loads(path.read_bytes())
    salt = runtime.data.salt()
    async with runtime.gateway() as gw:
        assert (await load_floor(gw, runtime.data.path, salt=salt, now=future))[1] == ""
        assert body["index"] > 0
        forged = body | {"index": body["index"] - 1}  # its MAC was for the other index
        path.write_bytes(orjson.dumps(forged))
        floor, reason = await load_floor(gw, runtime.data.path, salt=salt, now=future)
        assert (floor, "MAC does not match" in reason) == (0, True)
        path.write_bytes(b"not json")
        assert "not a replay floor" in (await load_floor(gw, runtime.data.path, salt=salt))[1]
        path.unlink()
        os.mkfifo(path)  # a start must not block reading it
        floor, reason = await asyncio.wait_for(
            load_floor(gw, runtime.data.path, salt=salt), timeout=10
        )
        assert (floor, "not a regular file" in reason) == (0, True)
        path.unlink()
        target = tmp_path / "elsewhere.json"
        target.write_bytes(orjson.dumps(body))
        path.symlink_to(target)
        assert (await load_floor(gw, runtime.data.path, salt=salt))[0] == 0


async def test_a_ledger_restored_from_a_backup_does_not_use_a_later_floor(runtime: Runtime):
    """Records the floor was saved over are gone: the decision they finished is pending
    again, below the floor."""
    async with runtime.gateway(APPROVE_ALL) as gw:
        d = await gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
        assert d.state == "PENDING_APPROVAL"
        await gw.ledger.store.close()
        backup = {p.name: p.read_bytes() for p in runtime.data.path.glob("ledger.db*")}
        await gw.ledger.store.open()
        await gw.review(d.decision_id, ALICE, True, "one", d.digest)
        done = await gw.review(d.decision_id, BOB, True, "two", d.digest)
        assert done.state == "EXECUTED"
        future = dt.datetime.now(dt.UTC) + 2 * RECENT
        assert await save_floor(gw, runtime.data.path, salt=runtime.data.salt(), now=future)
    for p in runtime.data.path.glob("ledger.db*"):
        p.unlink()
    for name, raw in backup.items():
        (runtime.data.path / name).write_bytes(raw)
    async with runtime.gateway(APPROVE_ALL) as gw:
        floor, reason = await load_floor(gw, runtime.data.path, salt=runtime.data.salt(),
                                         now=future)  # fmt: skip
        assert floor == 0
        assert "the ledger has" in reason
        state = await recover(gw, now=future)
        assert list(state.pending) == [d.decision_id]


async def test_replicas_keep_a_floor_each(runtime: Runtime):
    assert floor_path(runtime.data.path, "gw-1") != floor_path(runtime.data.path, "gw-2")
    assert floor_path(runtime.data.path) == runtime.data.path / FLOOR_FILE


async def test_a_cancelled_approval_still_records_its_outcome_and_holds_the_floor_meanwhile(
    runtime: Runtime,
):
    """Its action runs to its outcome record even if the caller leaves; until that record
    is durable no floor is vouched for."""
    async with runtime.gateway(APPROVE_ALL) as gw:
        d = await gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
        await gw.review(d.decision_id, ALICE, True, "one", d.digest)
        real_append, reached, go_on = gw.ledger.append, asyncio.Event(), asyncio.Event()

        async def append(draft: Draft) -> Any:
            if draft.kind == "outcome":
                reached.set()
                await go_on.wait()
            return await real_append(draft)

        gw.ledger.append = append  # type: ignore[method-assign]
        review = asyncio.create_task(gw.review(d.decision_id, BOB, True, "two", d.digest))
        await reached.wait()
        review.cancel()  # the Approve call cancelled: grace over, or a second signal
        with pytest.raises(asyncio.CancelledError):
            await review
        assert gw.replay_floor() is None  # the outcome is still on its way
        go_on.set()
        for _ in range(200):
            if d.outcome is not None and "ledger_index" in d.outcome:
                break
            await asyncio.sleep(0.01)
        del gw.ledger.append
        assert [r.kind for r in await gw.ledger.store.query(RecordQuery(decision_id=d.decision_id))
                ] == ["decision", "approval", "approval", "outcome"]  # fmt: skip
        assert gw.replay_floor() == -1  # settled: nothing held


async def test_a_rollback_record_no_gateway_wrote_never_stops_a_start(runtime: Runtime):
    async with runtime.gateway() as gw:
        await gw.propose("r-0", act("resize", vcpus=3), requester=ENGINE)
        future = dt.datetime.now(dt.UTC) + 2 * RECENT
        floor = await save_floor(gw, runtime.data.path, salt=runtime.data.salt(), now=future)
        await gw.ledger.append(Draft("rollback", {}, decision_id="d-000042"))
    async with runtime.gateway() as gw:
        state = await recover(gw, floor=floor or 0, now=future)
        assert any("d-000042" in line for line in state.skipped), state.skipped


async def test_a_retry_decided_below_the_floor_gets_its_first_decision_whatever_the_roles_now(
    runtime: Runtime,
):
    """Its request id is found through its claim, not refused by a grant changed since."""
    from gateway.roles import Roles

    future = dt.datetime.now(dt.UTC) + 2 * RECENT
    async with runtime.gateway() as gw:
        first = await gw.propose("r-0", act("resize", vcpus=4), requester=ENGINE)
        floor = await save_floor(gw, runtime.data.path, salt=runtime.data.salt(), now=future)
    async with runtime.gateway() as gw:
        only_start = b'version = 1\n[identities."%s"]\nroles = ["engine"]\nverbs = ["start"]\n'
        gw.roles = Roles.parse(only_start % ENGINE.encode())  # it may no longer resize
        await recover(gw, floor=floor or 0, now=future)
        again = await gw.propose("r-0", act("resize", vcpus=4), requester=ENGINE)
        assert (again.decision_id, again.state) == (first.decision_id, "EXECUTED")
        assert await gw.ledger.store.query(RecordQuery(kind="access")) == []


async def test_an_approval_cancelled_during_its_own_write_still_takes_effect(runtime: Runtime):
    """The write commits anyway: the review counts here, and the action it lets run runs
    to its outcome record, as it would have had the caller waited."""
    async with runtime.gateway(APPROVE_ALL) as gw:
        d = await gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
        await gw.review(d.decision_id, ALICE, True, "one", d.digest)
        store = gw.ledger.store
        real_sequence = store.sequence

        async def slow(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.2)  # a slow commit (fsync on a busy disk)
            return await real_sequence(*args, **kwargs)

        store.sequence = slow  # type: ignore[method-assign]
        review = asyncio.create_task(gw.review(d.decision_id, BOB, True, "two", d.digest))
        await asyncio.sleep(0.05)
        review.cancel()  # the Approve call's deadline passed
        with pytest.raises(asyncio.CancelledError):
            await review
        for _ in range(300):
            if d.outcome is not None and "ledger_index" in d.outcome:
                break
            await asyncio.sleep(0.01)
        del store.sequence
        assert d.state == "EXECUTED"
        assert [r.kind for r in await store.query(RecordQuery(decision_id=d.decision_id))] == [
            "decision", "approval", "approval", "outcome"
        ]  # fmt: skip
        assert gw.pending() == []
        assert gw.replay_floor() == -1


async def test_a_decision_write_that_may_have_committed_stops_the_floor(runtime: Runtime):
    """The ledger reported a failure, but the record may be there: no floor is vouched for
    until a restart has read it back."""
    from ledger.errors import StoreError

    async with runtime.gateway(APPROVE_ALL) as gw:
        real_append = gw.ledger.append

        async def committed_then_failed(draft: Draft) -> Any:
            await real_append(draft)
            if draft.kind == "decision":
                raise StoreError("the acknowledgement was lost")
            return None

        gw.ledger.append = committed_then_failed  # type: ignore[method-assign]
        with pytest.raises(LedgerUnavailableError):
            await gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
        del gw.ledger.append
        assert gw.replay_floor() is None
        assert await save_floor(gw, runtime.data.path, salt=runtime.data.salt()) is None
    async with runtime.gateway(APPROVE_ALL) as gw:
        state = await recover(gw)  # from record 0: the pending decision is found
        assert len(state.pending) == 1
