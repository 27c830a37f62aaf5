"""A restarted gateway rebuilds its state from its ledger and finishes what a crash cut short.

Each test runs one gateway, stops it (cleanly, or by an exception at the exact
point a crash would hit), and starts a second one on the same ledger file and
the same libvirt test-driver connection, which stands for the runtime that
outlives the gateway. The process-kill version is in tests/e2e/test_serve.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_pipeline import ALICE, APPROVE_ALL, BOB, ENGINE, EXAMPLE_POLICY, NODE, act

from adapters.action import Target
from adapters.libvirt import LibvirtAdapter, LibvirtConfig
from explain.batcher import MicroBatcher
from explain.registry import Registry
from explain.scorer import Scorer
from gateway.decision import Halt
from gateway.errors import InvalidRequestError
from gateway.pipeline import Gateway
from gateway.policy import Policy
from gateway.recovery import Replay, recover
from gateway.selector import parse_selector
from ledger import DataDir, Draft, LedgerConfig
from ledger.export import export_ledger
from ledger.record import parse_time
from ledger.store import RecordQuery
from ledger.verify import verify_export

CONFIG = LedgerConfig(checkpoint_every=0, checkpoint_interval=0)


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs, nothing catches it."""


@dataclass
class Runtime:
    data: DataDir
    lv: LibvirtAdapter
    batcher: MicroBatcher
    tmp: Path

    @contextlib.asynccontextmanager
    async def gateway(self, policy: bytes | None = None) -> AsyncIterator[Gateway]:
        path = self.tmp / "policy.toml"
        if policy is None:
            path.write_bytes(EXAMPLE_POLICY.read_bytes())
        else:
            path.write_bytes(policy)
        async with self.data.open_ledger(CONFIG) as ledger:
            yield Gateway(ledger, {"libvirt": self.lv}, self.batcher, Policy.load(path))


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    data = DataDir(tmp_path / "data")
    data.generate_key("example.com/govgate")
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    async with (
        LibvirtAdapter(LibvirtConfig(uri=f"test://{node}", cache_ttl=0)) as lv,
        MicroBatcher(Scorer(Registry(tmp_path / "models").load())) as batcher,
    ):
        yield Runtime(data, lv, batcher, tmp_path)


def crash_before_outcome(gw: Gateway) -> None:
    """Make ``gw`` die (:class:`Crash`) when it is about to write an outcome record."""
    real_record = gw._record

    async def record(draft: Draft, of: Any = None) -> Any:
        if draft.kind == "outcome":
            raise Crash
        return await real_record(draft, of)

    gw._record = record  # type: ignore[method-assign]


async def kinds(gw: Gateway, decision_id: str) -> list[str]:
    return [r.kind for r in await gw.ledger.store.query(RecordQuery(decision_id=decision_id))]


async def verify(gw: Gateway, rt: Runtime) -> None:
    out = rt.tmp / "export.jsonl"
    await gw.ledger.checkpoint()
    await export_ledger(gw.ledger, out)
    assert verify_export(out, rt.data.signer().verifier).size > 0


async def vcpus(rt: Runtime) -> int | None:
    return (await rt.lv.describe(Target("libvirt", "web-1"))).vcpus


async def test_a_restarted_gateway_keeps_request_ids_pending_reviews_and_halts(runtime: Runtime):
    async with runtime.gateway(APPROVE_ALL) as gw:
        waiting = await gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
        assert waiting.state == "PENDING_APPROVAL"
        await gw.review(waiting.decision_id, ALICE, True, "fine", waiting.digest)
        await gw.halt(Halt(selector=parse_selector("env=production")), "drill", ALICE)
        before = await gw.ledger.store.snapshot()

    async with runtime.gateway(APPROVE_ALL) as gw:
        state = await recover(gw)
        assert state.skipped == []
        assert (await gw.ledger.store.snapshot())[0] == before[0]  # nothing was left to finish
        again = await gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
        assert again.decision_id == waiting.decision_id
        assert again.state == "PENDING_APPROVAL"
        assert [d.decision_id for d in gw.pending()] == [waiting.decision_id]
        with pytest.raises(Exception, match="already reviewed"):
            await gw.review(waiting.decision_id, ALICE, True, "again", waiting.digest)
        done = await gw.review(waiting.decision_id, BOB, True, "agreed", waiting.digest)
        assert done.state == "EXECUTED", done.reasons
        assert await vcpus(runtime) == 4
        halted = await gw.propose("r-2", act("reboot", "db-1"), requester=ENGINE)
        assert halted.state == "HALTED"
        await verify(gw, runtime)


async def test_a_review_in_time_counts_after_a_restart_though_its_record_was_sealed_late(
    runtime: Runtime,
):
    """The gateway checks the deadline and then writes the review; the ledger stamps the
    record when it seals it, which may be after the deadline. The record is what happened:
    a restart must count the review, not refuse it as late."""
    short = APPROVE_ALL.replace(b"approval_ttl = 60", b"approval_ttl = 1")
    assert short != APPROVE_ALL
    async with runtime.gateway(short) as gw:
        d = await gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
        real_append = gw.ledger.append

        async def sealed_late(draft: Draft) -> Any:
            if draft.kind == "approval":
                assert d.approval_deadline is not None
                wait = (d.approval_deadline - dt.datetime.now(dt.UTC)).total_seconds()
                await asyncio.sleep(wait + 0.05)
            return await real_append(draft)

        gw.ledger.append = sealed_late  # type: ignore[method-assign]
        await gw.review(d.decision_id, ALICE, True, "fine", d.digest)
        [approval] = await gw.ledger.store.query(RecordQuery(kind="approval"))
        assert d.approval_deadline is not None
        assert parse_time(approval.time) > d.approval_deadline  # the race, for real

    async with runtime.gateway(short) as gw:
        state = await recover(gw)
        assert state.skipped == []
        again = gw.decisions[d.decision_id]
        assert [r["reviewer"] for r in again.reviews] == [ALICE]


async def test_a_decision_interrupted_after_it_ran_is_reconciled_not_rerun(runtime: Runtime):
    async with runtime.gateway() as gw:
        crash_before_outcome(gw)
        with pytest.raises(Crash):
            await gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
    assert await vcpus(runtime) == 4  # it ran; the outcome was never written

    async with runtime.gateway() as gw:
        state = await recover(gw)
        [d] = state.unfinished
        assert d.state == "EXECUTED"
        assert d.outcome is not None
        assert d.outcome["recovered"] is True
        assert d.outcome["status"] == "applied"
        assert await kinds(gw, d.decision_id) == ["decision", "outcome"]
        again = await gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
        assert again is d  # the same decision, not a second execution
        assert await kinds(gw, d.decision_id) == ["decision", "outcome"]
        rolled = await gw.rollback(d.decision_id, "too big", ALICE)  # the plan survived
        assert rolled.state == "ROLLED_BACK"
        assert await vcpus(runtime) == 2
        await verify(gw, runtime)


async def test_a_decision_interrupted_before_it_ran_is_recorded_failed_not_run(
    runtime: Runtime,
):
    async with runtime.gateway() as gw:

        async def crash(*args: Any, **kwargs: Any) -> Any:
            raise Crash

        runtime.lv.execute = crash  # type: ignore[method-assign]
        try:
            with pytest.raises(Crash):
                await gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
        finally:
            del runtime.lv.execute
    assert await vcpus(runtime) == 2

    async with runtime.gateway() as gw:
        [d] = (await recover(gw)).unfinished
        assert d.state == "FAILED"
        assert d.outcome is not None
        assert d.outcome["status"] == "failed"
        assert "not retried" in d.outcome["detail"]
        assert await vcpus(runtime) == 2  # and it was not run now either
        await verify(gw, runtime)


async def test_an_approval_that_completed_a_decision_carries_its_plan(runtime: Runtime):
    async with runtime.gateway(APPROVE_ALL) as gw:
        d = await gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
        await gw.review(d.decision_id, ALICE, True, "fine", d.digest)
        crash_before_outcome(gw)
        with pytest.raises(Crash):
            await gw.review(d.decision_id, BOB, True, "agreed", d.digest)

    async with runtime.gateway(APPROVE_ALL) as gw:
        [again] = (await recover(gw)).unfinished
        assert again.state == "EXECUTED"
        assert [r["reviewer"] for r in again.reviews] == [ALICE, BOB]
        assert gw.pending() == []


async def test_records_it_cannot_read_are_skipped_and_named(runtime: Runtime):
    async with runtime.gateway() as gw:
        bad_action = {"request_id": "r-0", "action": {"verb": "explode"}}
        await gw.ledger.append(Draft("decision", bad_action, decision_id="d-x"))
        await gw.ledger.append(Draft("approval", {"reason": "?"}, decision_id="d-nope"))
        await gw.ledger.append(Draft("halt", {"scope": "env=prod"}))
        await gw.ledger.append(Draft("decision", {"hand": "written"}, decision_id="d-y"))
        await gw.ledger.append(Draft("outcome", {"status": "ok"}, decision_id="d-y"))
        d = await gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
        replay = Replay()
        for rec in await gw.ledger.store.query(RecordQuery()):
            replay.feed(rec)
        state = replay.result()
        assert len(state.skipped) == 3, state.skipped
        assert state.skipped[0].startswith("record 1 (decision)")
        assert "no decision 'd-nope'" in state.skipped[1]
        assert state.skipped[2].startswith("record 3 (halt): scope is not an object")
        assert state.foreign == 1  # not a gateway's decision: left alone, with its outcome
        assert state.halts == []
        assert state.by_request == {"r-1": (d.decision_id, d.digest)}
        assert state.decisions[d.decision_id].state == "EXECUTED"
        assert state.decisions[d.decision_id].risk == d.risk


async def test_decisions_that_left_the_cache_are_read_back_from_the_ledger(runtime: Runtime):
    async with runtime.gateway() as gw:
        gw.cache = 2
        first = await gw.propose("r-0", act("resize", vcpus=3), requester=ENGINE)
        for n in range(1, 5):
            await gw.propose(f"r-{n}", act("resize", vcpus=2 + n % 2), requester=ENGINE)
        assert first.decision_id not in gw.decisions  # only the two newest are kept
        again = await gw.propose("r-0", act("resize", vcpus=3), requester=ENGINE)
        assert again is not first  # a fresh object, read back from the records
        assert (again.decision_id, again.state, again.risk, again.ledger_index) == (
            first.decision_id, "EXECUTED", first.risk, first.ledger_index
        )  # fmt: skip
        assert again.explanation is not None
        assert first.explanation is not None
        assert again.explanation.to_record() == first.explanation.to_record()
        assert [c.text() for c in again.explanation.top(5)] == [
            c.text() for c in first.explanation.top(5)
        ]  # the feature values too: re-derived from the recorded action and state
        assert await kinds(gw, first.decision_id) == ["decision", "outcome"]  # not rerun
        gw.decisions.pop(first.decision_id)
        rolled = await gw.rollback(first.decision_id, "read back, then undone", ALICE)
        assert rolled.state == "ROLLED_BACK"
        with pytest.raises(Exception, match="no decision 'd-missing'"):
            await gw.get("d-missing")
        await verify(gw, runtime)


async def test_a_selector_halt_covers_a_target_that_cannot_be_described(runtime: Runtime):
    async with runtime.gateway() as gw:
        await gw.halt(Halt(selector=parse_selector("env=production")), "drill", ALICE)

        async def down(*args: Any, **kwargs: Any) -> Any:
            from adapters.errors import UnavailableError

            raise UnavailableError("libvirt is restarting")

        runtime.lv.describe = down  # type: ignore[method-assign]
        try:
            d = await gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
        finally:
            del runtime.lv.describe
        assert d.state == "HALTED", d.reasons
        assert await vcpus(runtime) == 2


async def test_request_ids_from_before_the_store_kept_claims_are_never_let_go(
    runtime: Runtime,
):
    """An upgraded SQLite ledger: decisions recorded before the claims table existed have
    no claim to be found by, so a restarted gateway keeps their request ids however many
    newer ones push the rest out of memory."""
    async with runtime.gateway() as gw:
        first = await gw.propose("r-legacy", act("resize", vcpus=4), requester=ENGINE)
        assert first.state == "EXECUTED"
    db = sqlite3.connect(runtime.data.path / "ledger.db")
    with db:  # as a version-1 file upgraded now would be: no claims, and the mark
        db.execute("DELETE FROM claims WHERE key = 'request:r-legacy'")
        db.execute("INSERT INTO meta SELECT 'claims_from', size FROM log_head")
    db.close()

    async with runtime.gateway() as gw:
        assert gw.ledger.store.claims_from > first.ledger_index
        gw.requests = 1
        await recover(gw)
        for n in range(3):
            await gw.propose(f"r-new-{n}", act("resize", vcpus=3 + n % 2), requester=ENGINE)
        assert "r-legacy" not in gw._by_request
        again = await gw.propose("r-legacy", act("resize", vcpus=4), requester=ENGINE)
        assert again.decision_id == first.decision_id
        outcomes = await gw.ledger.store.query(
            RecordQuery(kind="outcome", decision_id=first.decision_id)
        )
        assert len(outcomes) == 1  # not run a second time


async def test_a_retry_of_a_forgotten_request_gets_its_decision_even_if_the_target_is_gone(
    runtime: Runtime,
):
    async with runtime.gateway() as gw:
        gw.requests = 1
        first = await gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
        await gw.propose("r-2", act("resize", vcpus=3), requester=ENGINE)
        assert "r-1" not in gw._by_request
        await runtime.lv._call("stop", lambda c: c.lookupByName("web-1").destroy())
        await runtime.lv._call("undefine", lambda c: c.lookupByName("web-1").undefine())
        again = await gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
        assert again.decision_id == first.decision_id
        with pytest.raises(InvalidRequestError, match="no domain"):  # a new request is refused
            await gw.propose("r-3", act("resize", vcpus=4), requester=ENGINE)
