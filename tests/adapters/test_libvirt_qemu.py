"""The libvirt adapter against a real libvirtd and a real QEMU guest (TCG; KVM is not usable here).

The module starts ``virtlogd`` and ``libvirtd`` itself (no systemd), unless a
libvirtd already answers on the system socket, and stops what it started by
PID at the end, also on failure. QEMU's capability probe takes ~45 s per
define when ``/dev/kvm`` is root-only, so the setup gives it group ``kvm``
and mode 0660 (the packaging default on most distributions).

The guest is a Debian cloud kernel with a busybox initramfs (``_guest.py``):
it boots in a few seconds, powers off on the ACPI power button, and has a
qcow2 disk for internal snapshots.
"""

from __future__ import annotations

import asyncio
import grp
import os
import shutil
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import libvirt
import pytest
from _events import drain
from _guest import Guest, build_guest, load_order
from _process import stop

from adapters.action import Action, PowerState, Target
from adapters.errors import ConflictError
from adapters.libvirt import LibvirtAdapter, LibvirtConfig
from adapters.runtime import OutcomeStatus

URI = "qemu:///system"
SOCKET = Path("/run/libvirt/libvirt-sock")
WORK = Path("/var/lib/libvirt/images/govgate-tests")  # QEMU runs as libvirt-qemu: readable here
NAME = "govgate-test-guest"
T = Target("libvirt", NAME)

pytestmark = pytest.mark.slow


def _answers() -> bool:
    try:
        libvirt.open(URI).close()
    except libvirt.libvirtError:
        return False
    return True


class Daemons:
    """The daemons this module started (none if a libvirtd was already running)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, daemon: str) -> None:
        with (self.logs / f"{daemon}.log").open("ab") as out:
            self.procs[daemon] = subprocess.Popen([daemon], stdout=out, stderr=out)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while not _answers():
            assert time.monotonic() < deadline, f"libvirtd did not start; see {self.logs}"
            assert all(p.poll() is None for p in self.procs.values()), (
                f"a daemon exited; see {self.logs}"
            )
            time.sleep(0.2)

    def restart_libvirtd(self) -> None:
        assert "libvirtd" in self.procs, (
            "a libvirtd that these tests did not start is running; stop it to test restarts"
        )
        stop(self.procs["libvirtd"])
        self.start("libvirtd")
        self.wait_ready()

    def stop_all(self) -> None:
        for name in ("libvirtd", "virtlogd"):
            if name in self.procs:
                stop(self.procs[name])


@pytest.fixture(scope="module")
def libvirtd() -> Iterator[Daemons]:
    missing = [b for b in ("libvirtd", "virtlogd", "qemu-system-x86_64", "qemu-img")
               if shutil.which(b) is None]  # fmt: skip
    assert not missing, f"not installed: {missing} (scripts/setup.sh installs them)"
    kvm = Path("/dev/kvm")
    if kvm.exists() and not kvm.stat().st_mode & stat.S_IRGRP:
        os.chown(kvm, -1, grp.getgrnam("kvm").gr_gid)
        os.chmod(kvm, 0o660)
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    logs = Path("/tmp/govgate-libvirtd")  # the daemons' own logs, for failures
    logs.mkdir(exist_ok=True)
    daemons = Daemons(logs)
    try:
        if not _answers():
            daemons.start("virtlogd")
            daemons.start("libvirtd")
            daemons.wait_ready()
        yield daemons
    finally:
        daemons.stop_all()


@pytest.fixture(scope="module")
def guest(libvirtd: Daemons) -> Iterator[Guest]:
    WORK.mkdir(parents=True, exist_ok=True)
    WORK.chmod(0o755)
    yield build_guest(WORK)
    shutil.rmtree(WORK, ignore_errors=True)


@pytest.fixture
async def lv(guest: Guest) -> AsyncIterator[tuple[LibvirtAdapter, Path]]:
    serial = WORK / f"{NAME}.log"
    serial.unlink(missing_ok=True)
    adapter = LibvirtAdapter(LibvirtConfig(uri=URI, poll_interval=0.1))
    async with adapter:

        def define(conn: libvirt.virConnect) -> None:
            _remove(conn)
            conn.defineXML(guest.domain_xml(NAME, guest.new_disk(NAME), serial))

        await adapter._call("define", define)
        try:
            yield adapter, serial
        finally:
            await adapter._call("remove", _remove)


def _remove(conn: libvirt.virConnect) -> None:
    try:
        dom = conn.lookupByName(NAME)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    dom.undefineFlags(
        libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    )


def act(verb: str, **parameters: object) -> Action:
    return Action.from_json(
        {"verb": verb, "target": {"runtime": "libvirt", "resource": NAME},
         "parameters": parameters}
    )  # fmt: skip


async def _do(adapter: LibvirtAdapter, verb: str, **parameters: object):  # type: ignore[no-untyped-def]
    plan = await adapter.plan(act(verb, **parameters))
    return plan, await adapter.execute(plan)


async def _wait_for(serial: Path, text: str, seconds: float = 60) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if serial.exists() and text in serial.read_text(errors="replace"):
            return time.monotonic() - start
        await asyncio.sleep(0.2)
    raise AssertionError(f"{text!r} not on the guest's console after {seconds} s")


async def test_real_guest_through_its_life(lv: tuple[LibvirtAdapter, Path]):
    adapter, serial = lv
    events = adapter.events()
    s = await adapter.describe(T)
    assert s.power is PowerState.SHUTOFF
    assert (s.vcpus, s.max_vcpus, s.memory_mib, s.max_memory_mib) == (1, 2, 384, 512)
    assert s.disks == 1
    assert dict(s.labels) == {"environment": "test"}

    _, started = await _do(adapter, "start")
    assert started.status is OutcomeStatus.APPLIED
    await _wait_for(serial, "GOVGATE-GUEST-READY button=/dev/input/")
    assert "GOVGATE-GUEST-INSMOD-FAILED" not in serial.read_text(errors="replace")
    assert (await adapter.describe(T)).uptime_s is not None

    # Snapshot the running guest (memory and qcow2 disk), then change it.
    splan, snap = await _do(adapter, "snapshot", name="booted")
    assert snap.after.snapshots == 1
    assert (await adapter.reconcile(splan)).took_effect is True

    # vCPU hot-plug and the memory balloon, live and in the definition.
    rplan, resized = await _do(adapter, "resize", vcpus=2, memory_mib=256)
    assert resized.status is OutcomeStatus.APPLIED, resized
    assert resized.after.vcpus == 2
    # The balloon inflates at the guest's pace; libvirt reports what the guest has.
    for _ in range(100):
        if (await adapter.describe(T)).memory_mib == 256:
            break
        await asyncio.sleep(0.2)
    assert (await adapter.describe(T)).memory_mib == 256
    assert (await adapter.reconcile(rplan)).took_effect is True
    assert (await adapter.execute(rplan)).status is OutcomeStatus.ALREADY

    # Back to the snapshot: one vCPU again, as it was when taken.
    _, reverted = await _do(adapter, "revert", snapshot="booted")
    assert reverted.status is OutcomeStatus.APPLIED
    assert reverted.after.power is PowerState.RUNNING
    assert reverted.after.vcpus == 1

    # ACPI shutdown: the guest's init powers off when the button is pressed.
    t0 = time.monotonic()
    _, down = await _do(adapter, "shutdown", timeout_s=60)
    took = time.monotonic() - t0
    assert down.status is OutcomeStatus.APPLIED
    assert down.detail == "guest powered off (ACPI)"
    assert down.after.power is PowerState.SHUTOFF
    assert "GOVGATE-GUEST-POWEROFF" in serial.read_text(errors="replace")
    print(f"ACPI shutdown took {took:.1f} s")

    _, again = await _do(adapter, "start")
    assert again.status is OutcomeStatus.APPLIED
    _, destroyed = await _do(adapter, "destroy")
    assert destroyed.after.power is PowerState.SHUTOFF

    with pytest.raises(ConflictError, match="snapshots=delete"):
        await adapter.plan(act("delete"))
    dplan, deleted = await _do(adapter, "delete", snapshots="delete")
    assert deleted.after.power is PowerState.ABSENT
    assert (await adapter.reconcile(dplan)).took_effect is True

    seen = [(ev.event, ev.detail) for ev in await drain(events)]
    assert ("started", "booted") in seen
    assert ("stopped", "shutdown") in seen
    assert ("stopped", "destroyed") in seen
    assert ("undefined", "removed") in seen


async def test_reconnects_after_libvirtd_restarts(
    lv: tuple[LibvirtAdapter, Path], libvirtd: Daemons
):
    adapter, _ = lv
    assert (await adapter.describe(T)).power is PowerState.SHUTOFF
    libvirtd.restart_libvirtd()
    # The old connection is dead; the next call notices, reconnects once and succeeds.
    _, started = await _do(adapter, "start")
    assert started.status is OutcomeStatus.APPLIED
    assert adapter.reconnects == 1
    events = adapter.events()
    _, destroyed = await _do(adapter, "destroy")
    assert destroyed.after.power is PowerState.SHUTOFF
    seen = []  # events flow on the new connection
    while ("stopped", "destroyed") not in seen:
        ev = await asyncio.wait_for(anext(events), 5)
        seen.append((ev.event, ev.detail))
    assert seen[0] == ("shutdown", "host"), seen  # QEMU reports the host's power-off first


def test_the_guests_modules_load_after_the_modules_they_need() -> None:
    """Kernels move dependencies between modules (Debian's 6.1.192 made virtio need
    virtio_ring, which it had been the other way round): the order comes from each."""
    mods = {
        "virtio_balloon": b"\x7fELF\0license=GPL\0depends=virtio,virtio_ring\0",
        "virtio": b"\0depends=virtio_ring\0vermagic=6.1\0",
        "virtio_ring": b"\0depends=\0",
        "button": b"no modinfo at all",
    }
    order = load_order(mods)
    assert sorted(order) == sorted(mods)
    assert order.index("virtio_ring") < order.index("virtio") < order.index("virtio_balloon")
    with pytest.raises(ValueError, match="virtio_balloon needs virtio_mmio"):
        load_order({"virtio_balloon": b"\0depends=virtio_mmio\0"})
