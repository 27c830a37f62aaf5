"""Deadlines: the caller's bounds the work before the record; a recorded decision always
gets its outcome, even when the caller stopped waiting or the runtime overran."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_pipeline import ALICE, APPROVE_ALL, BOB, ENGINE, World, act, records

from adapters.action import PowerState, Target
from adapters.runtime import Deadlines
from gateway.errors import DeadlineExceededError
from gateway.policy import Policy


async def vcpus(w: World) -> int | None:
    return (await w.lv.describe(Target("libvirt", "web-1"))).vcpus


async def test_a_deadline_that_passes_before_the_record_leaves_nothing(world: World):
    real = world.lv._describe

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.2)
        return await real(*args, **kwargs)

    world.lv._describe = slow  # type: ignore[method-assign]
    try:
        with pytest.raises(DeadlineExceededError, match="nothing was recorded or run"):
            await world.gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE, timeout=0.05)
    finally:
        del world.lv._describe
    assert await records(world, "decision") == []
    assert await vcpus(world) == 2
    again = await world.gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE, timeout=5)
    assert again.state == "EXECUTED"  # the request id was not used up


async def test_a_caller_that_stops_waiting_does_not_stop_a_recorded_decision(world: World):
    real = world.lv._execute

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.3)
        return await real(*args, **kwargs)

    world.lv._execute = slow  # type: ignore[method-assign]
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                world.gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE), 0.1
            )
        for _ in range(50):  # the decision goes on without its caller
            if await records(world, "outcome"):
                break
            await asyncio.sleep(0.05)
    finally:
        del world.lv._execute
    [decision] = await records(world, "decision")
    [outcome] = await records(world, "outcome")
    assert outcome["decision_id"] == decision["decision_id"]
    assert outcome["body"]["status"] == "applied"
    assert await vcpus(world) == 4
    again = await world.gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
    assert again.decision_id == decision["decision_id"]  # one decision, run once


async def test_a_runtime_that_overruns_its_deadline_gets_an_unknown_outcome(world: World):
    async def hang(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(5)

    world.lv.deadlines = Deadlines(execute=0.05)
    world.lv._execute = hang  # type: ignore[method-assign]
    try:
        d = await world.gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
    finally:
        del world.lv._execute
    assert d.state == "FAILED"
    assert d.outcome is not None
    assert d.outcome["status"] == "unknown"  # not "failed": it may yet have happened
    assert "unknown until reconciled" in d.outcome["detail"]
    [outcome] = await records(world, "outcome")
    assert outcome["body"]["status"] == "unknown"


async def test_an_approval_after_the_proposers_deadline_still_runs_the_action(world: World):
    """The engine's deadline bounds its proposal, not the overseers' reviews, which come
    minutes later: the review that completes the approval plans and runs the action."""
    await world.gw.activate_policy(Policy.parse(APPROVE_ALL, "approve-all"))
    d = await world.gw.propose("r-1", act("suspend"), requester=ENGINE, timeout=0.3)
    assert d.state == "PENDING_APPROVAL"
    await asyncio.sleep(0.4)  # the engine has stopped waiting long ago
    await world.gw.review(d.decision_id, ALICE, True, "checked", d.digest)
    done = await world.gw.review(d.decision_id, BOB, True, "checked", d.digest)
    assert done.state == "EXECUTED", done.reasons
    assert (await world.lv.describe(Target("libvirt", "web-1"))).power is PowerState.PAUSED
    assert len(await records(world, "outcome")) == 1
