"""The libvirt adapter on libvirt's built-in test driver: every verb, its errors, idempotency.

Each test gets its own test-driver node file, so each connection starts from
the same three domains (the ``test:///default`` driver's state is shared by
every connection in a process). One test also runs on ``test:///default``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from adapters.action import Action, PowerState, Reversibility, RuntimeState, Target
from adapters.errors import (
    AdapterTimeoutError,
    ConflictError,
    EffectUnknownError,
    InvalidActionError,
    NotFoundError,
    UnavailableError,
    UnsupportedError,
)
from adapters.libvirt import LibvirtAdapter, LibvirtConfig
from adapters.libvirt._xml import read_domain
from adapters.runtime import Deadlines, OutcomeStatus

NODE = """<node>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>web-1</name>
    <memory unit='MiB'>8192</memory><currentMemory unit='MiB'>4096</currentMemory>
    <vcpu current='2'>8</vcpu>
    <os><type arch='x86_64'>hvm</type></os>
    <metadata><govgate:labels xmlns:govgate='https://govgate.dev/xmlns/labels/1'>
      <label key='environment'>staging</label><label key='criticality'>low</label>
    </govgate:labels></metadata>
    <devices>
      <disk type='file' device='disk'><source file='/guest/web.img'/>
        <target dev='vda' bus='virtio'/></disk>
      <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
    </devices>
  </domain>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>off-1</name>
    <memory unit='MiB'>1024</memory><vcpu>1</vcpu>
    <os><type arch='x86_64'>hvm</type></os>
    <test:runstate>5</test:runstate>
  </domain>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>paused-1</name>
    <memory unit='MiB'>2048</memory><vcpu>2</vcpu>
    <os><type arch='x86_64'>hvm</type></os>
    <test:runstate>3</test:runstate>
  </domain>
</node>
"""


@pytest.fixture
async def lv(tmp_path: Path) -> AsyncIterator[LibvirtAdapter]:
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    adapter = LibvirtAdapter(LibvirtConfig(uri=f"test://{node}", poll_interval=0.01))
    async with adapter:
        yield adapter


def act(verb: str, resource: str = "web-1", **parameters: Any) -> Action:
    return Action.from_json(
        {"verb": verb, "target": {"runtime": "libvirt", "resource": resource},
         "parameters": parameters}
    )  # fmt: skip


T = Target("libvirt", "web-1")


async def run(lv: LibvirtAdapter, action: Action) -> tuple[Any, Any]:
    plan = await lv.plan(action)
    return plan, await lv.execute(plan)


# -- describe ----------------------------------------------------------------------------


async def test_describe_reads_the_domain(lv: LibvirtAdapter):
    s = await lv.describe(T)
    assert s.power is PowerState.RUNNING
    assert (s.vcpus, s.max_vcpus, s.memory_mib, s.max_memory_mib) == (2, 8, 4096, 8192)
    assert s.disks == 1  # the cdrom does not count
    assert s.snapshots == 0
    assert dict(s.labels) == {"environment": "staging", "criticality": "low"}
    assert s.persistent is True
    off = await lv.describe(Target("libvirt", "off-1"))
    assert off.power is PowerState.SHUTOFF
    assert dict(off.labels) == {}
    paused = await lv.describe(Target("libvirt", "paused-1"))
    assert paused.power is PowerState.PAUSED


async def test_describe_by_uuid_and_unknown_domain(lv: LibvirtAdapter):
    uuid = await lv._call("uuid", lambda c: c.lookupByName("web-1").UUIDString())
    assert (await lv.describe(Target("libvirt", uuid))).vcpus == 2
    with pytest.raises(NotFoundError, match="no domain 'nope'"):
        await lv.describe(Target("libvirt", "nope"))
    with pytest.raises(InvalidActionError, match="libvirt adapter"):
        await lv.describe(Target("kata", "web-1"))


async def test_labels_round_trip_through_metadata(lv: LibvirtAdapter):
    await lv.set_labels(T, {"environment": "production", "dependents": "4", "note": "a<b&c"})
    labels = (await lv.describe(T)).labels
    assert dict(labels) == {"environment": "production", "dependents": "4", "note": "a<b&c"}


# -- the verb matrix ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "resource", "params", "after_power"),
    [
        ("start", "off-1", {}, PowerState.RUNNING),
        ("shutdown", "web-1", {}, PowerState.SHUTOFF),
        ("destroy", "web-1", {}, PowerState.SHUTOFF),
        ("suspend", "web-1", {}, PowerState.PAUSED),
        ("resume", "paused-1", {}, PowerState.RUNNING),
        ("save", "web-1", {}, PowerState.SHUTOFF),
    ],
)
async def test_power_verbs_apply_then_are_idempotent_then_revert(
    lv: LibvirtAdapter, verb: str, resource: str, params: dict[str, Any], after_power: PowerState
):
    target = Target("libvirt", resource)
    before = await lv.describe(target)
    plan, outcome = await run(lv, act(verb, resource, **params))
    assert outcome.status is OutcomeStatus.APPLIED, outcome
    assert outcome.after.power is after_power
    assert (await lv.describe(target)).power is after_power

    # The same plan again: nothing more happens.
    again = await lv.execute(plan)
    assert again.status is OutcomeStatus.ALREADY
    # A fresh plan for the same action: the state check finds it done.
    _, fresh = await run(lv, act(verb, resource, **params))
    assert fresh.status is OutcomeStatus.ALREADY, fresh

    reverted = await lv.revert(outcome)
    assert reverted.status is OutcomeStatus.REVERTED
    assert (await lv.describe(target)).power is before.power

    rec = await lv.reconcile(plan)
    assert rec.took_effect is False  # the revert undid it, and reconcile reads that
    assert rec.state.power is before.power


async def test_reverting_a_start_that_found_the_domain_running_leaves_it_running(
    lv: LibvirtAdapter,
):
    """Such a start changed nothing; its revert must not power the domain off."""
    for resource, power in (("web-1", PowerState.RUNNING), ("paused-1", PowerState.PAUSED)):
        target = Target("libvirt", resource)
        _, outcome = await run(lv, act("start", resource))
        assert outcome.status is OutcomeStatus.ALREADY, outcome
        with pytest.raises(UnsupportedError, match="nothing to undo"):
            await lv.revert(outcome)
        assert (await lv.describe(target)).power is power


async def test_save_keeps_memory_for_the_next_start(lv: LibvirtAdapter):
    await run(lv, act("save"))
    has_image = await lv._call("img", lambda c: c.lookupByName("web-1").hasManagedSaveImage(0))
    assert has_image == 1
    _, again = await run(lv, act("save"))
    assert again.status is OutcomeStatus.ALREADY
    await run(lv, act("start"))
    has_image = await lv._call("img", lambda c: c.lookupByName("web-1").hasManagedSaveImage(0))
    assert has_image == 0


async def test_resize_live_and_config_and_back(lv: LibvirtAdapter):
    plan, out = await run(lv, act("resize", vcpus=6, memory_mib=6144))
    assert out.status is OutcomeStatus.APPLIED
    assert (out.after.vcpus, out.after.memory_mib) == (6, 6144)
    config = await lv._call(
        "cfg", lambda c: c.lookupByName("web-1").vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    )
    assert config == 6
    assert (await lv.execute(plan)).status is OutcomeStatus.ALREADY
    assert (await lv.reconcile(plan)).took_effect is True
    back = await lv.revert(out)
    assert (back.after.vcpus, back.after.memory_mib) == (2, 4096)
    assert (await lv.reconcile(plan)).took_effect is False

    _, same = await run(lv, act("resize", vcpus=2))
    assert same.status is OutcomeStatus.ALREADY

    _, cfg_only = await run(lv, act("resize", vcpus=3, live=False))
    assert cfg_only.after.vcpus == 2  # live unchanged
    config = await lv._call(
        "cfg", lambda c: c.lookupByName("web-1").vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    )
    assert config == 3


def _sizes(conn: Any) -> dict[str, int]:
    """web-1's running and saved sizes."""
    dom = conn.lookupByName("web-1")
    return {
        "vcpus": dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE),
        "saved_vcpus": dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG),
        "memory": LibvirtAdapter._memory_mib(dom, live=True),
        "saved_memory": LibvirtAdapter._memory_mib(dom, live=False),
    }


async def test_a_resize_of_a_domain_whose_saved_size_differs_goes_back_to_each(
    lv: LibvirtAdapter,
):
    """The next boot's size was changed before (saved definition only): a revert puts the
    running and the saved size back each to its own value, and reconcile reads each."""
    config = libvirt.VIR_DOMAIN_AFFECT_CONFIG

    def next_boot(c: Any) -> None:
        c.lookupByName("web-1").setVcpusFlags(4, config)
        c.lookupByName("web-1").setMemoryFlags(6144 * 1024, config)

    await lv._call("prepare", next_boot)
    before = await lv._call("sizes", _sizes)
    assert before == {"vcpus": 2, "saved_vcpus": 4, "memory": 4096, "saved_memory": 6144}
    cases: list[tuple[dict[str, Any], tuple[int, int, int, int]]] = [
        ({"vcpus": 6, "memory_mib": 7000}, (6, 6, 7000, 7000)),
        # Only the saved size: the running one never shows it; reconcile reads the saved one.
        ({"vcpus": 3, "memory_mib": 5000, "live": False}, (2, 3, 4096, 5000)),
    ]
    for params, (vcpus, saved_vcpus, memory, saved_memory) in cases:
        plan, out = await run(lv, act("resize", **params))
        during = {"vcpus": vcpus, "saved_vcpus": saved_vcpus, "memory": memory,
                  "saved_memory": saved_memory}  # fmt: skip
        assert await lv._call("sizes", _sizes) == during
        assert (await lv.reconcile(plan)).took_effect is True
        await lv.revert(out)
        assert await lv._call("sizes", _sizes) == before
        assert (await lv.reconcile(plan)).took_effect is False


async def test_stopping_a_transient_domain_reconciles_as_done(lv: LibvirtAdapter):
    """A transient domain disappears when it stops: absent is its off."""
    xml = ("<domain type='test'><name>temp-{}</name><memory unit='MiB'>256</memory>"
           "<vcpu>1</vcpu><os><type>hvm</type></os></domain>")  # fmt: skip
    for i, verb in enumerate(("destroy", "shutdown")):
        await lv._call("transient", lambda c, i=i: c.createXML(xml.format(i), 0))
        plan, out = await run(lv, act(verb, f"temp-{i}"))
        assert out.after.power is PowerState.ABSENT
        rec = await lv.reconcile(plan)
        assert rec.took_effect is True, rec.detail


@pytest.mark.parametrize(
    ("action", "error", "needle"),
    [
        (act("resize", vcpus=16), InvalidActionError, "maximum of 8"),
        (act("resize", memory_mib=9000), InvalidActionError, "maximum of 8192 MiB"),
        (act("resize", "off-1", vcpus=1, live=True), ConflictError, "not running"),
        (act("resize", vcpus=2, live=False, config=False), InvalidActionError, "nothing"),
        (act("suspend", "off-1"), ConflictError, "shutoff"),
        (act("resume", "off-1"), ConflictError, "shutoff"),
        (act("reboot", "off-1"), ConflictError, "shutoff"),
        (act("delete"), ConflictError, "stop it first"),
        (act("delete", "off-1", snapshots="keep"), InvalidActionError, "refuse"),
        (act("revert", snapshot="nope"), NotFoundError, "no snapshot 'nope'"),
        (act("snapshot-delete", snapshot="nope"), NotFoundError, "no snapshot"),
        (act("migrate", destination="qemu+ssh://b/system"), UnsupportedError, "cannot migrate"),
        (act("start", "ghost"), NotFoundError, "no domain 'ghost'"),
        (act("create", "web-1"), ConflictError, "already defined"),
    ],
    ids=lambda v: v.verb.value if isinstance(v, Action) else None,
)
async def test_impossible_requests_are_refused_at_plan(
    lv: LibvirtAdapter, action: Action, error: type[Exception], needle: str
):
    before = await lv.describe(T)
    with pytest.raises(error, match=needle):
        await lv.plan(action)
    assert await lv.describe(T) == before


async def test_snapshot_create_revert_delete(lv: LibvirtAdapter):
    plan, snap = await run(lv, act("snapshot", name="before-upgrade"))
    assert snap.status is OutcomeStatus.APPLIED
    assert snap.after.snapshots == 1
    assert (await lv.reconcile(plan)).took_effect is True
    with pytest.raises(ConflictError, match="already exists"):
        await lv.plan(act("snapshot", name="before-upgrade"))

    await run(lv, act("resize", vcpus=5))
    rplan, reverted = await run(lv, act("revert", snapshot="before-upgrade"))
    assert reverted.status is OutcomeStatus.APPLIED
    assert reverted.after.vcpus == 2
    assert rplan.reversibility is Reversibility.IRREVERSIBLE
    with pytest.raises(UnsupportedError, match="cannot be undone"):
        await lv.revert(reverted)
    assert (await lv.reconcile(rplan)).took_effect is None  # leaves no trace

    dplan, deleted = await run(lv, act("snapshot-delete", snapshot="before-upgrade"))
    assert deleted.after.snapshots == 0
    assert (await lv.execute(dplan)).status is OutcomeStatus.ALREADY

    # A generated name, and revert of the snapshot verb deletes it again.
    _, auto = await run(lv, act("snapshot"))
    assert auto.after.snapshots == 1
    assert (await lv.revert(auto)).after.snapshots == 0


async def test_reboot_and_reset_have_nothing_to_undo(lv: LibvirtAdapter):
    for verb in ("reboot", "reset"):
        plan, out = await run(lv, act(verb))
        assert out.status is OutcomeStatus.APPLIED
        assert plan.reversibility is Reversibility.NOTHING_TO_UNDO
        # Executing the same plan twice must not reboot twice.
        assert (await lv.execute(plan)).status is OutcomeStatus.ALREADY
        with pytest.raises(UnsupportedError, match="nothing to undo"):
            await lv.revert(out)


@pytest.mark.parametrize(
    ("params", "field", "needle"),
    [
        ({"image": "/etc/shadow"}, "image", "not a normalised absolute path in an image dir"),
        ({"image": "disk.qcow2"}, "image", "/var/lib/libvirt/images"),
        ({"image": "/var/lib/libvirt/images/../../../etc/shadow"}, "image", "image directory"),
        ({"image": "/var/lib/libvirt/images"}, "image", "image directory"),  # the dir itself
        ({"image": "/var/lib/libvirt/images-evil/x.qcow2"}, "image", "image directory"),
        ({"vcpus": 100_000}, "vcpus", "the hypervisor's limit"),
        ({"memory_mib": 2**40}, "memory_mib", "the host's memory"),
        ({"memory_mib": 1}, "memory_mib", "must be 16 to"),
    ],
)
async def test_create_keeps_to_the_host_and_the_image_directories(
    lv: LibvirtAdapter, params: dict[str, Any], field: str, needle: str
):
    """An engine must not hand a new VM a file of the host as its disk, nor ask for more
    than the host has."""
    with pytest.raises(InvalidActionError, match=needle) as info:
        await lv.plan(act("create", "new-1", **params))
    assert info.value.field == f"action.parameters.{field}"
    plan = await lv.plan(act("create", "new-1", image="/var/lib/libvirt/images/new-1.qcow2"))
    assert plan.desired == {"defined": True}


@pytest.mark.parametrize("name", ["a/b", " pad ", "x" * 65, "-dash", "über"])
async def test_snapshot_names_are_plain(lv: LibvirtAdapter, name: str):
    with pytest.raises(InvalidActionError, match="snapshot name") as info:
        await lv.plan(act("snapshot", name=name))
    assert info.value.field == "action.parameters.name"
    for plain in ("pre-upgrade_2026.11", "x" * 64):
        assert (await lv.plan(act("snapshot", name=plain))).desired == {"snapshot": plain}


async def test_create_and_delete(lv: LibvirtAdapter):
    plan, created = await run(lv, act("create", "new-1", vcpus=2, memory_mib=1024))
    assert created.status is OutcomeStatus.APPLIED
    assert created.after.power is PowerState.SHUTOFF
    assert (created.after.vcpus, created.after.memory_mib) == (2, 1024)
    assert (await lv.reconcile(plan)).took_effect is True
    reverted = await lv.revert(created)
    assert reverted.after.power is PowerState.ABSENT

    await run(lv, act("create", "new-2"))
    await run(lv, act("snapshot", "new-2"))
    with pytest.raises(ConflictError, match="snapshots=delete"):
        await lv.plan(act("delete", "new-2"))
    dplan, deleted = await run(lv, act("delete", "new-2", snapshots="delete"))
    assert deleted.after.power is PowerState.ABSENT
    assert dplan.reversibility is Reversibility.IRREVERSIBLE
    assert (await lv.execute(dplan)).status is OutcomeStatus.ALREADY
    # A new plan for an already-deleted domain: not found at plan time.
    with pytest.raises(NotFoundError):
        await lv.plan(act("delete", "new-2"))
    assert (await lv.reconcile(dplan)).took_effect is True


async def test_destroy_of_a_transient_domain_is_irreversible(lv: LibvirtAdapter):
    xml = (
        "<domain type='test'><name>temp-1</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type></os></domain>"
    )
    await lv._call("create transient", lambda c: c.createXML(xml, 0))
    state = await lv.describe(Target("libvirt", "temp-1"))
    assert state.persistent is False
    plan, out = await run(lv, act("destroy", "temp-1"))
    assert plan.reversibility is Reversibility.IRREVERSIBLE
    assert out.after.power is PowerState.ABSENT
    with pytest.raises(UnsupportedError):
        await lv.revert(out)


# -- shutdown timing, deadlines, events, reconnect ---------------------------------------


async def test_shutdown_that_never_finishes_times_out_or_is_forced(lv: LibvirtAdapter, monkeypatch):
    def ignore_acpi(conn: Any) -> bool:
        return True  # the guest ignores the power button

    real_call = lv._call

    async def call(what: str, fn: Any) -> Any:
        if what.startswith("shutdown"):
            return await real_call(what, ignore_acpi)
        return await real_call(what, fn)

    monkeypatch.setattr(lv, "_call", call)
    with pytest.raises(AdapterTimeoutError, match="force=true"):
        await run(lv, act("shutdown", timeout_s=0.05))
    assert (await lv.describe(T)).power is PowerState.RUNNING
    _, forced = await run(lv, act("shutdown", timeout_s=0.05, force=True))
    assert forced.status is OutcomeStatus.APPLIED
    assert "forced off" in forced.detail
    assert forced.after.power is PowerState.SHUTOFF


async def test_a_shutdown_wait_of_zero_forces_at_once_and_a_wait_past_the_deadline_is_refused(
    lv: LibvirtAdapter, monkeypatch
):
    real_call = lv._call

    async def call(what: str, fn: Any) -> Any:  # the guest ignores the power button
        return await real_call(what, (lambda c: True) if what.startswith("shutdown") else fn)

    monkeypatch.setattr(lv, "_call", call)
    started = asyncio.get_running_loop().time()
    _, forced = await run(lv, act("shutdown", timeout_s=0, force=True))
    assert "forced off" in forced.detail
    assert asyncio.get_running_loop().time() - started < 10  # not the 60 s default wait
    for wait in (115.01, 600):
        with pytest.raises(InvalidActionError, match="must be 0 to 115") as info:
            await lv.plan(act("shutdown", timeout_s=wait, force=True))
        assert info.value.field == "action.parameters.timeout_s"


async def test_deadline_bounds_a_stuck_call(tmp_path: Path, monkeypatch):
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    lv = LibvirtAdapter(LibvirtConfig(uri=f"test://{node}"), Deadlines(describe=0.1))
    async with lv:
        original = lv._read_state

        def slow(conn: Any, target: Target) -> RuntimeState:
            import time

            time.sleep(0.5)
            return original(conn, target)

        monkeypatch.setattr(lv, "_read_state", slow)
        with pytest.raises(AdapterTimeoutError, match=r"within 0\.1 s"):
            await lv.describe(T)
        # A caller's deadline may shorten the adapter's, never lengthen it.
        with pytest.raises(AdapterTimeoutError, match=r"within 0\.1 s"):
            await lv.describe(T, timeout=60)
        with pytest.raises(AdapterTimeoutError, match=r"within 0\.05 s"):
            await lv.describe(T, timeout=0.05)
        monkeypatch.undo()
        assert (await lv.describe(T, timeout=60)).vcpus == 2


async def test_lifecycle_events_arrive(lv: LibvirtAdapter):
    events = lv.events()
    await run(lv, act("destroy"))
    await run(lv, act("start"))
    got = [await asyncio.wait_for(anext(events), 2) for _ in range(2)]
    assert [(e.target.resource, e.event, e.detail) for e in got] == [
        ("web-1", "stopped", "destroyed"),
        ("web-1", "started", "booted"),
    ]
    assert (await lv.describe(T)).uptime_s is not None  # known once a start was seen


async def test_reconnects_after_the_connection_drops(tmp_path: Path):
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    async with LibvirtAdapter(LibvirtConfig(uri=f"test://{node}", cache_ttl=0)) as lv:
        assert (await lv.describe(T)).vcpus == 2
        assert lv._conn is not None
        lv._conn.close()  # as if the daemon went away under us
        assert (await lv.describe(T)).vcpus == 2
        assert lv.reconnects == 1


async def test_describe_cache_is_dropped_by_events_actions_and_time(tmp_path: Path):
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    async with LibvirtAdapter(LibvirtConfig(uri=f"test://{node}", cache_ttl=30)) as lv:
        first = await lv.describe(T)
        assert await lv.describe(T) == first
        assert lv.cache_hits == 1

        # Changed behind the adapter's back: only the lifecycle event can tell it.
        await lv._call("raw", lambda c: c.lookupByName("web-1").suspend())
        for _ in range(50):
            if (await lv.describe(T)).power is PowerState.PAUSED:
                break
            await asyncio.sleep(0.02)
        assert (await lv.describe(T)).power is PowerState.PAUSED

        # A label change announces itself through the metadata event.
        await lv._call(
            "raw",
            lambda c: c.lookupByName("web-1").setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, "<labels><label key='x'>1</label></labels>",
                "govgate", "https://govgate.dev/xmlns/labels/1", libvirt.VIR_DOMAIN_AFFECT_LIVE,
            ),
        )  # fmt: skip
        for _ in range(50):
            if dict((await lv.describe(T)).labels) == {"x": "1"}:
                break
            await asyncio.sleep(0.02)
        assert dict((await lv.describe(T)).labels) == {"x": "1"}

        # The adapter's own actions never leave a stale entry.
        _, out = await run(lv, act("resume"))
        assert out.after.power is PowerState.RUNNING
        assert (await lv.describe(T)).power is PowerState.RUNNING

    async with LibvirtAdapter(LibvirtConfig(uri=f"test://{node}", cache_ttl=0.05)) as lv:
        await lv.describe(T)
        await asyncio.sleep(0.1)
        await lv.describe(T)
        assert lv.cache_hits == 0


async def test_an_upper_case_uuid_is_cached_where_events_drop_it(tmp_path: Path):
    """libvirt names a domain's UUID in lower case, and so do its events."""
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    async with LibvirtAdapter(LibvirtConfig(uri=f"test://{node}", cache_ttl=30)) as lv:
        uuid = await lv._call("uuid", lambda c: c.lookupByName("web-1").UUIDString())
        target = Target("libvirt", uuid.upper())
        assert (await lv.describe(target)).power is PowerState.RUNNING
        await lv._call("raw", lambda c: c.lookupByName("web-1").suspend())  # behind its back
        for _ in range(100):
            if (await lv.describe(target)).power is PowerState.PAUSED:
                break
            await asyncio.sleep(0.02)
        assert (await lv.describe(target)).power is PowerState.PAUSED


async def test_an_action_reports_the_state_it_left_and_the_next_describe_reuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    async with LibvirtAdapter(LibvirtConfig(uri=f"test://{node}", cache_ttl=30)) as lv:
        _, out = await run(lv, act("resize", vcpus=3))
        assert out.status is OutcomeStatus.APPLIED
        assert out.after.vcpus == 3
        hits = lv.cache_hits
        assert await lv.describe(T) == out.after  # the state read in the action's own job
        assert lv.cache_hits == hits + 1
        assert await lv._describe(T, fresh=True) == out.after  # and it is what libvirt says

        # The read after the change fails (as on a dropped connection): the change is
        # not made again, it is still reported as made, and the state is read on its own.
        real = lv._read_state
        calls = 0

        def read_fails_once(conn: Any, target: Target) -> RuntimeState:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise libvirt.libvirtError("connection lost")
            return real(conn, target)

        monkeypatch.setattr(lv, "_read_state", read_fails_once)
        _, out = await run(lv, act("resize", vcpus=4))
        assert calls == 2
        assert out.status is OutcomeStatus.APPLIED
        assert out.after.vcpus == 4
        assert out.detail.startswith("resized to 4 vCPUs")


async def test_a_read_that_an_event_overtook_is_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    async with LibvirtAdapter(LibvirtConfig(uri=f"test://{node}", cache_ttl=30)) as lv:
        real = lv._read_state

        def event_meanwhile(conn: Any, target: Target) -> RuntimeState:
            state = real(conn, target)
            lv._on_change(conn, conn.lookupByName("web-1"))  # as the event thread would
            return state

        monkeypatch.setattr(lv, "_read_state", event_meanwhile)
        await lv.describe(T)
        _, out = await run(lv, act("resize", vcpus=3))  # its own read is overtaken too
        assert out.after.vcpus == 3
        monkeypatch.setattr(lv, "_read_state", real)
        await lv.describe(T)
        assert lv.cache_hits == 0  # nothing was kept: each read had an event after it
        await lv.describe(T)
        assert lv.cache_hits == 1  # an undisturbed read is


def test_domain_xml_reads_are_independent_copies():
    xml = (
        "<domain type='test'><name>a</name><metadata>"
        "<govgate:labels xmlns:govgate='https://govgate.dev/xmlns/labels/1'>"
        "<label key='environment'>staging</label><label key='criticality'>low</label>"
        "</govgate:labels></metadata><devices><disk type='file' device='disk'/>"
        "<disk type='file' device='cdrom'/></devices></domain>"
    )
    labels, disks = read_domain(xml)
    assert labels == {"environment": "staging", "criticality": "low"}
    assert disks == 1
    labels["environment"] = "prod"  # the caller's copy only
    assert read_domain(xml)[0]["environment"] == "staging"
    other = xml.replace(">staging<", ">production<")
    assert read_domain(other)[0]["environment"] == "production"


async def test_unreachable_daemon_is_unavailable(tmp_path: Path):
    sock = tmp_path / "no-such.sock"
    lv = LibvirtAdapter(LibvirtConfig(uri=f"qemu+unix:///system?socket={sock}"))
    with pytest.raises(UnavailableError, match="cannot connect"):
        await lv.describe(T)
    await lv.close()


async def test_default_test_driver_works_too():
    async with LibvirtAdapter(LibvirtConfig(uri="test:///default")) as lv:
        state = await lv.describe(Target("libvirt", "test"))
        assert state.power is PowerState.RUNNING
        plan = await lv.plan(act("snapshot", "test"))
        out = await lv.execute(plan)
        assert out.after.snapshots == 1
        await lv.revert(out)


def test_config_limits():
    with pytest.raises(ValueError, match="uri"):
        LibvirtConfig(uri="")
    with pytest.raises(ValueError, match="keepalive"):
        LibvirtConfig(keepalive_interval=-1)


async def test_stamps_stay_bounded_and_a_reset_overtakes_reads_under_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import adapters.libvirt.adapter as module

    monkeypatch.setattr(module, "_STAMPS_KEPT", 3)
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    async with LibvirtAdapter(LibvirtConfig(uri=f"test://{node}", cache_ttl=30)) as lv:
        state = await lv.describe(T)
        stamp = lv._stamp("web-1")  # a read of web-1 starts ...
        for n in range(10):  # ... while domains come and go
            lv._drop_entry(f"gone-{n}")
        assert len(lv._stamps) <= 3
        lv._keep_if("web-1", stamp, 0.0, state)
        assert "web-1" not in lv._cache  # the reset dropped it, and overtook that read
        lv._keep_if("web-1", lv._stamp("web-1"), 0.0, state)
        assert "web-1" in lv._cache


@pytest.mark.parametrize(("verb", "params", "calls"), [
    ("reboot", {}, 1),  # acts whatever the state: not made again, its effect unknown
    ("resize", {"vcpus": 3}, 2),  # re-reads the state first: made again, safely
])  # fmt: skip
async def test_a_call_cut_off_by_a_lost_connection_is_retried_only_if_it_checks_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verb: str, params: dict[str, Any],
    calls: int,
):  # fmt: skip
    import adapters.libvirt.adapter as module

    node = tmp_path / "node.xml"
    node.write_text(NODE)
    async with LibvirtAdapter(LibvirtConfig(uri=f"test://{node}", cache_ttl=0)) as lv:
        plan = await lv.plan(act(verb, **params))
        real, made = lv._apply, 0

        def cut_off(conn: Any, p: Any) -> Any:
            nonlocal made
            made += 1
            result = real(conn, p)
            if made == 1:  # it reached the daemon, and then the answer was lost
                err = libvirt.libvirtError("connection lost")
                err.err = (libvirt.VIR_ERR_SYSTEM_ERROR, 0, "connection lost", 0, "", "", "",
                           0, 0)  # fmt: skip
                raise err
            return result

        monkeypatch.setattr(lv, "_apply", cut_off)
        monkeypatch.setattr(module, "_alive", lambda conn: False)
        if calls == 1:
            with pytest.raises(EffectUnknownError, match="whether it took effect is unknown"):
                await lv.execute(plan)
        else:
            out = await lv.execute(plan)
            assert out.after.vcpus == 3
        assert made == calls
