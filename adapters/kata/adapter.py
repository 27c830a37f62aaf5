"""The Kata Containers adapter: sandboxes through containerd's gRPC API.

A govgate sandbox is a containerd container whose task runs under the
configured runtime: ``io.containerd.kata.v2`` in production, where each
sandbox is a lightweight VM. Kata needs hardware virtualization, which the
project's test machines do not offer, so the tests drive the very same
adapter with ``io.containerd.runc.v2`` (``docs/adapters.md``).

The adapter speaks containerd's API directly (stubs generated from
containerd's own .proto files by ``scripts/gen-containerd-stubs.sh``), in one
containerd namespace, over grpc.aio: no threads, no ``ctr`` processes.

Verbs (``create`` needs an image already in containerd)::

    create    containers.Create + snapshots.Prepare (rootfs) + tasks.Create
    start     tasks.Start (a stopped task is deleted and created again first)
    shutdown  tasks.Kill SIGTERM, wait up to timeout_s, then SIGKILL if force=true
    destroy   tasks.Kill SIGKILL
    suspend   tasks.Pause        resume  tasks.Resume
    resize    tasks.Update (CPU quota from vcpus, memory limit) + the container's spec
    delete    tasks.Delete + containers.Delete + snapshots.Remove (refused while running)
    exec      tasks.Exec + Start + Wait ("sh -c command"), reports the exit status

Example::

    async with KataAdapter(KataConfig(address="/run/containerd/containerd.sock")) as k:
        outcome = await k.execute(await k.plan(action))
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, field_mask_pb2

from adapters.action import Action, PowerState, RuntimeState, Target, Verb
from adapters.errors import (
    AdapterError,
    AdapterTimeoutError,
    ConflictError,
    InvalidActionError,
    NotFoundError,
    UnavailableError,
    UnsupportedError,
)
from adapters.kata._containerd.events import container_pb2 as container_events
from adapters.kata._containerd.events import task_pb2 as task_events
from adapters.kata._containerd.services.containers.v1 import containers_pb2 as cpb
from adapters.kata._containerd.services.containers.v1 import containers_pb2_grpc as cgrpc
from adapters.kata._containerd.services.content.v1 import content_pb2 as contentpb
from adapters.kata._containerd.services.content.v1 import content_pb2_grpc as contentgrpc
from adapters.kata._containerd.services.events.v1 import events_pb2 as epb
from adapters.kata._containerd.services.events.v1 import events_pb2_grpc as egrpc
from adapters.kata._containerd.services.images.v1 import images_pb2 as ipb
from adapters.kata._containerd.services.images.v1 import images_pb2_grpc as igrpc
from adapters.kata._containerd.services.snapshots.v1 import snapshots_pb2 as spb
from adapters.kata._containerd.services.snapshots.v1 import snapshots_pb2_grpc as sgrpc
from adapters.kata._containerd.services.tasks.v1 import tasks_pb2 as tpb
from adapters.kata._containerd.services.tasks.v1 import tasks_pb2_grpc as tgrpc
from adapters.kata._containerd.types.task import task_pb2 as task_types
from adapters.kata._spec import oci_spec
from adapters.runtime import (
    Deadlines,
    LifecycleEvent,
    Outcome,
    OutcomeStatus,
    Plan,
    RuntimeAdapter,
)

__all__ = ["LABEL_PREFIX", "KataAdapter", "KataConfig"]

SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
RESOURCES_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
PROCESS_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Process"
LABEL_PREFIX = "govgate.label/"  # container labels under this prefix are govgate labels
CPU_PERIOD = 100_000  # microseconds; vcpus N means a quota of N periods
_MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_STATUS = {
    task_types.Status.RUNNING: PowerState.RUNNING,
    task_types.Status.PAUSED: PowerState.PAUSED,
    task_types.Status.PAUSING: PowerState.PAUSED,
    task_types.Status.CREATED: PowerState.SHUTOFF,
    task_types.Status.STOPPED: PowerState.SHUTOFF,
}
_TOPICS = {
    "/tasks/start": ("started", "start"),
    "/tasks/exit": ("stopped", "exit"),
    "/tasks/paused": ("suspended", "paused"),
    "/tasks/resumed": ("resumed", "resumed"),
    "/containers/create": ("defined", "added"),
    "/containers/delete": ("undefined", "removed"),
}
_EVENT_TYPES = {
    "containerd.events.TaskStart": task_events.TaskStart,
    "containerd.events.TaskExit": task_events.TaskExit,
    "containerd.events.TaskPaused": task_events.TaskPaused,
    "containerd.events.TaskResumed": task_events.TaskResumed,
    "containerd.events.ContainerCreate": container_events.ContainerCreate,
    "containerd.events.ContainerDelete": container_events.ContainerDelete,
}
_BY_CODE: dict[grpc.StatusCode, type[AdapterError]] = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: ConflictError,
    grpc.StatusCode.FAILED_PRECONDITION: ConflictError,
    grpc.StatusCode.UNIMPLEMENTED: UnsupportedError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidActionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: AdapterTimeoutError,
}


@dataclass(frozen=True)
class KataConfig:
    address: str = "/run/containerd/containerd.sock"  # containerd's gRPC socket
    namespace: str = "govgate"
    runtime: str = "io.containerd.kata.v2"  # tests: io.containerd.runc.v2
    snapshotter: str = "overlayfs"
    cgroup_parent: str = "/govgate"  # cgroupsPath is <parent>/<sandbox id>
    poll_interval: float = 0.05
    stop_timeout: float = 10.0  # default wait for a graceful stop

    def __post_init__(self) -> None:
        if not self.address or not self.namespace or not self.runtime:
            raise ValueError("address, namespace and runtime are required")
        if self.poll_interval <= 0 or self.stop_timeout <= 0:
            raise ValueError("poll_interval and stop_timeout must be > 0")


# A task that has a process (paused or not): what tasks.Update and Kill can act on.
_TASK_ALIVE = (task_types.Status.RUNNING, task_types.Status.PAUSED)

# containerd's identifier rule (its identifiers package): what it would refuse later.
_ID = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")
_MAX_ID = 76


def _check_id(cid: str) -> None:
    """Refuse at plan a sandbox id containerd would refuse at execute."""
    if not _ID.fullmatch(cid) or len(cid) > _MAX_ID:
        raise InvalidActionError(
            f"a sandbox id is at most {_MAX_ID} letters and digits, joined by single '.', "
            "'_' or '-'",
            field="action.target.resource",
        )


def _err(e: grpc.aio.AioRpcError, what: str) -> AdapterError:
    kind = _BY_CODE.get(e.code(), AdapterError)
    return kind(f"{what}: {e.details() or e.code().name}")


class KataAdapter(RuntimeAdapter):
    runtime = "kata"

    def __init__(self, config: KataConfig | None = None, deadlines: Deadlines | None = None):
        super().__init__(deadlines)
        self.config = config or KataConfig()
        self._channel: grpc.aio.Channel | None = None
        self._md = (("containerd-namespace", self.config.namespace),)
        self._subscriptions: set[asyncio.Task[None]] = set()

    # -- connection --------------------------------------------------------------------

    def _ch(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(f"unix://{self.config.address}")
        return self._channel

    async def _rpc(self, what: str, call: Any, request: Any) -> Any:
        try:
            return await call(request, metadata=self._md)
        except grpc.aio.AioRpcError as e:
            raise _err(e, what) from e

    async def _open(self) -> None:
        if not os.path.exists(self.config.address):
            raise UnavailableError(
                f"containerd does not answer at {self.config.address}: no socket"
            )
        try:
            # Inside the caller's deadline, so that this message, not a bare timeout, wins.
            await asyncio.wait_for(self._ch().channel_ready(), self.deadlines.describe * 0.8)
        except TimeoutError:
            raise UnavailableError(f"containerd does not answer at {self.config.address}") from None

    async def _close(self) -> None:
        for task in list(self._subscriptions):
            task.cancel()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    # -- describe ----------------------------------------------------------------------

    async def _container(self, cid: str) -> Any:
        stub = cgrpc.ContainersStub(self._ch())
        try:
            reply = await stub.Get(cpb.GetContainerRequest(id=cid), metadata=self._md)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFoundError(
                    f"no sandbox {cid!r} in namespace {self.config.namespace}"
                ) from e
            raise _err(e, f"describe kata/{cid}") from e
        return reply.container

    async def _task_status(self, cid: str) -> Any | None:
        stub = tgrpc.TasksStub(self._ch())
        try:
            reply = await stub.Get(tpb.GetRequest(container_id=cid), metadata=self._md)
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise _err(e, f"task of kata/{cid}") from e
        return reply.process.status

    async def _describe(self, target: Target) -> RuntimeState:
        container = await self._container(target.resource)
        status = await self._task_status(target.resource)
        spec = json.loads(container.spec.value or b"{}")
        res = spec.get("linux", {}).get("resources", {})
        quota, period = res.get("cpu", {}).get("quota"), res.get("cpu", {}).get("period")
        limit = res.get("memory", {}).get("limit")
        labels = {
            k[len(LABEL_PREFIX) :]: v
            for k, v in container.labels.items()
            if k.startswith(LABEL_PREFIX)
        }
        return RuntimeState(
            power=PowerState.SHUTOFF if status is None else _STATUS.get(status, PowerState.UNKNOWN),
            vcpus=math.ceil(quota / period) if quota and period and quota > 0 else None,
            memory_mib=limit // (1 << 20) if limit and limit > 0 else None,
            labels=labels,
            persistent=True,
        )

    # -- plan --------------------------------------------------------------------------

    async def _plan(
        self, action: Action, before: RuntimeState
    ) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        verb, power = action.verb, before.power
        undo: dict[str, Any] = {"power": power.value}
        if verb is Verb.CREATE:
            _check_id(action.target.resource)
            if power is not PowerState.ABSENT:
                raise ConflictError(f"sandbox {action.target.resource!r} already exists")
            image = action.param("image")
            if not image:
                raise InvalidActionError(
                    "a sandbox needs an image", field="action.parameters.image"
                )
            await self._image(str(image))  # refuse an unknown image now, not half-way
            return {"exists": True}, {}
        if power is PowerState.ABSENT:
            raise NotFoundError(f"no sandbox {action.target.resource!r}")
        match verb:
            case Verb.START:
                return {"power": "running"}, undo
            case Verb.SHUTDOWN | Verb.DESTROY:
                self._check_shutdown_wait(action, after_wait=15)  # the kill and its wait
                return {"power": "shutoff"}, undo
            case Verb.SUSPEND:
                if power not in (PowerState.RUNNING, PowerState.PAUSED):
                    raise ConflictError(f"cannot pause a sandbox that is {power}")
                return {"power": "paused"}, undo
            case Verb.RESUME:
                if power not in (PowerState.RUNNING, PowerState.PAUSED):
                    raise ConflictError(f"cannot resume a sandbox that is {power}")
                return {"power": "running"}, undo
            case Verb.RESIZE:
                if action.param("live") is False or action.param("config") is False:
                    raise UnsupportedError("a sandbox is resized live and in its spec together")
                vcpus, memory = action.int_param("vcpus"), action.int_param("memory_mib")
                desired = {"vcpus": vcpus, "memory_mib": memory}
                undo = {  # 0: no limit, which is what a revert puts back then
                    "vcpus": (before.vcpus or 0) if vcpus else None,
                    "memory_mib": (before.memory_mib or 0) if memory else None,
                }
                return desired, undo
            case Verb.DELETE:
                if power in (PowerState.RUNNING, PowerState.PAUSED):
                    raise ConflictError(
                        f"sandbox is {power}: stop it first (shutdown or destroy are governed "
                        "actions of their own)"
                    )
                return {"exists": False}, {}
            case Verb.EXEC:
                if power is not PowerState.RUNNING:
                    raise ConflictError(f"cannot exec in a sandbox that is {power}")
                return {}, {}
        raise UnsupportedError(f"verb {verb} is not supported by the Kata adapter")

    # -- images ------------------------------------------------------------------------

    async def _read_blob(self, digest: str) -> bytes:
        stub = contentgrpc.ContentStub(self._ch())
        chunks = []
        try:
            async for part in stub.Read(
                contentpb.ReadContentRequest(digest=digest), metadata=self._md
            ):
                chunks.append(part.data)
        except grpc.aio.AioRpcError as e:
            raise _err(e, f"read {digest[:19]}") from e
        return b"".join(chunks)

    async def _image(self, name: str) -> tuple[str, dict[str, Any]]:
        """(chain id of the image's rootfs, the image config) for an image in containerd."""
        reply = await self._rpc(
            f"image {name}", igrpc.ImagesStub(self._ch()).Get, ipb.GetImageRequest(name=name)
        )
        desc = reply.image.target
        manifest = json.loads(await self._read_blob(desc.digest))
        if desc.media_type not in _MANIFEST_TYPES:  # an index: take the linux/amd64 entry
            entry = next(
                (
                    m
                    for m in manifest.get("manifests", [])
                    if m.get("platform", {}).get("architecture") in ("amd64", None)
                ),
                None,
            )
            if entry is None:
                raise UnsupportedError(f"image {name} has no linux/amd64 manifest")
            manifest = json.loads(await self._read_blob(entry["digest"]))
        config = json.loads(await self._read_blob(manifest["config"]["digest"]))
        chain = ""
        for diff_id in config["rootfs"]["diff_ids"]:
            chain = (
                diff_id
                if not chain
                else ("sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest())
            )
        return chain, config

    # -- execute -----------------------------------------------------------------------

    async def _execute(self, plan: Plan) -> Outcome:
        action = plan.action
        cid = action.target.resource
        verb = action.verb
        tasks = tgrpc.TasksStub(self._ch())
        what = f"{verb} kata/{cid}"
        status = None if verb is Verb.CREATE else await self._task_status(cid)
        power = PowerState.SHUTOFF if status is None else _STATUS.get(status, PowerState.UNKNOWN)
        applied, detail = True, ""
        match verb:
            case Verb.CREATE:
                applied, detail = await self._create(action)
            case Verb.START:
                if power is PowerState.RUNNING or power is PowerState.PAUSED:
                    applied, detail = False, f"sandbox was already {power}"
                else:
                    if status is not None:  # a stopped or created-but-stale task
                        await self._delete_task(cid)
                    await self._create_task(cid)
                    await self._rpc(what, tasks.Start, tpb.StartRequest(container_id=cid))
                    detail = "started"
            case Verb.SHUTDOWN | Verb.DESTROY:
                if power is not PowerState.RUNNING and power is not PowerState.PAUSED:
                    applied, detail = False, "sandbox was already stopped"
                else:
                    detail = await self._stop(plan, graceful=verb is Verb.SHUTDOWN)
            case Verb.SUSPEND:
                if power is PowerState.PAUSED:
                    applied, detail = False, "sandbox was already paused"
                else:
                    await self._rpc(what, tasks.Pause, tpb.PauseTaskRequest(container_id=cid))
                    detail = "paused"
            case Verb.RESUME:
                if power is PowerState.RUNNING:
                    applied, detail = False, "sandbox was already running"
                else:
                    await self._rpc(what, tasks.Resume, tpb.ResumeTaskRequest(container_id=cid))
                    detail = "resumed"
            case Verb.RESIZE:
                live = status in _TASK_ALIVE
                applied, detail = await self._resize(cid, plan.desired, live)
            case Verb.DELETE:
                applied, detail = await self._delete(cid)
            case Verb.EXEC:
                detail = await self._exec(cid, str(action.param("command")))
        after = await self._describe_or_absent(action.target)
        return Outcome(
            plan, OutcomeStatus.APPLIED if applied else OutcomeStatus.ALREADY, after, detail
        )

    async def _create(self, action: Action) -> tuple[bool, str]:
        cid = action.target.resource
        with contextlib.suppress(NotFoundError):
            await self._container(cid)
            return False, f"sandbox {cid} already existed"
        image = str(action.param("image"))
        chain, config = await self._image(image)
        spec = oci_spec(
            cid,
            config.get("config", {}),
            vcpus=action.int_param("vcpus"),
            memory_mib=action.int_param("memory_mib"),
            cpu_period=CPU_PERIOD,
            cgroups_path=f"{self.config.cgroup_parent}/{cid}",
        )
        container = cpb.Container(
            id=cid,
            image=image,
            runtime=cpb.Container.Runtime(name=self.config.runtime),
            spec=any_pb2.Any(type_url=SPEC_TYPE, value=json.dumps(spec).encode()),
            snapshotter=self.config.snapshotter,
            snapshot_key=cid,
            labels={"govgate.managed": "true"},
        )
        # The container first: it names the snapshot key, which makes the snapshot a
        # garbage-collection root the moment it exists. Prepared first, the snapshot
        # could be collected before the container record pointed at it.
        containers = cgrpc.ContainersStub(self._ch())
        await self._rpc(
            f"create kata/{cid}", containers.Create, cpb.CreateContainerRequest(container=container)
        )
        try:
            await self._rpc(
                f"rootfs for kata/{cid}",
                sgrpc.SnapshotsStub(self._ch()).Prepare,
                spb.PrepareSnapshotRequest(
                    snapshotter=self.config.snapshotter, key=cid, parent=chain
                ),
            )
        except AdapterError:
            with contextlib.suppress(AdapterError):
                await self._rpc("cleanup", containers.Delete, cpb.DeleteContainerRequest(id=cid))
            raise
        return True, f"sandbox {cid} created from {image} (runtime {self.config.runtime})"

    async def _create_task(self, cid: str) -> None:
        mounts = await self._rpc(
            f"rootfs of kata/{cid}",
            sgrpc.SnapshotsStub(self._ch()).Mounts,
            spb.MountsRequest(snapshotter=self.config.snapshotter, key=cid),
        )
        await self._rpc(
            f"create task kata/{cid}",
            tgrpc.TasksStub(self._ch()).Create,
            tpb.CreateTaskRequest(container_id=cid, rootfs=mounts.mounts),
        )

    async def _delete_task(self, cid: str) -> None:
        with contextlib.suppress(NotFoundError):
            await self._rpc(
                f"delete task kata/{cid}",
                tgrpc.TasksStub(self._ch()).Delete,
                tpb.DeleteTaskRequest(container_id=cid),
            )

    async def _stop(self, plan: Plan, *, graceful: bool) -> str:
        cid = plan.target.resource
        tasks = tgrpc.TasksStub(self._ch())
        wait = plan.action.param("timeout_s")  # 0 is a wait of none: kill at once, if asked
        timeout = self.config.stop_timeout if wait is None else float(wait)
        sig = signal.SIGTERM if graceful else signal.SIGKILL
        if (await self._task_status(cid)) == task_types.Status.PAUSED:
            await self._rpc("resume", tasks.Resume, tpb.ResumeTaskRequest(container_id=cid))
        await self._rpc(
            f"kill kata/{cid}",
            tasks.Kill,
            tpb.KillRequest(container_id=cid, signal=int(sig), all=True),
        )
        detail = "stopped (SIGTERM)" if graceful else "killed (SIGKILL)"
        if not await self._wait_stopped(cid, timeout if graceful else 10.0):
            if not graceful or plan.action.param("force") is not True:
                raise AdapterTimeoutError(
                    f"sandbox kata/{cid} did not stop within {timeout:g} s"
                    + (" (pass force=true to kill it)" if graceful else "")
                )
            await self._rpc(
                f"kill kata/{cid}",
                tasks.Kill,
                tpb.KillRequest(container_id=cid, signal=int(signal.SIGKILL), all=True),
            )
            await self._wait_stopped(cid, 10.0)
            detail = f"did not stop within {timeout:g} s; killed (SIGKILL)"
        await self._delete_task(cid)
        return detail

    async def _wait_stopped(self, cid: str, seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            status = await self._task_status(cid)
            if status is None or status == task_types.Status.STOPPED:
                return True
            await asyncio.sleep(self.config.poll_interval)
        return False

    async def _resize(self, cid: str, desired: Mapping[str, Any], live: bool) -> tuple[bool, str]:
        container = await self._container(cid)
        spec = json.loads(container.spec.value)
        res = spec.setdefault("linux", {}).setdefault("resources", {})
        changed = []
        lifted: dict[str, dict[str, int]] = {}  # limits removed: -1 tells the running task
        if desired["vcpus"] == 0:  # no limit: what the sandbox had before a resize
            cpu = res.get("cpu", {})
            if "quota" in cpu:
                res["cpu"] = {k: v for k, v in cpu.items() if k not in ("quota", "period")}
                lifted["cpu"] = {**res["cpu"], "quota": -1}
                changed.append("no vCPU limit")
        elif desired["vcpus"] is not None:
            quota = desired["vcpus"] * CPU_PERIOD
            if res.get("cpu", {}).get("quota") != quota:
                res["cpu"] = {**res.get("cpu", {}), "quota": quota, "period": CPU_PERIOD}
                changed.append(f"{desired['vcpus']} vCPUs")
        if desired["memory_mib"] == 0:
            memory = res.get("memory", {})
            if "limit" in memory:
                res["memory"] = {k: v for k, v in memory.items() if k != "limit"}
                lifted["memory"] = {**res["memory"], "limit": -1}
                changed.append("no memory limit")
        elif desired["memory_mib"] is not None:
            limit = desired["memory_mib"] << 20
            if res.get("memory", {}).get("limit") != limit:
                res["memory"] = {**res.get("memory", {}), "limit": limit}
                changed.append(f"{desired['memory_mib']} MiB")
        if not changed:
            return False, "sandbox already had that size"
        if live:
            await self._rpc(
                f"resize kata/{cid}",
                tgrpc.TasksStub(self._ch()).Update,
                tpb.UpdateTaskRequest(
                    container_id=cid,
                    resources=any_pb2.Any(
                        type_url=RESOURCES_TYPE, value=json.dumps({**res, **lifted}).encode()
                    ),
                ),
            )
        container.spec.value = json.dumps(spec).encode()
        await self._rpc(
            f"resize kata/{cid}",
            cgrpc.ContainersStub(self._ch()).Update,
            cpb.UpdateContainerRequest(
                container=container, update_mask=field_mask_pb2.FieldMask(paths=["spec"])
            ),
        )
        return True, "resized to " + ", ".join(changed) + (" (live and spec)" if live else "")

    async def _delete(self, cid: str) -> tuple[bool, str]:
        try:
            await self._container(cid)
        except NotFoundError:
            return False, "sandbox was already deleted"
        status = await self._task_status(cid)
        if status in _TASK_ALIVE:
            raise ConflictError("sandbox is running: stop it first")
        await self._delete_task(cid)
        await self._rpc(
            f"delete kata/{cid}",
            cgrpc.ContainersStub(self._ch()).Delete,
            cpb.DeleteContainerRequest(id=cid),
        )
        with contextlib.suppress(NotFoundError):
            await self._rpc(
                f"rootfs of kata/{cid}",
                sgrpc.SnapshotsStub(self._ch()).Remove,
                spb.RemoveSnapshotRequest(snapshotter=self.config.snapshotter, key=cid),
            )
        return True, "deleted"

    async def _exec(self, cid: str, command: str) -> str:
        tasks = tgrpc.TasksStub(self._ch())
        exec_id = f"govgate-{uuid.uuid4().hex[:12]}"
        process = {
            "args": ["sh", "-c", command],
            "cwd": "/",
            "env": ["PATH=/bin:/usr/bin"],
            "user": {"uid": 0, "gid": 0},
        }
        await self._rpc(
            f"exec in kata/{cid}",
            tasks.Exec,
            tpb.ExecProcessRequest(
                container_id=cid,
                exec_id=exec_id,
                spec=any_pb2.Any(type_url=PROCESS_TYPE, value=json.dumps(process).encode()),
            ),
        )
        await self._rpc(
            f"exec in kata/{cid}", tasks.Start, tpb.StartRequest(container_id=cid, exec_id=exec_id)
        )
        waited = await self._rpc(
            f"exec in kata/{cid}", tasks.Wait, tpb.WaitRequest(container_id=cid, exec_id=exec_id)
        )
        with contextlib.suppress(AdapterError):
            await self._rpc(
                "exec cleanup",
                tasks.DeleteProcess,
                tpb.DeleteProcessRequest(container_id=cid, exec_id=exec_id),
            )
        return f"command exited with status {waited.exit_status}"

    # -- revert and reconcile -----------------------------------------------------------

    async def _revert(self, outcome: Outcome) -> Outcome:
        plan = outcome.plan
        verb, cid, undo = plan.action.verb, plan.target.resource, plan.undo
        prior = PowerState(undo.get("power", "unknown"))
        tasks = tgrpc.TasksStub(self._ch())
        match verb:
            case Verb.CREATE:
                if await self._task_status(cid) in _TASK_ALIVE:
                    await self._stop(plan, graceful=False)
                await self._delete(cid)
                detail = "deleted the created sandbox"
            case Verb.START:
                if prior in (PowerState.RUNNING, PowerState.PAUSED):
                    detail = f"left {prior}: it was {prior} before the start"
                elif await self._task_status(cid) in _TASK_ALIVE:
                    await self._stop(plan, graceful=False)
                    detail = "stopped again"
                else:
                    detail = "already stopped"
            case Verb.SHUTDOWN | Verb.DESTROY:
                if prior in (PowerState.RUNNING, PowerState.PAUSED):
                    await self._delete_task(cid)
                    await self._create_task(cid)
                    await self._rpc("start", tasks.Start, tpb.StartRequest(container_id=cid))
                    if prior is PowerState.PAUSED:
                        await self._rpc(
                            "pause", tasks.Pause, tpb.PauseTaskRequest(container_id=cid)
                        )
                detail = f"back to {prior}"
            case Verb.SUSPEND:
                if prior is PowerState.RUNNING:
                    await self._rpc("resume", tasks.Resume, tpb.ResumeTaskRequest(container_id=cid))
                detail = f"back to {prior}"
            case Verb.RESUME:
                if prior is PowerState.PAUSED:
                    await self._rpc("pause", tasks.Pause, tpb.PauseTaskRequest(container_id=cid))
                detail = f"back to {prior}"
            case Verb.RESIZE:
                status = await self._task_status(cid)
                live = status in _TASK_ALIVE
                detail = (await self._resize(cid, undo, live))[1]
            case _:
                raise UnsupportedError(f"{verb} cannot be reverted by the Kata adapter")
        after = await self._describe_or_absent(plan.target)
        return Outcome(plan, OutcomeStatus.REVERTED, after, detail)

    # -- events ------------------------------------------------------------------------

    def _events(self) -> AsyncIterator[LifecycleEvent]:
        # Subscribe now, not on the first read: events from here on are kept.
        queue: asyncio.Queue[LifecycleEvent | BaseException] = asyncio.Queue(maxsize=10_000)
        ready = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._subscribe(queue, ready))

        async def read() -> AsyncIterator[LifecycleEvent]:
            try:
                await ready.wait()
                while True:
                    item = await queue.get()
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                task.cancel()

        self._subscriptions.add(task)
        task.add_done_callback(self._subscriptions.discard)
        return read()

    async def _subscribe(
        self, queue: asyncio.Queue[LifecycleEvent | BaseException], ready: asyncio.Event
    ) -> None:
        stub = egrpc.EventsStub(self._ch())
        request = epb.SubscribeRequest(
            filters=[f'namespace=="{self.config.namespace}",topic~="^/(tasks|containers)/"']
        )
        call = stub.Subscribe(request, metadata=self._md)
        try:
            await call.wait_for_connection()
            ready.set()
            async for envelope in call:
                kind = _TOPICS.get(envelope.topic)
                message = _EVENT_TYPES.get(envelope.event.type_url.rsplit("/", 1)[-1])
                if kind is None or message is None:
                    continue
                payload = message.FromString(envelope.event.value)
                cid = getattr(payload, "container_id", "") or getattr(payload, "id", "")
                if envelope.topic in ("/tasks/start", "/tasks/exit") and getattr(
                    payload, "id", cid
                ) not in ("", cid):
                    continue  # an exec'd process, not the sandbox's own task
                when = envelope.timestamp.ToDatetime(tzinfo=dt.UTC)
                ev = LifecycleEvent(Target("kata", cid), kind[0], kind[1], when)
                if queue.full():  # nobody is reading: keep the newest
                    queue.get_nowait()
                queue.put_nowait(ev)
        except grpc.aio.AioRpcError as e:
            ready.set()
            if e.code() != grpc.StatusCode.CANCELLED:
                queue.put_nowait(_err(e, "containerd events"))
