"""The decision pipeline with real parts: SQLite ledger, bundled model, libvirt's test driver."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.action import Action, PowerState, Target
from adapters.errors import AdapterError, NotFoundError
from adapters.libvirt import LibvirtAdapter, LibvirtConfig
from explain.batcher import MicroBatcher
from explain.registry import Registry
from explain.scorer import Scorer
from gateway.decision import Halt
from gateway.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    LedgerUnavailableError,
    RequestConflictError,
    ReviewRefusedError,
)
from gateway.pipeline import Gateway
from gateway.policy import Policy
from gateway.server import Admission
from ledger import DataDir, LedgerConfig
from ledger.errors import StoreError
from ledger.export import export_ledger
from ledger.store import RecordQuery
from ledger.verify import verify_export

EXAMPLE_POLICY = Path(__file__).resolve().parents[2] / "gateway" / "policies" / "default.toml"
ENGINE = "spiffe://govgate.local/engine-1"
ALICE = "spiffe://govgate.local/alice"
BOB = "spiffe://govgate.local/bob"
NODE = """<node>
  <domain type='test'><name>web-1</name>
    <memory unit='MiB'>8192</memory><currentMemory unit='MiB'>4096</currentMemory>
    <vcpu current='2'>8</vcpu><os><type arch='x86_64'>hvm</type></os>
    <metadata><govgate:labels xmlns:govgate='https://govgate.dev/xmlns/labels/1'>
      <label key='environment'>staging</label><label key='criticality'>low</label>
      <label key='dependents'>1</label></govgate:labels></metadata>
    <devices/></domain>
  <domain type='test'><name>db-1</name>
    <memory unit='MiB'>65536</memory><vcpu>16</vcpu><os><type arch='x86_64'>hvm</type></os>
    <metadata><govgate:labels xmlns:govgate='https://govgate.dev/xmlns/labels/1'>
      <label key='environment'>production</label><label key='criticality'>critical</label>
      <label key='dependents'>12</label></govgate:labels></metadata>
    <devices/></domain>
</node>"""
APPROVE_ALL = b"""version = 1
[defaults]
execute_below = 0.0
approve_below = 1.0
approvals = 2
approval_ttl = 60
fallback_irreversible = "deny"
"""


@dataclass
class World:
    gw: Gateway
    lv: LibvirtAdapter
    data: DataDir


def act(verb: str, resource: str = "web-1", confidence: float = 0.95, **params: Any) -> Action:
    return Action.from_json(
        {"verb": verb, "target": {"runtime": "libvirt", "resource": resource},
         "parameters": params, "justification": "p95 CPU above 85% for 20 minutes; scale out",
         "confidence": confidence, "engine": "autoscaler"}
    )  # fmt: skip


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    data = DataDir(tmp_path / "data")
    data.generate_key("example.com/govgate")
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    config = LedgerConfig(checkpoint_every=0, checkpoint_interval=0)
    async with (
        data.open_ledger(config) as ledger,
        LibvirtAdapter(LibvirtConfig(uri=f"test://{node}")) as lv,
        MicroBatcher(Scorer(Registry(tmp_path / "models").load())) as batcher,
    ):
        yield World(Gateway(ledger, {"libvirt": lv}, batcher, Policy.load(EXAMPLE_POLICY)), lv,
                    data)  # fmt: skip


async def records(w: World, kind: str, decision_id: str = "") -> list[dict[str, Any]]:
    q = RecordQuery(kind=kind, decision_id=decision_id or None)
    return [r.to_json() for r in await w.gw.ledger.store.query(q)]


async def assert_ledger_verifies(w: World, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    await w.gw.ledger.checkpoint()
    await export_ledger(w.gw.ledger, out)
    assert verify_export(out, w.data.signer().verifier).size > 0


async def test_low_risk_action_executes_once_and_is_recorded(world: World, tmp_path: Path):
    d = await world.gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
    assert d.state == "EXECUTED", d.reasons
    assert d.risk is not None
    assert d.risk < 0.3
    assert d.explanation is not None
    assert d.outcome is not None
    assert d.outcome["status"] == "applied"
    assert (await world.lv.describe(Target("libvirt", "web-1"))).vcpus == 4
    [decision] = await records(world, "decision", d.decision_id)
    assert decision["body"]["verdict"] == "EXECUTING"
    assert decision["body"]["risk"] == repr(d.risk)
    assert decision["actor"] == ENGINE
    assert decision["index"] == d.ledger_index
    [outcome] = await records(world, "outcome", d.decision_id)
    assert outcome["index"] > decision["index"]  # recorded before, executed after

    again = await world.gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
    assert again is d
    assert len(await records(world, "outcome")) == 1
    with pytest.raises(RequestConflictError, match="another action"):
        await world.gw.propose("r-1", act("resize", vcpus=6), requester=ENGINE)
    await assert_ledger_verifies(world, tmp_path)


async def test_a_request_id_the_memory_let_go_is_found_in_the_ledger(world: World, tmp_path: Path):
    world.gw.requests = 2  # request ids kept in memory; older ones are the ledger's claims
    world.gw.cache = 1
    first = await world.gw.propose("r-old", act("resize", vcpus=4), requester=ENGINE)
    assert first.state == "EXECUTED"
    for n in range(3):
        await world.gw.propose(f"r-new-{n}", act("resize", vcpus=3 + n % 2), requester=ENGINE)
    assert "r-old" not in world.gw._by_request
    assert len(world.gw._by_request) == 2

    again = await world.gw.propose("r-old", act("resize", vcpus=4), requester=ENGINE)
    assert again.decision_id == first.decision_id
    assert again.state == "EXECUTED"
    assert len(await records(world, "decision", first.decision_id)) == 1
    assert len(await records(world, "outcome", first.decision_id)) == 1  # not run again
    with pytest.raises(RequestConflictError, match="another action"):
        await world.gw.propose("r-new-0", act("resize", vcpus=6), requester=ENGINE)
    await assert_ledger_verifies(world, tmp_path)


async def test_high_risk_delete_in_production(world: World):
    await world.lv._call("stop", lambda c: c.lookupByName("db-1").destroy())
    # The example policy asks two people above 0.8 for critical services ...
    d = await world.gw.propose("r-2", act("delete", "db-1", confidence=0.4), requester=ENGINE)
    assert (d.state, d.approvals_required) == ("PENDING_APPROVAL", 2)
    assert d.risk is not None
    assert d.risk >= 0.8
    assert any("approval by 2" in r for r in d.reasons)
    # ... the defaults deny outright.
    await world.gw.activate_policy(Policy.parse(b"version = 1\n", "defaults"))
    d = await world.gw.propose("r-2b", act("delete", "db-1", confidence=0.4), requester=ENGINE)
    assert d.state == "DENIED"
    assert any(": deny" in r for r in d.reasons)
    assert (await world.lv.describe(Target("libvirt", "db-1"))).power is PowerState.SHUTOFF
    assert await records(world, "outcome") == []


async def test_two_approvers_then_execution(world: World, tmp_path: Path):
    await world.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"), actor=ALICE)
    d = await world.gw.propose("r-3", act("suspend"), requester=ENGINE)
    assert (d.state, d.approvals_required) == ("PENDING_APPROVAL", 2)
    assert world.gw.pending() == [d]
    with pytest.raises(ReviewRefusedError) as info:
        await world.gw.review(d.decision_id, ENGINE, True, "mine", d.digest)
    assert info.value.code == "self-approval"
    with pytest.raises(ReviewRefusedError) as info:
        await world.gw.review(d.decision_id, ALICE, True, "ok", b"\0" * 32)
    assert info.value.code == "digest-mismatch"
    assert await records(world, "approval") == []  # refused reviews leave no record

    await world.gw.review(d.decision_id, ALICE, True, "checked", d.digest)
    assert d.state == "PENDING_APPROVAL"
    assert (await world.lv.describe(Target("libvirt", "web-1"))).power is PowerState.RUNNING
    await world.gw.review(d.decision_id, BOB, True, "agreed", d.digest)
    assert d.state == "EXECUTED"
    assert (await world.lv.describe(Target("libvirt", "web-1"))).power is PowerState.PAUSED
    approvals = await records(world, "approval", d.decision_id)
    assert [a["actor"] for a in approvals] == [ALICE, BOB]
    [outcome] = await records(world, "outcome", d.decision_id)
    assert outcome["index"] > approvals[-1]["index"]
    [policy] = await records(world, "policy")
    assert policy["body"]["policy_id"] == d.policy_id
    await assert_ledger_verifies(world, tmp_path)


async def test_denial_needs_a_reason_and_stops_it(world: World):
    await world.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    d = await world.gw.propose("r-4", act("suspend"), requester=ENGINE)
    with pytest.raises(ReviewRefusedError) as info:
        await world.gw.review(d.decision_id, ALICE, False, "", d.digest)
    assert info.value.code == "reason-required"
    await world.gw.review(d.decision_id, ALICE, False, "maintenance window is tomorrow", d.digest)
    assert d.state == "DENIED"
    with pytest.raises(ReviewRefusedError) as info:
        await world.gw.review(d.decision_id, BOB, True, "too late", d.digest)
    assert info.value.code == "not-pending"
    assert (await world.lv.describe(Target("libvirt", "web-1"))).power is PowerState.RUNNING


async def test_pending_decisions_expire(world: World):
    await world.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    d = await world.gw.propose("r-5", act("suspend"), requester=ENGINE)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61)
    assert await world.gw.expire_overdue(later) == 1
    assert d.state == "EXPIRED"
    [expiry] = await records(world, "expiry", d.decision_id)
    assert expiry["body"]["approvals"] == 0


async def test_a_pending_decision_the_ledger_refused_never_reaches_the_expiry_sweep(
    world: World,
):
    """Held for approval by the policy, then refused by the ledger (or by the caller's
    deadline): it was never recorded, so it is not pending, and the sweep goes on expiring
    the decisions that were."""
    await world.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    real_append = world.gw.ledger.append

    async def append(draft: Any) -> Any:
        if draft.kind == "decision":
            raise StoreError("disk full")
        return await real_append(draft)

    world.gw.ledger.append = append  # type: ignore[method-assign]
    with pytest.raises(LedgerUnavailableError):
        await world.gw.propose("r-lost", act("suspend"), requester=ENGINE)
    del world.gw.ledger.append  # the ledger writes again
    with pytest.raises(DeadlineExceededError):
        await world.gw.propose("r-late", act("suspend"), requester=ENGINE, timeout=1e-9)
    assert not world.gw._pending
    d = await world.gw.propose("r-kept", act("suspend"), requester=ENGINE)
    assert [p.decision_id for p in world.gw.pending()] == [d.decision_id]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61)
    assert await world.gw.expire_overdue(later) == 1
    assert d.state == "EXPIRED"


async def test_a_review_is_refused_when_the_deadline_passes_before_it_is_recorded(
    world: World,
):
    """The approval arrives in time, but planning the action takes past the deadline: the
    deadline holds when the review would be recorded, so the decision expires instead."""
    short = APPROVE_ALL.replace(b"approvals = 2", b"approvals = 1").replace(
        b"approval_ttl = 60", b"approval_ttl = 1"
    )
    await world.gw.activate_policy(Policy.parse(short, "approve-quickly"))
    d = await world.gw.propose("r-slow", act("resize", vcpus=4), requester=ENGINE)
    assert d.state == "PENDING_APPROVAL"
    real_plan = world.gw._plan

    async def slow_plan(decision: Any, *args: Any) -> None:
        assert decision.approval_deadline is not None
        await asyncio.sleep((decision.approval_deadline - dt.datetime.now(dt.UTC)).total_seconds())
        await real_plan(decision, *args)

    world.gw._plan = slow_plan  # type: ignore[method-assign]
    with pytest.raises(ReviewRefusedError) as info:
        await world.gw.review(d.decision_id, ALICE, True, "fine", d.digest)
    assert info.value.code == "expired"
    assert d.state == "EXPIRED"
    assert await records(world, "approval", d.decision_id) == []
    assert len(await records(world, "expiry", d.decision_id)) == 1
    assert (await world.lv.describe(Target("libvirt", "web-1"))).vcpus == 2  # never ran


async def test_halt_stops_proposals_in_scope_until_resumed(world: World):
    scope = Halt(selector=(("env", "staging"),))
    await world.gw.halt(scope, "incident drill", ALICE)
    d = await world.gw.propose("r-6", act("resize", vcpus=3), requester=ENGINE)
    assert d.state == "HALTED"
    assert (await world.lv.describe(Target("libvirt", "web-1"))).vcpus == 2
    other = await world.gw.propose("r-7", act("snapshot", "db-1", name="s"), requester=ENGINE)
    assert other.state != "HALTED"  # production is not in the halted scope
    with pytest.raises(InvalidRequestError, match="reason"):
        await world.gw.halt(Halt(all=True), " ", ALICE)
    for typo in ("Libvirt", "libvirt ", "kata"):  # would halt nothing: refused, not recorded
        with pytest.raises(InvalidRequestError, match="no runtime") as info:
            await world.gw.halt(Halt(runtime=typo), "drill", ALICE)
        assert info.value.field == "scope.runtime"
    await world.gw.resume(scope, "drill over", ALICE)
    d2 = await world.gw.propose("r-8", act("resize", vcpus=3), requester=ENGINE)
    assert d2.state == "EXECUTED"
    assert [r["kind"] for r in await records(world, "halt")] == ["halt"]
    assert len(await records(world, "resume")) == 1


async def test_dry_run_records_but_never_executes(world: World):
    d = await world.gw.propose("r-9", act("resize", vcpus=4), requester=ENGINE, dry_run=True)
    assert d.state == "DRY_RUN"
    assert (await world.lv.describe(Target("libvirt", "web-1"))).vcpus == 2
    [decision] = await records(world, "decision", d.decision_id)
    assert decision["body"]["dry_run"] is True
    again = await world.gw.propose("r-9", act("resize", vcpus=4), requester=ENGINE, dry_run=True)
    assert again is d
    # A dry run's request id cannot be reused to run it for real, nor the reverse.
    with pytest.raises(RequestConflictError, match="used for a dry run"):
        await world.gw.propose("r-9", act("resize", vcpus=4), requester=ENGINE)
    real = await world.gw.propose("r-9b", act("resize", vcpus=4), requester=ENGINE)
    assert real.state == "EXECUTED"
    with pytest.raises(RequestConflictError, match="used for a real proposal"):
        await world.gw.propose("r-9b", act("resize", vcpus=4), requester=ENGINE, dry_run=True)
    assert (await world.lv.describe(Target("libvirt", "web-1"))).vcpus == 4


async def test_fail_closed_when_the_ledger_cannot_record(world: World):
    await world.gw.ledger.close()
    with pytest.raises(LedgerUnavailableError):
        await world.gw.propose("r-10", act("resize", vcpus=4), requester=ENGINE)
    assert (await world.lv.describe(Target("libvirt", "web-1"))).vcpus == 2
    assert "r-10" not in world.gw._by_request  # a retry later decides afresh


async def test_model_unavailable_falls_back_per_policy(world: World):
    assert world.gw.batcher is not None
    await world.gw.batcher.close()
    d = await world.gw.propose("r-11", act("resize", vcpus=4), requester=ENGINE)
    assert (d.state, d.fallback, d.risk) == ("PENDING_APPROVAL", True, None)
    assert any("could not score" in r for r in d.reasons)
    await world.lv._call("stop", lambda c: c.lookupByName("db-1").destroy())
    gone = await world.gw.propose("r-12", act("delete", "db-1"), requester=ENGINE)
    assert (gone.state, gone.fallback) == ("DENIED", True)  # irreversible: never blind


async def test_a_state_that_cannot_be_featurized_takes_the_fallback(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    """A label the features cannot read must not fail the proposal (UNKNOWN, nothing
    recorded): it is left unscored, and the policy's fallback decides, recorded as such."""
    import gateway.pipeline

    def broken(*args: Any) -> Any:
        raise ValueError("invalid literal for int() with base 10: '²'")

    monkeypatch.setattr(gateway.pipeline, "featurize", broken)
    d = await world.gw.propose("r-feat", act("resize", vcpus=4), requester=ENGINE)
    assert (d.state, d.fallback, d.risk) == ("PENDING_APPROVAL", True, None)
    assert any("could not be turned into features" in r for r in d.reasons)
    assert len(await records(world, "decision", d.decision_id)) == 1


async def test_invalid_requests(world: World):
    with pytest.raises(InvalidRequestError) as info:
        await world.gw.propose("", act("start"), requester=ENGINE)
    assert info.value.field == "request_id"
    with pytest.raises(InvalidRequestError) as info:
        await world.gw.propose("r-13", act("start", "ghost"), requester=ENGINE)
    assert info.value.field == "action.target.resource"
    kata = Action.from_json({"verb": "start", "target": {"runtime": "kata", "resource": "s"}})
    with pytest.raises(InvalidRequestError) as info:
        await world.gw.propose("r-14", kata, requester=ENGINE)
    assert info.value.field == "action.target.runtime"


async def test_free_text_from_overseers_and_engines_is_checked_like_an_actions(world: World):
    """Reasons, descriptions and request ids reach the ledger, overseers' screens and logs:
    no control characters (terminal escapes, NULs), nothing longer than an action's text."""
    await world.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    with pytest.raises(InvalidRequestError, match="U\\+001B") as info:
        await world.gw.propose("r-\x1b[2J", act("suspend"), requester=ENGINE)
    assert info.value.field == "request_id"
    d = await world.gw.propose("r-text", act("resize", vcpus=4), requester=ENGINE)
    assert d.state == "PENDING_APPROVAL"
    for bad in ("\x1b]0;pwned\x07ok", "fine\x00", "x" * 4097):
        with pytest.raises(InvalidRequestError) as info:
            await world.gw.review(d.decision_id, ALICE, True, bad, d.digest)
        assert info.value.field == "reason"
        with pytest.raises(InvalidRequestError) as info:
            await world.gw.halt(Halt(all=True), bad, ALICE)
        assert info.value.field == "reason"
        with pytest.raises(InvalidRequestError) as info:
            await world.gw.report_incident(d.decision_id, True, "minor", bad, ALICE)
        assert info.value.field == "description"
        with pytest.raises(InvalidRequestError) as info:
            await world.gw.rollback(d.decision_id, bad, ALICE)
        assert info.value.field == "reason"
    assert await records(world, "approval") == []
    assert await records(world, "halt") == []
    # Tabs, newlines and any script are text, not control.
    await world.gw.review(d.decision_id, ALICE, True, "ok\tsee ticket\nΔ 42 ✓", d.digest)
    assert len(await records(world, "approval", d.decision_id)) == 1


async def test_rollback_reverts_and_is_recorded(world: World, tmp_path: Path):
    d = await world.gw.propose("r-15", act("resize", vcpus=4), requester=ENGINE)
    assert d.state == "EXECUTED"
    with pytest.raises(InvalidRequestError, match="reason"):
        await world.gw.rollback(d.decision_id, "", ALICE)
    await world.gw.rollback(d.decision_id, "latency got worse", ALICE)
    assert d.state == "ROLLED_BACK"
    assert (await world.lv.describe(Target("libvirt", "web-1"))).vcpus == 2
    [rollback] = await records(world, "rollback", d.decision_id)
    outcomes = await records(world, "outcome", d.decision_id)
    assert [o["body"].get("rollback", False) for o in outcomes] == [False, True]
    assert rollback["index"] < outcomes[1]["index"]
    with pytest.raises(ReviewRefusedError) as info:
        await world.gw.rollback(d.decision_id, "again", ALICE)
    assert info.value.code == "not-executed"

    everything = b"version = 1\n[defaults]\nexecute_below = 1.0\napprove_below = 1.0\n"
    await world.gw.activate_policy(Policy.parse(everything, "execute-everything"))
    snap = await world.gw.propose("r-16", act("snapshot", name="s1"), requester=ENGINE)
    revert = await world.gw.propose("r-17", act("revert", snapshot="s1"), requester=ENGINE)
    assert (snap.state, revert.state) == ("EXECUTED", "EXECUTED")
    with pytest.raises(ReviewRefusedError) as info:
        await world.gw.rollback(revert.decision_id, "undo", ALICE)
    assert info.value.code == "irreversible"
    # A start that found web-1 running changed nothing: rolling it back would power it off.
    noop = await world.gw.propose("r-18", act("start"), requester=ENGINE)
    assert (noop.state, noop.outcome and noop.outcome["status"]) == ("EXECUTED", "already")
    with pytest.raises(ReviewRefusedError) as info:
        await world.gw.rollback(noop.decision_id, "undo", ALICE)
    assert info.value.code == "nothing-changed"
    assert (await world.lv.describe(Target("libvirt", "web-1"))).power is PowerState.RUNNING
    assert await records(world, "rollback", noop.decision_id) == []
    await assert_ledger_verifies(world, tmp_path)


async def test_create_goes_through_the_gateway(world: World):
    """Its target does not exist yet: that is the one verb for which that is not a mistake."""
    everything = b"version = 1\n[defaults]\nexecute_below = 1.0\napprove_below = 1.0\n"
    await world.gw.activate_policy(Policy.parse(everything, "execute-everything"))
    d = await world.gw.propose("r-new", act("create", "new-1", vcpus=2, memory_mib=1024),
                               requester=ENGINE)  # fmt: skip
    assert d.state == "EXECUTED", d.reasons
    assert (await world.lv.describe(Target("libvirt", "new-1"))).vcpus == 2
    with pytest.raises(InvalidRequestError) as info:  # any other verb on it: the caller's mistake
        await world.gw.propose("r-ghost", act("start", "ghost-1"), requester=ENGINE)
    assert info.value.field == "action.target.resource"
    # The adapter's own checks still hold: a plan it refuses is recorded and never runs.
    disk = await world.gw.propose("r-disk", act("create", "new-2", image="/etc/shadow"),
                                  requester=ENGINE)  # fmt: skip
    assert disk.state == "FAILED"
    assert disk.outcome is not None
    assert "image directory" in disk.outcome["detail"]
    with pytest.raises(NotFoundError):
        await world.lv.describe(Target("libvirt", "new-2"))


async def test_incident_reports_feed_the_ledger(world: World):
    d = await world.gw.propose("r-18", act("resize", vcpus=4), requester=ENGINE)
    index = await world.gw.report_incident(d.decision_id, True, "major", "OOM after resize", ALICE)
    [incident] = await records(world, "incident", d.decision_id)
    assert incident["index"] == index
    assert incident["body"] == {"harmful": True, "severity": "major",
                                "description": "OOM after resize"}  # fmt: skip
    with pytest.raises(InvalidRequestError):
        await world.gw.report_incident(d.decision_id, True, "apocalyptic", "", ALICE)


async def test_concurrent_repeats_of_one_request_make_one_decision(world: World):
    import asyncio

    results = await asyncio.gather(
        *(world.gw.propose("r-19", act("resize", vcpus=3), requester=ENGINE) for _ in range(5))
    )
    assert len({d.decision_id for d in results}) == 1
    assert len(await records(world, "decision")) == 1
    assert len(await records(world, "outcome")) == 1
    assert world.gw._locks == {}  # nothing kept per request id once it is decided


async def test_an_outcome_the_ledger_refused_is_recorded_once_it_recovers(world: World):
    """The action ran but its outcome record failed: the caller hears UNAVAILABLE, and the
    outcome still reaches the ledger as soon as it can write, without running anything again."""
    real_append = world.gw.ledger.append
    refusals = 0

    async def append(draft: Any) -> Any:
        nonlocal refusals
        if draft.kind == "outcome" and refusals < 2:
            refusals += 1
            raise StoreError("disk full")
        return await real_append(draft)

    world.gw.ledger.append = append  # type: ignore[method-assign]
    with pytest.raises(LedgerUnavailableError):
        await world.gw.propose("r-late", act("resize", vcpus=5), requester=ENGINE)
    assert (await world.lv.describe(Target("libvirt", "web-1"))).vcpus == 5  # it ran
    d = next(iter(world.gw.decisions.values()))
    for _ in range(100):
        if d.outcome is not None and "ledger_index" in d.outcome:
            break
        await asyncio.sleep(0.05)
    [outcome] = await records(world, "outcome", d.decision_id)
    assert outcome["body"]["status"] == "applied"
    assert refusals == 2
    again = await world.gw.propose("r-late", act("resize", vcpus=5), requester=ENGINE)
    assert (again.decision_id, again.state) == (d.decision_id, "EXECUTED")


async def test_a_target_that_cannot_be_described_escapes_no_label_scoped_rule(world: World):
    """Describe fails (libvirt reset the connection): its labels are unknown, so a rule
    that forbids the verb in some scope denies it, and nothing is scored on an empty state
    and executed; otherwise the policy's fallback (approval) decides, with the strictest
    rule's reason requirement."""
    policy = b"""version = 1
[defaults]
execute_below = 0.9
approve_below = 0.95
reason_required = false
[[rules]]
name = "nothing may be suspended in staging"
match = { verbs = ["suspend"], selector = "env=staging" }
forbid = true
[[rules]]
name = "reasons for staging resizes"
match = { verbs = ["resize"], selector = "env=staging" }
reason_required = true
"""
    await world.gw.activate_policy(Policy.parse(policy, "scoped"))
    real = world.lv.describe

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise AdapterError("libvirt: connection reset")

    world.lv.describe = broken  # type: ignore[method-assign]
    try:
        suspended = await world.gw.propose("r-1", act("suspend"), requester=ENGINE)
        resized = await world.gw.propose("r-2", act("resize", vcpus=3), requester=ENGINE)
    finally:
        world.lv.describe = real  # type: ignore[method-assign]
    assert suspended.state == "DENIED", suspended.reasons
    assert any("could not be read" in r for r in suspended.reasons)
    assert resized.state == "PENDING_APPROVAL", resized.reasons
    assert resized.risk is None
    assert resized.fallback
    with pytest.raises(ReviewRefusedError, match="reason"):
        await world.gw.review(resized.decision_id, ALICE, True, "", resized.digest)
    state = await world.lv.describe(Target("libvirt", "web-1"))
    assert (state.power, state.vcpus) == (PowerState.RUNNING, 2)  # nothing ran
    assert await records(world, "outcome") == []


async def test_the_pending_list_survives_changes_while_it_is_read(world: World):
    """The pending-approvals gauge reads ``pending()`` on the metrics reader's thread while
    the event loop adds and removes pending decisions: a change between two steps of its
    walk (simulated here, deterministically) must not make it fail."""
    await world.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    for i in range(3):
        await world.gw.propose(f"r-{i}", act("resize", vcpus=3 + i % 2), requester=ENGINE)
    pending_ids = world.gw._pending
    real = world.gw.decisions

    class Meanwhile(type(real)):  # type: ignore[misc]
        def get(self, key: Any, default: Any = None) -> Any:
            if pending_ids:  # the event loop drops one meanwhile
                pending_ids.pop(next(iter(pending_ids)))
            return super().get(key, default)

        def __contains__(self, key: object) -> bool:
            if pending_ids:
                pending_ids.pop(next(iter(pending_ids)))
            return super().__contains__(key)

    world.gw.decisions = Meanwhile(real)
    try:
        got = world.gw.pending()
    finally:
        world.gw.decisions = real
    assert 1 <= len(got) <= 3
    assert all(d.state == "PENDING_APPROVAL" for d in got)


async def test_reviews_running_their_actions_do_not_count_as_proposals_in_flight(world: World):
    """max_inflight bounds proposals: approvals whose actions are running must not make
    the gateway refuse new proposals as overloaded."""
    await world.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    made = [
        await world.gw.propose(f"r-{i}", act("resize", vcpus=3 + i), requester=ENGINE)
        for i in range(2)
    ]
    for d in made:
        await world.gw.review(d.decision_id, ALICE, True, "ok", d.digest)
    real, go_on = world.lv._execute, asyncio.Event()

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await go_on.wait()
        return await real(*args, **kwargs)

    world.lv._execute = slow  # type: ignore[method-assign]
    reviews = [
        asyncio.create_task(world.gw.review(d.decision_id, BOB, True, "ok", d.digest)) for d in made
    ]
    await asyncio.sleep(0.1)  # both approvals complete; their actions run
    admission = Admission(2, busy=world.gw.proposals_under_way)
    with admission():  # not refused
        assert world.gw.proposals_under_way() == 0
    go_on.set()
    assert [(await r).state for r in reviews] == ["EXECUTED", "EXECUTED"]
    del world.lv._execute


def test_recent_times_count_the_last_hour_exactly_and_give_space_back():
    from gateway.replay import Times

    times = Times()
    for t in range(5000):
        times.append(float(t))
    assert times.count_since(0.0) == 5000
    assert times.count_since(1000.5) == 3999  # 1001 .. 4999: before the cutoff is dropped
    assert times.count_since(1000.0) == 3999  # what was dropped stays dropped
    assert len(times._at) == 5000  # not yet half: kept in place
    assert times.count_since(4000.0) == 1000
    assert (len(times), len(times._at)) == (1000, 1000)  # compacted
    times.append(6000.0)
    assert times.count_since(4999.0) == 2
    assert times.count_since(7000.0) == 0
