"""The Kata adapter against a real containerd, with runc as the runtime.

Kata itself needs hardware virtualization that these machines do not offer,
so the same adapter runs with ``io.containerd.runc.v2``: everything govgate
does (containerd's API, rootfs snapshots, tasks, signals, pause, cgroup
limits) is the same; only the isolation under the task differs.

The module starts ``containerd`` with its root, state and socket in a
temporary directory and stops it by PID at the end, also on failure. The
images are built here from ``busybox-static`` as OCI archives and imported
with ``ctr``: nothing is pulled from a registry.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from _events import drain
from _process import stop

from adapters.action import Action, PowerState, Reversibility, Target
from adapters.errors import (
    AdapterTimeoutError,
    ConflictError,
    InvalidActionError,
    NotFoundError,
    UnavailableError,
    UnsupportedError,
)
from adapters.kata import KataAdapter, KataConfig
from adapters.kata._containerd.services.tasks.v1 import tasks_pb2 as tpb
from adapters.kata._containerd.services.tasks.v1 import tasks_pb2_grpc as tgrpc
from adapters.runtime import OutcomeStatus

pytestmark = pytest.mark.slow

NAMESPACE = "govgate-test"
IMAGE = "docker.io/govgate/busybox:test"  # stops on SIGTERM within a second
STUBBORN = "docker.io/govgate/busybox:stubborn"  # PID 1 that ignores SIGTERM
CGROUP_PARENT = "/govgate-test"
CGROUPS = Path("/sys/fs/cgroup")


def _blob(root: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def build_image(out: Path, name: str, cmd: list[str]) -> Path:
    """An OCI image archive: one layer with busybox and its applets, and ``cmd``."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        data = Path("/bin/busybox").read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in ("sh", "sleep", "echo", "cat", "ls", "true"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    raw = layer.getvalue()
    root = out / name.rsplit(":", 1)[-1]
    shutil.rmtree(root, ignore_errors=True)
    layer_digest, layer_size = _blob(root, gzip.compress(raw, mtime=0))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    }
    config_digest, config_size = _blob(root, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest, "size": layer_size}],
    }  # fmt: skip
    manifest_digest, manifest_size = _blob(root, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": manifest["mediaType"], "digest": manifest_digest,
                       "size": manifest_size,
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": name}}],
    }  # fmt: skip
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    archive = out / f"{root.name}.tar"
    with tarfile.open(archive, "w") as tar:
        for entry in ("oci-layout", "index.json", "blobs"):
            tar.add(root / entry, arcname=entry)
    return archive


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    missing = [b for b in ("containerd", "ctr", "runc") if shutil.which(b) is None]
    assert not missing, f"not installed: {missing} (scripts/setup.sh installs them)"
    root = tmp_path_factory.mktemp("containerd")
    sock = root / "containerd.sock"
    (root / "config.toml").write_text(
        f'version = 2\nroot = "{root}/root"\nstate = "{root}/state"\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
        f'[debug]\n  address = "{root}/debug.sock"\n'
        '[plugins."io.containerd.grpc.v1.cri"]\n  disable_tcp_service = true\n'
    )
    with (root / "containerd.log").open("wb") as log:
        proc = subprocess.Popen(
            ["containerd", "--config", str(root / "config.toml")], stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        ctr = ["ctr", "-a", str(sock), "-n", NAMESPACE]
        while subprocess.run([*ctr, "version"], capture_output=True, check=False).returncode:
            assert proc.poll() is None, f"containerd exited; see {root}/containerd.log"
            assert time.monotonic() < deadline, "containerd did not start"
            time.sleep(0.2)
        images = root / "images"
        images.mkdir()
        trap = "trap 'exit 0' TERM; while true; do sleep 0.2; done"
        for name, cmd in ((IMAGE, ["sh", "-c", trap]), (STUBBORN, ["sleep", "3600"])):
            archive = build_image(images, name, cmd)
            subprocess.run([*ctr, "images", "import", str(archive)], check=True,
                           capture_output=True)  # fmt: skip
        yield sock
    finally:
        stop(proc)
        # runc's shims outlive containerd by design; the tests' sandboxes are gone by now.
        subprocess.run(["pkill", "-f", f"containerd-shim-runc-v2 -namespace {NAMESPACE}"],
                       check=False)  # fmt: skip


@pytest.fixture
async def k(containerd: Path) -> AsyncIterator[KataAdapter]:
    config = KataConfig(
        address=str(containerd), namespace=NAMESPACE, runtime="io.containerd.runc.v2",
        cgroup_parent=CGROUP_PARENT, stop_timeout=5,
    )  # fmt: skip
    async with KataAdapter(config) as adapter:
        yield adapter
        for sandbox in ("sb-1", "sb-2"):  # leave nothing behind for the next test
            state = await adapter._describe_or_absent(Target("kata", sandbox))
            if state.power in (PowerState.RUNNING, PowerState.PAUSED):
                await run(adapter, act("destroy", sandbox))
            if state.power is not PowerState.ABSENT:
                await run(adapter, act("delete", sandbox))


def act(verb: str, sandbox: str = "sb-1", **parameters: Any) -> Action:
    return Action.from_json(
        {"verb": verb, "target": {"runtime": "kata", "resource": sandbox},
         "parameters": parameters}
    )  # fmt: skip


async def run(adapter: KataAdapter, action: Action) -> tuple[Any, Any]:
    plan = await adapter.plan(action)
    return plan, await adapter.execute(plan)


def cgroup(controller: str, sandbox: str, name: str) -> str:
    return (CGROUPS / controller / CGROUP_PARENT.strip("/") / sandbox / name).read_text().strip()


async def test_sandbox_lifecycle_with_cgroup_limits(k: KataAdapter):
    T = Target("kata", "sb-1")
    events = k.events()
    _, created = await run(k, act("create", image=IMAGE, vcpus=1, memory_mib=64))
    assert created.status is OutcomeStatus.APPLIED
    assert created.after.power is PowerState.SHUTOFF
    assert (created.after.vcpus, created.after.memory_mib) == (1, 64)

    splan, started = await run(k, act("start"))
    assert started.status is OutcomeStatus.APPLIED
    assert started.after.power is PowerState.RUNNING
    assert (await k.execute(splan)).status is OutcomeStatus.ALREADY
    assert int(cgroup("memory", "sb-1", "memory.limit_in_bytes")) == 64 << 20
    assert int(cgroup("cpu", "sb-1", "cpu.cfs_quota_us")) == 100_000

    rplan, resized = await run(k, act("resize", vcpus=2, memory_mib=128))
    assert resized.status is OutcomeStatus.APPLIED
    assert (resized.after.vcpus, resized.after.memory_mib) == (2, 128)
    assert int(cgroup("memory", "sb-1", "memory.limit_in_bytes")) == 128 << 20
    assert int(cgroup("cpu", "sb-1", "cpu.cfs_quota_us")) == 200_000
    assert (await k.reconcile(rplan)).took_effect is True
    back = await k.revert(resized)
    assert (back.after.vcpus, back.after.memory_mib) == (1, 64)
    assert int(cgroup("memory", "sb-1", "memory.limit_in_bytes")) == 64 << 20
    assert (await k.reconcile(rplan)).took_effect is False

    pplan, paused = await run(k, act("suspend"))
    assert paused.after.power is PowerState.PAUSED
    assert cgroup("freezer", "sb-1", "freezer.state") == "FROZEN"
    _, again = await run(k, act("suspend"))
    assert again.status is OutcomeStatus.ALREADY
    await k.revert(paused)
    assert (await k.describe(T)).power is PowerState.RUNNING
    assert cgroup("freezer", "sb-1", "freezer.state") == "THAWED"

    xplan, ran = await run(k, act("exec", command="echo hello > /tmp/greeting"))
    assert ran.detail == "command exited with status 0"
    assert xplan.reversibility is Reversibility.IRREVERSIBLE
    _, failed = await run(k, act("exec", command="exit 3"))
    assert failed.detail == "command exited with status 3"

    t0 = time.monotonic()
    dplan, down = await run(k, act("shutdown"))
    assert down.status is OutcomeStatus.APPLIED
    assert down.detail == "stopped (SIGTERM)"
    assert down.after.power is PowerState.SHUTOFF
    print(f"graceful stop took {time.monotonic() - t0:.2f} s")
    assert (await k.reconcile(dplan)).took_effect is True
    up = await k.revert(down)
    assert up.after.power is PowerState.RUNNING

    _, killed = await run(k, act("destroy"))
    assert killed.detail == "killed (SIGKILL)"
    with pytest.raises(ConflictError, match="cannot exec"):
        await k.plan(act("exec", command="true"))
    delplan, deleted = await run(k, act("delete"))
    assert deleted.after.power is PowerState.ABSENT
    assert (await k.execute(delplan)).status is OutcomeStatus.ALREADY
    assert (await k.reconcile(delplan)).took_effect is True

    seen = [ev.event for ev in await drain(events) if ev.target.resource == "sb-1"]
    for kind in ("defined", "started", "suspended", "resumed", "stopped", "undefined"):
        assert kind in seen, seen
    del pplan


async def test_stubborn_sandbox_times_out_then_is_forced(k: KataAdapter):
    await run(k, act("create", "sb-2", image=STUBBORN))
    await run(k, act("start", "sb-2"))
    with pytest.raises(AdapterTimeoutError, match="force=true"):
        await run(k, act("shutdown", "sb-2", timeout_s=0.5))
    assert (await k.describe(Target("kata", "sb-2"))).power is PowerState.RUNNING
    _, forced = await run(k, act("shutdown", "sb-2", timeout_s=0.5, force=True))
    assert "killed (SIGKILL)" in forced.detail
    assert forced.after.power is PowerState.SHUTOFF
    await run(k, act("delete", "sb-2"))


async def test_a_shutdown_wait_of_zero_kills_at_once_and_one_past_the_deadline_is_refused(
    k: KataAdapter,
):
    await run(k, act("create", "sb-3", image=STUBBORN))
    await run(k, act("start", "sb-3"))
    for wait in (106, 600):  # the wait, the kill and its own wait fit 120 s
        with pytest.raises(InvalidActionError, match="must be 0 to 105") as info:
            await k.plan(act("shutdown", "sb-3", timeout_s=wait, force=True))
        assert info.value.field == "action.parameters.timeout_s"
    t0 = time.monotonic()
    _, forced = await run(k, act("shutdown", "sb-3", timeout_s=0, force=True))
    assert "killed (SIGKILL)" in forced.detail
    assert time.monotonic() - t0 < 5  # not the 10 s default wait
    await run(k, act("delete", "sb-3"))


async def test_a_resize_of_a_sandbox_without_limits_reverts_to_none(k: KataAdapter):
    T = Target("kata", "sb-4")
    await run(k, act("create", "sb-4", image=IMAGE))
    await run(k, act("start", "sb-4"))
    assert ((await k.describe(T)).vcpus, (await k.describe(T)).memory_mib) == (None, None)
    plan, resized = await run(k, act("resize", "sb-4", vcpus=1, memory_mib=64))
    assert int(cgroup("memory", "sb-4", "memory.limit_in_bytes")) == 64 << 20
    back = await k.revert(resized)
    assert (back.after.vcpus, back.after.memory_mib) == (None, None), back.detail
    assert int(cgroup("cpu", "sb-4", "cpu.cfs_quota_us")) == -1
    assert int(cgroup("memory", "sb-4", "memory.limit_in_bytes")) > 1 << 40  # no limit
    assert (await k.reconcile(plan)).took_effect is False
    # Its process ended by itself (the task is stopped, not gone): the spec alone changes.
    await k._rpc("kill", tgrpc.TasksStub(k._ch()).Kill,
                 tpb.KillRequest(container_id="sb-4", signal=9, all=True))  # fmt: skip
    assert await k._wait_stopped("sb-4", 10)
    _, cold = await run(k, act("resize", "sb-4", vcpus=2))
    assert cold.after.vcpus == 2, cold.detail
    await run(k, act("delete", "sb-4"))


async def test_an_action_that_found_its_target_as_wanted_has_nothing_to_revert(k: KataAdapter):
    """A start of a running sandbox, a create of one that exists (another client made it
    between plan and execute): "undoing" them would stop or delete what was not ours."""
    create = await k.plan(act("create", "sb-5", image=IMAGE))
    await run(k, act("create", "sb-5", image=IMAGE))  # someone else got there first
    made_elsewhere = await k.execute(create)
    assert made_elsewhere.status is OutcomeStatus.ALREADY
    await run(k, act("start", "sb-5"))
    _, noop = await run(k, act("start", "sb-5"))
    assert noop.status is OutcomeStatus.ALREADY
    for outcome in (made_elsewhere, noop):
        with pytest.raises(UnsupportedError, match="nothing to undo"):
            await k.revert(outcome)
    assert (await k.describe(Target("kata", "sb-5"))).power is PowerState.RUNNING
    await run(k, act("destroy", "sb-5"))
    await run(k, act("delete", "sb-5"))


@pytest.mark.parametrize("cid", ["bad id", "a/../../x", "x" * 77, "-lead", "a..b"])
async def test_a_sandbox_id_containerd_refuses_is_refused_at_plan(k: KataAdapter, cid: str):
    with pytest.raises(InvalidActionError, match="sandbox id") as info:
        await k.plan(act("create", cid, image=IMAGE))
    assert info.value.field == "action.target.resource"


@pytest.mark.parametrize(
    ("action", "error", "needle"),
    [
        (act("create", "sb-2"), InvalidActionError, "needs an image"),
        (act("create", "sb-2", image="docker.io/no/such:image"), NotFoundError, "image"),
        (act("start", "ghost"), NotFoundError, "no sandbox 'ghost'"),
        (act("resize", "sb-2", vcpus=2, live=False), UnsupportedError, "together"),
        (act("suspend", "sb-2"), ConflictError, "shutoff"),
    ],
    ids=["no-image", "unknown-image", "unknown-sandbox", "config-only", "pause-stopped"],
)
async def test_impossible_requests_are_refused_at_plan(
    k: KataAdapter, action: Action, error: type[Exception], needle: str
):
    if action.verb.value != "create":
        await run(k, act("create", "sb-2", image=IMAGE))
    with pytest.raises(error, match=needle):
        await k.plan(action)


async def test_delete_refuses_a_running_sandbox(k: KataAdapter):
    await run(k, act("create", "sb-2", image=IMAGE))
    await run(k, act("start", "sb-2"))
    with pytest.raises(ConflictError, match="stop it first"):
        await k.plan(act("delete", "sb-2"))


async def test_unreachable_containerd_is_unavailable(tmp_path: Path):
    adapter = KataAdapter(KataConfig(address=str(tmp_path / "none.sock")))
    with pytest.raises(UnavailableError, match="does not answer"):
        await adapter.open()
    await adapter.close()
