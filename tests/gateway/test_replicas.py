"""Two gateway replicas on one shared ledger, in one process: what one replica decides,
approves, halts or expires, the other sees and respects. Every test runs on a real
PostgreSQL server and on one SQLite file shared by the two (replicas on one host).

Both replicas drive one libvirt test-driver connection, as two replicas would one libvirtd.
The process-level test (three ``govgate serve`` processes, SIGKILL, a PostgreSQL restart) is
tests/e2e/test_replicas_serve.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_pipeline import ALICE, APPROVE_ALL, BOB, ENGINE, EXAMPLE_POLICY, NODE, act

from adapters.action import PowerState, Target
from adapters.libvirt import LibvirtAdapter, LibvirtConfig
from explain.batcher import MicroBatcher
from explain.registry import Registry
from explain.scorer import Scorer
from gateway import pipeline
from gateway.decision import Halt
from gateway.errors import ReviewRefusedError
from gateway.pipeline import Gateway
from gateway.policy import Policy
from gateway.recovery import recover
from ledger import DataDir, LedgerConfig
from ledger.export import export_ledger
from ledger.postgres import migrate
from ledger.store import RecordQuery
from ledger.verify import verify_export

QUIET = LedgerConfig(checkpoint_every=0, checkpoint_interval=0)


@dataclass
class Pair:
    a: Gateway
    b: Gateway
    lv: LibvirtAdapter
    data: DataDir


@pytest.fixture(params=["postgresql", "sqlite"])
async def pair(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Pair]:
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        await migrate(url)
        data = DataDir(tmp_path / "data", url)
    else:  # replicas on one host, sharing the embedded ledger file
        data = DataDir(tmp_path / "data", shared=True)
    data.generate_key("example.com/govgate")
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    policy = Policy.load(EXAMPLE_POLICY)
    async with (
        data.open_ledger(QUIET) as la,
        data.open_ledger(QUIET) as lb,
        LibvirtAdapter(LibvirtConfig(uri=f"test://{node}")) as lv,
        MicroBatcher(Scorer(Registry(tmp_path / "models").load())) as batcher,
    ):
        a = Gateway(la, {"libvirt": lv}, batcher, policy, replica="a")
        b = Gateway(lb, {"libvirt": lv}, batcher, policy, replica="b")
        for gw in (a, b):
            await recover(gw)
        yield Pair(a, b, lv, data)


async def kinds_of(gw: Gateway, decision_id: str) -> list[str]:
    return [r.kind for r in await gw.ledger.store.query(RecordQuery(decision_id=decision_id))]


async def test_a_request_id_is_decided_once_across_replicas(pair: Pair, tmp_path: Path):
    async def both(i: int) -> tuple[str, str]:
        action = act("resize", vcpus=2 + i % 3)
        x, y = await asyncio.gather(
            pair.a.propose(f"r-{i}", action, requester=ENGINE),
            pair.b.propose(f"r-{i}", action, requester=ENGINE),
        )
        return x.decision_id, y.decision_id

    pairs = await asyncio.gather(*(both(i) for i in range(12)))
    assert all(x == y for x, y in pairs)  # both callers got the one decision
    decisions = await pair.a.ledger.store.query(RecordQuery(kind="decision"))
    assert sorted(r.body["request_id"] for r in decisions) == sorted(f"r-{i}" for i in range(12))
    outcomes = Counter(r.decision_id for r in await pair.a.ledger.store.query(
        RecordQuery(kind="outcome")))  # fmt: skip
    assert set(outcomes.values()) == {1}  # each ran once
    assert len(outcomes) == 12
    out = tmp_path / "export.jsonl"
    await pair.a.ledger.checkpoint()
    await export_ledger(pair.b.ledger, out)
    assert verify_export(out, pair.data.signer().verifier).size == len(
        await pair.a.ledger.store.query(RecordQuery())
    )


async def test_an_approval_through_one_replica_runs_what_the_other_recorded(pair: Pair):
    for gw in (pair.a, pair.b):
        await gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    d = await pair.b.propose("r-1", act("suspend"), requester=ENGINE)
    assert d.state == "PENDING_APPROVAL"
    await pair.a.sync()
    assert [p.decision_id for p in pair.a.pending()] == [d.decision_id]
    # One approval through each replica: the second completes it and runs it, once.
    await pair.a.review(d.decision_id, ALICE, True, "checked", d.digest)
    done = await pair.b.review(d.decision_id, BOB, True, "agreed", d.digest)
    assert done.state == "EXECUTED"
    assert (await pair.lv.describe(Target("libvirt", "web-1"))).power is PowerState.PAUSED
    # The first replica learns the outcome, and its copy wakes watchers.
    seen = await pair.a.get(d.decision_id)
    assert seen.state == "EXECUTED"
    assert seen.changed.is_set()
    assert [r["reviewer"] for r in seen.reviews] == [ALICE, BOB]
    assert await kinds_of(pair.a, d.decision_id) == ["decision", "approval", "approval", "outcome"]
    # The same reviewer through the other replica, or a third review, is refused.
    with pytest.raises(ReviewRefusedError):
        await pair.a.review(d.decision_id, ALICE, True, "again", d.digest)


async def test_concurrent_reviews_on_two_replicas_make_one_chain_of_steps(pair: Pair):
    for gw in (pair.a, pair.b):
        await gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    d = await pair.a.propose("r-2", act("suspend"), requester=ENGINE)
    await pair.b.sync()
    # Both approvals race: each replica thinks it gives the first; one is retried as the second.
    x, y = await asyncio.gather(
        pair.a.review(d.decision_id, ALICE, True, "ok", d.digest),
        pair.b.review(d.decision_id, BOB, True, "ok", d.digest),
    )
    kinds = await kinds_of(pair.a, d.decision_id)
    assert kinds == ["decision", "approval", "approval", "outcome"]
    assert {x.state, y.state} <= {"EXECUTED", "PENDING_APPROVAL", "EXECUTING"}
    assert (await pair.b.get(d.decision_id)).state == "EXECUTED"
    assert (await pair.a.get(d.decision_id)).state == "EXECUTED"


async def test_a_halt_through_one_replica_stops_the_other(pair: Pair):
    await pair.a.halt(Halt(all=True), "incident 42", ALICE)
    # b has not caught up: its decision record needs the next halt version free, finds it
    # taken, catches up and decides again, now halted.
    d = await pair.b.propose("r-3", act("resize", vcpus=4), requester=ENGINE)
    assert d.state == "HALTED"
    assert await kinds_of(pair.b, d.decision_id) == ["decision"]
    await pair.b.resume(Halt(all=True), "incident closed", BOB)
    d = await pair.a.propose("r-4", act("resize", vcpus=4), requester=ENGINE)
    assert d.state == "EXECUTED", d.reasons
    halts = await pair.a.ledger.store.query(RecordQuery(kind="halt"))
    resumes = await pair.a.ledger.store.query(RecordQuery(kind="resume"))
    assert [r.body["version"] for r in halts + resumes] == [1, 2]


async def test_a_halt_that_arrives_while_deciding_stops_the_decision(pair: Pair):
    """b reads the halts, then plans; meanwhile a halts and b catches up. b's decision
    record must still find the halt version it decided under taken, and decide again."""
    planning, go_on = asyncio.Event(), asyncio.Event()
    lv = pair.lv

    class SlowPlan:  # libvirt, with a plan that waits until the halt is in
        def __getattr__(self, name: str) -> Any:
            return getattr(lv, name)

        async def plan(self, *args: Any, **kwargs: Any) -> Any:
            planning.set()
            await go_on.wait()
            return await lv.plan(*args, **kwargs)

    pair.b.adapters["libvirt"] = SlowPlan()  # type: ignore[assignment]
    deciding = asyncio.create_task(pair.b.propose("r-9", act("resize", vcpus=4),
                                                  requester=ENGINE))  # fmt: skip
    await asyncio.wait_for(planning.wait(), 10)
    await pair.a.halt(Halt(all=True), "incident 43", ALICE)
    await pair.b.sync()  # b sees the halt while its decision is still being made
    go_on.set()
    d = await asyncio.wait_for(deciding, 10)
    assert d.state == "HALTED", d.reasons
    assert await kinds_of(pair.b, d.decision_id) == ["decision"]


async def test_an_overdue_approval_expires_once_whoever_sweeps(pair: Pair):
    for gw in (pair.a, pair.b):
        await gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    d = await pair.a.propose("r-5", act("suspend"), requester=ENGINE)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    counts = await asyncio.gather(pair.a.expire_overdue(later), pair.b.expire_overdue(later))
    assert sum(counts) >= 1
    assert await kinds_of(pair.a, d.decision_id) == ["decision", "expiry"]
    assert (await pair.b.get(d.decision_id)).state == "EXPIRED"


async def test_one_replica_signs_checkpoints_and_another_takes_over(pair: Pair, tmp_path: Path):
    await pair.a.propose("r-6", act("resize", vcpus=3), requester=ENGINE)
    assert await pair.a.ledger.store.lead()
    assert not await pair.b.ledger.store.lead()  # a holds the signer's lock
    # b waits for the signer's checkpoint instead of signing one of its own.
    first, signed = await asyncio.gather(pair.b.ledger.checkpoint(), pair.a.ledger.checkpoint())
    assert first == signed
    await pair.a.ledger.close()  # the signer goes away: its lock goes with its connection
    await pair.b.propose("r-7", act("resize", vcpus=2), requester=ENGINE)
    assert await pair.b.ledger.store.lead()
    second = await pair.b.ledger.checkpoint()
    assert second.size > first.size
    out = tmp_path / "export.jsonl"
    await export_ledger(pair.b.ledger, out)
    verified = verify_export(out, pair.data.signer().verifier)
    assert verified.checkpoints >= 2


def _sync_after_each_append(gw: Gateway) -> list[asyncio.Task[None]]:
    """Make every append of ``gw`` start a sync (as its follow loop, or another call, may)
    that reads the record back before the append has returned to the call writing it: the
    window in which that record is committed but not yet reflected. The syncs started."""
    real_append, syncs = gw.ledger.append, []

    async def append_then_follow(draft: Any) -> Any:
        rec = await real_append(draft)
        syncs.append(asyncio.create_task(gw.sync()))
        await asyncio.sleep(0.05)  # the sync reads the record meanwhile
        return rec

    gw.ledger.append = append_then_follow  # type: ignore[method-assign]
    return syncs


async def test_an_approval_its_own_replica_read_back_while_writing_it_still_runs(pair: Pair):
    """A sync on the approving replica (its follow loop, another call) can apply the
    approval that completes a decision before the review resumes: the action must still
    run, once, and get its outcome."""
    for gw in (pair.a, pair.b):
        await gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    d = await pair.a.propose("r-echo", act("suspend"), requester=ENGINE)
    await pair.a.review(d.decision_id, ALICE, True, "ok", d.digest)
    syncs = _sync_after_each_append(pair.a)
    done = await pair.a.review(d.decision_id, BOB, True, "ok", d.digest)
    await asyncio.gather(*syncs)
    del pair.a.ledger.append
    assert done.state == "EXECUTED", done.reasons
    kinds = [
        r.kind for r in await pair.a.ledger.store.query(RecordQuery(decision_id=d.decision_id))
    ]
    assert kinds == ["decision", "approval", "approval", "outcome"]
    assert (await pair.lv.describe(Target("libvirt", "web-1"))).power is PowerState.PAUSED


async def test_a_replica_reading_its_own_records_back_does_not_apply_them_twice(pair: Pair):
    """Its decision record read back while being written must not count the action twice
    among the target's recent actions (a feature of the next decision's risk), nor its
    rollback record count two rollbacks and leave one looking unfinished."""
    everything = b"version = 1\n[defaults]\nexecute_below = 1.0\napprove_below = 1.0\n"
    await pair.a.activate_policy(Policy.parse(everything, "execute-everything"))
    syncs = _sync_after_each_append(pair.a)
    d = await pair.a.propose("r-own", act("resize", vcpus=3), requester=ENGINE)
    assert d.state == "EXECUTED", d.reasons
    now = dt.datetime.now(dt.UTC)
    assert pair.a._recent_count(str(d.action.target), now) == 1
    assert pair.a.decisions[d.decision_id] is d
    rolled = await pair.a.rollback(d.decision_id, "too big", ALICE)
    await asyncio.gather(*syncs)
    assert len(syncs) >= 4  # decision, outcome, rollback, outcome: each read back meanwhile
    assert rolled.state == "ROLLED_BACK"
    assert rolled.rollbacks == 1
    assert not pair.a._replay.rolling(d.decision_id)  # its outcome was recorded
    await pair.b.sync()  # the other replica, which read them only once, agrees
    there = await pair.b.get(d.decision_id)
    assert (there.state, there.rollbacks) == ("ROLLED_BACK", 1)


async def test_a_sync_that_meets_its_own_record_in_flight_still_reads_what_follows(pair: Pair):
    """A sync on replica a meets the record a is still writing (committed, not yet back to
    its caller): it must wait for that write, not stop there and report itself caught up,
    or a halt another replica recorded after it goes unseen (a resume then says "no halt
    is in force")."""
    everything = b"version = 1\n[defaults]\nexecute_below = 1.0\napprove_below = 1.0\n"
    await pair.a.activate_policy(Policy.parse(everything, "execute-everything"))
    real_append, committed, release = pair.a.ledger.append, asyncio.Event(), asyncio.Event()

    async def slow_return(draft: Any) -> Any:
        rec = await real_append(draft)
        if draft.kind == "decision":
            committed.set()
            await release.wait()  # committed, not yet reflected by its caller
        return rec

    pair.a.ledger.append = slow_return  # type: ignore[method-assign]
    proposing = asyncio.create_task(
        pair.a.propose("r-slow", act("resize", vcpus=3), requester=ENGINE)
    )
    await committed.wait()
    await pair.b.halt(Halt(all=True), "incident 44", BOB)  # after a's record, through b
    syncing = asyncio.create_task(pair.a.sync())
    await asyncio.sleep(0.1)
    release.set()
    await syncing
    assert Halt(all=True) in pair.a._halts  # the halt after a's own record was read
    await pair.a.resume(Halt(all=True), "incident closed", ALICE)
    del pair.a.ledger.append
    assert (await proposing).state in ("EXECUTED", "HALTED")


async def test_a_rollback_under_way_through_one_replica_is_not_run_again(pair: Pair):
    everything = b"version = 1\n[defaults]\nexecute_below = 1.0\napprove_below = 1.0\n"
    for gw in (pair.a, pair.b):
        await gw.activate_policy(Policy.parse(everything, "execute-everything"))
    d = await pair.a.propose("r-rb", act("resize", vcpus=4), requester=ENGINE)
    assert d.state == "EXECUTED"
    real_revert, reverts = pair.lv.revert, []
    started, go_on = asyncio.Event(), asyncio.Event()

    async def slow_revert(outcome: Any, **kwargs: Any) -> Any:
        reverts.append(outcome.plan.id)
        started.set()
        await go_on.wait()
        return await real_revert(outcome, **kwargs)

    pair.lv.revert = slow_revert  # type: ignore[method-assign]
    first = asyncio.create_task(pair.a.rollback(d.decision_id, "worse", ALICE))
    await started.wait()
    for gw in (pair.b, pair.a):  # through the other replica, and through the same one
        with pytest.raises(ReviewRefusedError, match="being rolled back"):
            await gw.rollback(d.decision_id, "worse too", BOB)
    go_on.set()
    assert (await first).state == "ROLLED_BACK"
    del pair.lv.revert
    assert len(reverts) == 1
    kinds = [
        r.kind for r in await pair.a.ledger.store.query(RecordQuery(decision_id=d.decision_id))
    ]
    assert kinds == ["decision", "outcome", "rollback", "outcome"]


async def test_every_watcher_of_a_decision_sees_a_change_from_another_replica(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
):
    """Two WatchDecision streams on b, one still sending when b's sync brings in a change
    made through a: neither may miss it (one watcher must not clear another's wake-up)."""
    import gateway.server as server
    from gateway._proto.govgate.v1 import decision_pb2, types_pb2

    for gw in (pair.a, pair.b):
        await gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    d = await pair.a.propose("r-w", act("suspend"), requester=ENGINE)
    monkeypatch.setattr(server, "caller", lambda ctx: ENGINE)
    servicer = server.DecisionServicer(pair.b)
    request = decision_pb2.WatchDecisionRequest(decision_id=d.decision_id)
    fast, slow = servicer.WatchDecision(request, None), servicer.WatchDecision(request, None)
    assert (await fast.__anext__()).state == types_pb2.PENDING_APPROVAL
    assert (await slow.__anext__()).state == types_pb2.PENDING_APPROVAL  # still "sending"
    fast_next = asyncio.ensure_future(fast.__anext__())
    await asyncio.sleep(0.05)
    await pair.a.review(d.decision_id, ALICE, True, "ok", d.digest)
    await pair.a.review(d.decision_id, BOB, True, "ok", d.digest)
    await pair.b.sync()
    assert (await asyncio.wait_for(fast_next, 10)).state == types_pb2.EXECUTED
    assert (await asyncio.wait_for(slow.__anext__(), 10)).state == types_pb2.EXECUTED


async def test_a_catch_up_opens_only_the_records_of_others_it_needs(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
):
    for i in range(3):
        await pair.a.propose(f"own-{i}", act("resize", vcpus=2 + i % 2), requester=ENGINE)
    theirs = await pair.b.propose("theirs", act("resize", vcpus=3), requester=ENGINE)
    opened: list[Any] = []

    def counted(envelope: bytes) -> Any:
        opened.append(real(envelope))
        return opened[-1]

    real = pipeline.open_record
    monkeypatch.setattr(pipeline, "open_record", counted)
    await pair.a.sync()
    # a's six records were reflected as it wrote them: passed over, unopened; so was the
    # outcome of b's decision, which a does not hold and no rollback of waits for.
    assert [o.record.kind for o in opened] == ["decision"]
    assert {o.record.decision_id for o in opened} == {theirs.decision_id}
    head, _ = await pair.a.ledger.store.snapshot()
    assert pair.a.synced_upto == head.size
    # Of b's decision, a keeps only what its own decisions need: the target's activity
    # (the risk model counts recent actions on a target, whichever replica ran them).
    assert theirs.decision_id not in pair.a.decisions
    assert len(pair.a._recent["libvirt/web-1"]) == 4
    assert (await pair.a.get(theirs.decision_id)).state == "EXECUTED"  # read back


async def test_the_records_a_replica_passes_over_are_forgotten_once_passed(pair: Pair):
    """Syncing all the time, as under load: some of a replica's own records are read back
    while their calls still write them; none may stay in its set of records to pass over."""
    stop = asyncio.Event()

    async def syncing(gw: Gateway) -> None:
        while not stop.is_set():
            await gw.sync()
            await asyncio.sleep(0)

    syncers = [asyncio.create_task(syncing(gw)) for gw in (pair.a, pair.b)]
    for n in range(6):
        await asyncio.gather(*(
            (pair.a if i % 2 else pair.b).propose(f"r-{n}-{i}", act("resize", vcpus=2 + i % 3),
                                                  requester=ENGINE)
            for i in range(16)
        ))  # fmt: skip
    stop.set()
    await asyncio.gather(*syncers)
    for gw in (pair.a, pair.b):
        await gw.sync()
        assert not gw._own
