"""The libvirt adapter: domains on any libvirt URI, through libvirt-python.

One connection per adapter, opened lazily and reused. Every libvirt call
runs on the adapter's worker threads, never on the event loop. If the daemon
goes away, the next call finds the connection dead, reopens it once and
retries. That retry is safe because each verb re-reads the domain's state
before it acts. Remote connections get libvirt keepalive probes, and domain
lifecycle events are delivered through :meth:`events`. Both need libvirt's
event loop, which runs on one daemon thread per process.

Verbs, with the libvirt call and the permission each needs, are in
``docs/adapters.md``. In short:

* every verb re-reads the domain before acting, and a target already in the
  desired state is reported as ``already``;
* ``shutdown`` asks the guest (ACPI) and waits up to ``timeout_s``, then, if
  ``force`` is true, powers it off;
* ``resize`` changes the live domain when it runs and the persistent
  definition when it has one, unless ``live``/``config`` say otherwise; it
  refuses more vCPUs or memory than the domain's maximum;
* ``delete`` refuses a running domain (``destroy`` or ``shutdown`` is a
  governed action of its own) and, unless ``snapshots=delete``, a domain with
  snapshots; it always removes a managed-save image (it restores nothing once
  the definition is gone) and keeps NVRAM files;
* ``migrate`` reports ``UnsupportedError`` where the driver cannot migrate
  (the test driver never can).

Example::

    async with LibvirtAdapter(LibvirtConfig(uri="qemu:///system")) as lv:
        plan = await lv.plan(action)
        outcome = await lv.execute(plan)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import libvirt

from adapters.action import Action, PowerState, RuntimeState, Target, Verb
from adapters.errors import (
    AdapterTimeoutError,
    ConflictError,
    EffectUnknownError,
    InvalidActionError,
    NotFoundError,
    UnavailableError,
    UnsupportedError,
)
from adapters.libvirt._errors import CONNECTION_LOST, translate
from adapters.libvirt._xml import (
    LABELS_NS,
    LABELS_PREFIX,
    domain_xml,
    labels_xml,
    read_domain,
    snapshot_xml,
)
from adapters.runtime import (
    Deadlines,
    LifecycleEvent,
    Outcome,
    OutcomeStatus,
    Plan,
    Reconciliation,
    RuntimeAdapter,
)

__all__ = ["LibvirtAdapter", "LibvirtConfig"]

T = TypeVar("T")
# libvirt-python ships no type information: its objects are Any to mypy.
Dom: TypeAlias = Any
Conn: TypeAlias = Any

# Verbs that act whatever the domain's state (no "already" check): a call cut off by a
# lost connection is not made again, and its outcome is unknown.
_ONCE_ONLY = frozenset({Verb.REBOOT, Verb.RESET, Verb.REVERT, Verb.MIGRATE})
_log = logging.getLogger(__name__)
_CLOSE_WAIT = 5.0  # seconds a close waits for the connection to close
_STAMPS_KEPT = 10_000  # domain names and UUIDs stamped (see LibvirtAdapter._drop_entry)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_POWER = {
    libvirt.VIR_DOMAIN_NOSTATE: PowerState.UNKNOWN,
    libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.RUNNING,  # shutting down: still running
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.PMSUSPENDED,
}
_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
# Why a domain started, stopped or was suspended (the event's detail code), in words.
_DETAILS = {
    "started": ("booted", "migrated", "restored", "from-snapshot", "wakeup"),
    "stopped": ("shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
                "from-snapshot"),
    "defined": ("added", "updated", "renamed", "from-snapshot"),
    "shutdown": ("finished", "guest", "host"),
    "undefined": ("removed", "renamed"),
    "suspended": ("paused", "migrated", "io-error", "watchdog", "restored", "from-snapshot",
                  "api-error", "postcopy", "postcopy-failed"),
}  # fmt: skip
# Events after which a cached describe of the domain is stale.
_INVALIDATING_EVENTS = (
    libvirt.VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE,
    libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED,
    libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
    libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE,
    libvirt.VIR_DOMAIN_EVENT_ID_TUNABLE,
    libvirt.VIR_DOMAIN_EVENT_ID_REBOOT,
)
_LIVE = (PowerState.RUNNING, PowerState.PAUSED, PowerState.PMSUSPENDED)
_AFFECT_LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
_AFFECT_CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG


@dataclass(frozen=True)
class LibvirtConfig:
    uri: str = "test:///default"
    keepalive_interval: int = 5  # seconds between probes on remote connections; 0: off
    keepalive_count: int = 3  # unanswered probes before the connection counts as dead
    shutdown_timeout: float = 60.0  # default wait for an ACPI shutdown
    poll_interval: float = 0.1  # how often a waiting shutdown re-reads the state
    domain_type: str = ""  # for create: "kvm", "qemu", ...; "" picks from the driver
    workers: int = 4  # threads for libvirt calls
    # Seconds a described state is reused while the connection has events for every
    # change describe reports (lifecycle, balloon, devices, metadata, tunables); each
    # such event, and each action of this adapter, drops the target's entry. 0: off.
    cache_ttl: float = 1.0
    # Directories a created domain's disk image may be in: an engine must not hand a
    # VM any file of the host (/etc/shadow as a disk). Absolute; subdirectories count.
    image_dirs: tuple[str, ...] = ("/var/lib/libvirt/images",)

    def __post_init__(self) -> None:
        for name in ("uri", "domain_type"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string")
        for name in ("keepalive_interval", "keepalive_count", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be a whole number")
        for name in ("shutdown_timeout", "poll_interval", "cache_ttl"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
                raise ValueError(f"{name} must be a number")
        dirs = self.image_dirs
        if isinstance(dirs, str) or not all(isinstance(d, str) for d in dirs):
            raise ValueError("image_dirs must be a list of directories")
        if not all(os.path.isabs(d) for d in dirs):
            raise ValueError("image_dirs must be absolute paths")
        object.__setattr__(self, "image_dirs", tuple(os.path.normpath(d) for d in dirs))
        if not self.uri or "\n" in self.uri:
            raise ValueError("uri must be a libvirt connection URI")
        if self.keepalive_interval < 0 or self.keepalive_count < 0 or self.workers < 1:
            raise ValueError("keepalive settings must be >= 0 and workers >= 1")
        if self.cache_ttl < 0:
            raise ValueError("cache_ttl must be >= 0")
        if self.shutdown_timeout <= 0 or self.poll_interval <= 0:
            raise ValueError("shutdown_timeout and poll_interval must be > 0")


class _EventThread:
    """libvirt's default event loop on one daemon thread, started once per process.

    Keepalive probes and domain events need it; it must be registered before
    the first connection is opened.
    """

    _lock = threading.Lock()
    _started = False

    @classmethod
    def ensure(cls) -> None:
        with cls._lock:
            if cls._started:
                return
            libvirt.virEventRegisterDefaultImpl()
            threading.Thread(target=cls._run, name="govgate-libvirt-events", daemon=True).start()
            cls._started = True

    @staticmethod
    def _run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr unless a handler is set; we raise them instead."""


class LibvirtAdapter(RuntimeAdapter):
    runtime = "libvirt"

    def __init__(self, config: LibvirtConfig | None = None, deadlines: Deadlines | None = None):
        super().__init__(deadlines)
        self.config = config or LibvirtConfig()
        self._executor = ThreadPoolExecutor(self.config.workers, "govgate-libvirt")
        self._conn: Conn | None = None
        self._conn_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: set[asyncio.Queue[LifecycleEvent]] = set()
        self._started_at: dict[str, float] = {}  # domain name -> monotonic start, from events
        self.reconnects = 0
        # Describe results, by resource, while events announce every change to them.
        self._cache: dict[str, tuple[float, RuntimeState]] = {}
        self._saved_vcpus: dict[str, int] = {}  # as of each target's last read (describe)
        self._cache_ok = False
        self.cache_hits = 0
        # What dropped an entry also stamps it (and, for everything, ``_stamp_all``): a read
        # is cached only if its resource's stamps are the ones it saw before it read. A read
        # that a change or an event overtook would otherwise put back what they dropped.
        # Events drop entries on libvirt's event thread: one lock for drops and stores.
        self._stamps: dict[str, int] = {}
        self._stamp_all = 0
        self._ticks = itertools.count(1)
        self._cache_lock = threading.Lock()

    # -- connection --------------------------------------------------------------------

    async def _open(self) -> None:
        await self._call("connect", lambda conn: None)

    async def _close(self) -> None:
        """Close the connection, on a thread of its own, and wait at most
        :data:`_CLOSE_WAIT` for it: every worker thread may be stuck in a hung libvirtd,
        and a gateway stopping must not wait behind them (its ledger is closed next)."""
        with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            loop = asyncio.get_running_loop()
            closed: asyncio.Future[None] = loop.create_future()

            def done() -> None:
                if not closed.done():
                    closed.set_result(None)

            def close() -> None:
                self._close_conn(conn)
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(done)

            threading.Thread(target=close, name="govgate-libvirt-close", daemon=True).start()
            try:
                await asyncio.wait_for(asyncio.shield(closed), _CLOSE_WAIT)
            except TimeoutError:
                _log.warning("the libvirt connection did not close within %g s", _CLOSE_WAIT)
        self._executor.shutdown(wait=False)

    @staticmethod
    def _close_conn(conn: Conn) -> None:
        with contextlib.suppress(libvirt.libvirtError):  # a dead one has nothing to release
            conn.close()

    def _connection(self) -> Conn:
        with self._conn_lock:
            if self._conn is not None:
                return self._conn
            _EventThread.ensure()
            libvirt.registerErrorHandler(_quiet, None)
            try:
                conn = libvirt.open(self.config.uri)
            except libvirt.libvirtError as err:
                raise UnavailableError(
                    f"cannot connect to libvirt at {self.config.uri}: {err.get_error_message()}"
                ) from err
            if self.config.keepalive_interval and not conn.getURI().startswith("test:"):
                with contextlib.suppress(libvirt.libvirtError):  # local drivers have none
                    conn.setKeepAlive(self.config.keepalive_interval, self.config.keepalive_count)
            self._drop_entries()  # a new connection: nothing cached can be trusted
            self._cache_ok = self._subscribe(conn)
            self._conn = conn
            return conn

    def _subscribe(self, conn: Conn) -> bool:
        """Register for events; True if every change that describe reports is announced."""
        try:
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
            )
        except libvirt.libvirtError:
            return False  # a driver without events still works: describe reads every time
        complete = True
        for event_id in _INVALIDATING_EVENTS:
            try:
                conn.domainEventRegisterAny(None, event_id, self._on_change, None)
            except libvirt.libvirtError:
                complete = False  # not announced here: rely on the TTL alone for it
        return complete

    def _on_change(self, _conn: Conn, dom: Dom, *_rest: object) -> None:
        self._invalidate(dom)

    def _invalidate(self, dom: Dom) -> None:
        self._drop_entry(dom.name())
        self._drop_entry(dom.UUIDString())

    def _drop_entry(self, key: str) -> None:
        """Forget ``key``'s entry, and any read of it already under way (any thread)."""
        with self._cache_lock:
            self._drop_locked(key)

    def _drop_locked(self, key: str) -> None:
        self._stamps[key] = next(self._ticks)
        self._cache.pop(key, None)
        if len(self._stamps) > _STAMPS_KEPT:  # domains come and go: start afresh
            self._stamp_all = next(self._ticks)
            self._stamps.clear()
            self._cache.clear()

    def _drop_entries(self) -> None:
        with self._cache_lock:
            self._stamp_all = next(self._ticks)
            self._cache.clear()

    def _stamp(self, key: str) -> tuple[int, int]:
        with self._cache_lock:
            return self._stamp_all, self._stamps.get(key, 0)

    def _keep_if(self, key: str, stamp: tuple[int, int], read_at: float, state: RuntimeState,
                 *, drop: bool = False) -> None:  # fmt: skip
        """Cache ``state`` (read from ``read_at`` on) if nothing dropped ``key`` since
        ``stamp`` was taken; ``drop``: and, either way, overtake the reads under way."""
        with self._cache_lock:
            unseen = stamp == (self._stamp_all, self._stamps.get(key, 0))
            if drop:
                self._drop_locked(key)
            if unseen and self._cache_ok and self.config.cache_ttl > 0:
                self._cache[key] = (read_at, state)

    def _drop(self, conn: Conn) -> None:
        with self._conn_lock:
            if self._conn is conn:
                self._conn = None
                self.reconnects += 1
        self._close_conn(conn)

    def _blocking(self, what: str, fn: Callable[[Conn], T], retry: bool = True) -> T:
        conn = self._connection()
        try:
            return fn(conn)
        except libvirt.libvirtError as err:
            if err.get_error_code() not in CONNECTION_LOST or _alive(conn):
                raise translate(err, what) from err
            first = err
        # The daemon went away (restart, crash): reopen once and try again. ``retry``
        # only for what re-reads the state before acting, so that a retry never acts
        # twice; for the rest, the call may or may not have reached the daemon.
        self._drop(conn)
        if not retry:
            raise EffectUnknownError(
                f"{what}: the connection to libvirt was lost during the call; whether it "
                "took effect is unknown"
            ) from first
        try:
            return fn(self._connection())
        except libvirt.libvirtError as err:
            raise translate(err, what) from first

    async def _call(self, what: str, fn: Callable[[Conn], T], *, retry: bool = True) -> T:
        loop = asyncio.get_running_loop()
        self._loop = self._loop or loop
        return await loop.run_in_executor(self._executor, self._blocking, what, fn, retry)

    # -- events ------------------------------------------------------------------------

    def _on_lifecycle(self, conn: Conn, dom: Dom, event: int, detail: int, _opaque: object) -> None:
        name = dom.name()
        kind = _EVENTS.get(event, f"event-{event}")
        if kind == "started":
            self._started_at[name] = time.monotonic()
        elif kind in ("stopped", "undefined", "crashed"):
            self._started_at.pop(name, None)
        self._invalidate(dom)  # after the uptime is known: a read from now on has it
        names = _DETAILS.get(kind, ())
        why = names[detail] if 0 <= detail < len(names) else str(detail)
        ev = LifecycleEvent(Target("libvirt", name), kind, why, dt.datetime.now(dt.UTC))
        loop = self._loop
        if loop is not None and self._subscribers and not loop.is_closed():
            loop.call_soon_threadsafe(self._publish, ev)

    def _publish(self, ev: LifecycleEvent) -> None:
        for queue in self._subscribers:
            if queue.full():  # this reader is not keeping up: keep the newest
                queue.get_nowait()
            queue.put_nowait(ev)

    def _events(self) -> AsyncIterator[LifecycleEvent]:
        queue: asyncio.Queue[LifecycleEvent] = asyncio.Queue(maxsize=10_000)
        self._loop = self._loop or asyncio.get_running_loop()
        self._subscribers.add(queue)  # from now on: events before this call are not replayed

        async def read() -> AsyncIterator[LifecycleEvent]:
            try:
                await self._call("connect", lambda conn: None)
                while True:
                    yield await queue.get()
            finally:
                self._subscribers.discard(queue)

        return read()

    # -- describe ----------------------------------------------------------------------

    def _lookup(self, conn: Conn, target: Target) -> Dom:
        try:
            if _UUID.fullmatch(target.resource):
                return conn.lookupByUUIDString(target.resource)
            return conn.lookupByName(target.resource)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise NotFoundError(f"no domain {target.resource!r} at {conn.getURI()}") from err
            raise

    def _read_state(self, conn: Conn, target: Target) -> RuntimeState:
        dom = self._lookup(conn, target)
        state = self._state_of(dom, None if _UUID.fullmatch(target.resource) else target.resource)
        if state.persistent and state.power in _LIVE:
            # The next boot's vCPUs, read with the rest (one cheap call, no hop of its own):
            # a resize's plan needs them to go back to (see _plan).
            self._saved_vcpus[_cache_key(target.resource)] = int(dom.vcpusFlags(_AFFECT_CONFIG))
        return state

    def _state_of(self, dom: Dom, name: str | None = None) -> RuntimeState:
        """The domain's state (``name``: the domain's, when the caller knows it). Each call
        into libvirt releases and takes back the interpreter lock, which the event loop then
        waits for: this makes as few as it can."""
        state, max_kib, kib, nr_vcpus, _cpu = dom.info()  # the state is virDomainGetState's
        active = bool(dom.isActive())
        persistent = bool(dom.isPersistent())
        config_flags = _AFFECT_CONFIG if persistent or not active else _AFFECT_LIVE
        try:
            max_vcpus = dom.vcpusFlags(config_flags | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
        except libvirt.libvirtError:
            max_vcpus = None
        labels, disks = read_domain(dom.XMLDesc(0))  # one read and one parse for both
        started = self._started_at.get(name or dom.name()) if active else None
        return RuntimeState(
            power=_POWER.get(state, PowerState.UNKNOWN),
            vcpus=nr_vcpus,
            max_vcpus=max_vcpus,
            memory_mib=kib // 1024,
            max_memory_mib=max_kib // 1024,
            uptime_s=time.monotonic() - started if active and started is not None else None,
            snapshots=dom.snapshotNum(0),
            disks=disks,
            labels=labels,
            persistent=persistent,
        )

    async def _describe(self, target: Target, *, fresh: bool = False) -> RuntimeState:
        key = _cache_key(target.resource)
        hit = None if fresh else self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.config.cache_ttl:
            self.cache_hits += 1
            return hit[1]
        read_at, stamp = time.monotonic(), self._stamp(key)
        state = await self._call(f"describe {target}", lambda c: self._read_state(c, target))
        self._keep_if(key, stamp, read_at, state)
        return state

    def _forget(self, target: Target) -> None:
        """Drop what is cached about a target this adapter changes (or is about to)."""
        if _UUID.fullmatch(target.resource):
            self._drop_entries()  # it may be cached under its name too
        else:
            self._drop_entry(target.resource)

    async def set_labels(self, target: Target, labels: Mapping[str, str]) -> None:
        """Write the govgate labels into the domain's metadata (live and persistent)."""

        def write(conn: Conn) -> None:
            dom = self._lookup(conn, target)
            flags = _AFFECT_CONFIG if dom.isPersistent() else 0
            flags |= _AFFECT_LIVE if dom.isActive() else 0
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, labels_xml(labels), LABELS_PREFIX, LABELS_NS,
                flags or _AFFECT_CONFIG,
            )  # fmt: skip

        self._forget(target)
        await self._call(f"label {target}", write)

    # -- plan --------------------------------------------------------------------------

    async def _plan(
        self, action: Action, before: RuntimeState
    ) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        verb, power = action.verb, before.power
        undo: dict[str, Any] = {"power": power.value}
        if verb is Verb.CREATE:
            if power is not PowerState.ABSENT:
                raise ConflictError(f"domain {action.target.resource!r} is already defined")
            await self._check_create(action)
            return {"defined": True}, {}
        if power is PowerState.ABSENT:
            raise NotFoundError(f"no domain {action.target.resource!r}")
        match verb:
            case Verb.START | Verb.RESUME:
                if verb is Verb.RESUME and power not in (PowerState.PAUSED, PowerState.RUNNING):
                    raise ConflictError(f"cannot resume a domain that is {power}")
                return {"power": "running"}, undo
            case Verb.SHUTDOWN | Verb.DESTROY | Verb.SAVE:
                if verb is Verb.SAVE and not before.persistent:
                    raise ConflictError("a transient domain has no managed save")
                self._check_shutdown_wait(action, after_wait=5)  # the forced power-off
                return {"power": "shutoff"}, undo
            case Verb.REBOOT | Verb.RESET:
                if power is not PowerState.RUNNING:
                    raise ConflictError(f"cannot {verb} a domain that is {power}")
                return {}, {}
            case Verb.SUSPEND:
                if power not in (PowerState.RUNNING, PowerState.PAUSED):
                    raise ConflictError(f"cannot suspend a domain that is {power}")
                return {"power": "paused"}, undo
            case Verb.RESIZE:
                desired, resize_undo = self._plan_resize(action, before)
                if desired["config"] and power in _LIVE:
                    # The saved size may differ from the running one: keep it to go back to.
                    # The vCPUs come with the describe this plan follows; the memory (in
                    # the saved XML) only when it changes.
                    target = action.target
                    vcpus, memory = desired["vcpus"], desired["memory_mib"]
                    saved_vcpus = self._saved_vcpus.get(_cache_key(target.resource))
                    saved_memory = None
                    if memory is not None or (vcpus is not None and saved_vcpus is None):
                        saved_vcpus, saved_memory = await self._call(
                            f"saved size of {target}",
                            lambda c: _saved_size(self._lookup(c, target)),
                        )
                    resize_undo = {
                        **resize_undo,
                        "config_vcpus": saved_vcpus if vcpus is not None else None,
                        "config_memory_mib": saved_memory if memory is not None else None,
                    }
                return desired, resize_undo
            case Verb.SNAPSHOT:
                name = str(action.param("name") or f"govgate-{uuid.uuid4().hex[:12]}")
                if not _SNAPSHOT_NAME.fullmatch(name):
                    raise InvalidActionError(
                        "a snapshot name is 1 to 64 letters, digits, '.', '_' or '-', "
                        "starting with a letter or digit",
                        field="action.parameters.name",
                    )
                if await self._has_snapshot(action.target, name):
                    raise ConflictError(f"snapshot {name!r} already exists")
                return {"snapshot": name}, {"snapshot": name}
            case Verb.REVERT | Verb.SNAPSHOT_DELETE:
                name = str(action.param("snapshot"))
                if not await self._has_snapshot(action.target, name):
                    raise NotFoundError(
                        f"domain {action.target.resource!r} has no snapshot {name!r}"
                    )
                return {"snapshot": name}, {}
            case Verb.MIGRATE:
                uri = await self._call("uri", lambda c: c.getURI())
                if uri.startswith("test:"):
                    raise UnsupportedError("the libvirt test driver cannot migrate domains")
                return {"destination": str(action.param("destination"))}, {}
            case Verb.DELETE:
                if power in _LIVE:
                    raise ConflictError(
                        f"domain is {power}: stop it first (shutdown or destroy are governed "
                        "actions of their own)"
                    )
                policy = str(action.param("snapshots") or "refuse")
                if policy not in ("refuse", "delete"):
                    raise InvalidActionError(
                        "must be 'refuse' or 'delete'", field="action.parameters.snapshots"
                    )
                if (before.snapshots or 0) > 0 and policy == "refuse":
                    raise ConflictError(
                        f"domain has {before.snapshots} snapshot(s); pass snapshots=delete "
                        "to delete their metadata with it"
                    )
                return {"defined": False}, {}
        raise UnsupportedError(f"verb {verb} is not supported by the libvirt adapter")

    async def _check_create(self, action: Action) -> None:
        """A new domain's size within what the host offers, and its disk image in one of
        the configured image directories."""
        vcpus, memory = action.int_param("vcpus"), action.int_param("memory_mib")

        def host(conn: Conn) -> tuple[int, int]:
            kind = self.config.domain_type or None
            return int(conn.getMaxVcpus(kind)), int(conn.getInfo()[1])

        most_vcpus, host_mib = await self._call("the host's size", host)
        if vcpus is not None and not 1 <= vcpus <= most_vcpus:
            raise InvalidActionError(
                f"must be 1 to {most_vcpus} (the hypervisor's limit)",
                field="action.parameters.vcpus",
            )
        if memory is not None and not 16 <= memory <= host_mib:
            raise InvalidActionError(
                f"must be 16 to {host_mib} MiB (the host's memory)",
                field="action.parameters.memory_mib",
            )
        image = action.param("image")
        if image:
            path = str(image)
            inside = (
                os.path.isabs(path)
                and os.path.normpath(path) == path
                and any(
                    os.path.commonpath((d, path)) == d and path != d for d in self.config.image_dirs
                )
            )
            if not inside:
                where = ", ".join(self.config.image_dirs) or "none are configured"
                raise InvalidActionError(
                    f"{path!r} is not a normalised absolute path in an image directory ({where})",
                    field="action.parameters.image",
                )

    def _plan_resize(
        self, action: Action, before: RuntimeState
    ) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
        vcpus, memory = action.int_param("vcpus"), action.int_param("memory_mib")
        if vcpus is not None and before.max_vcpus is not None and vcpus > before.max_vcpus:
            raise InvalidActionError(
                f"{vcpus} vCPUs is more than the domain's maximum of {before.max_vcpus}",
                field="action.parameters.vcpus",
            )
        if (
            memory is not None
            and before.max_memory_mib is not None
            and (memory > before.max_memory_mib)
        ):
            raise InvalidActionError(
                f"{memory} MiB is more than the domain's maximum of {before.max_memory_mib} MiB",
                field="action.parameters.memory_mib",
            )
        active = before.power in _LIVE
        live = action.param("live")
        config = action.param("config")
        live = active if live is None else bool(live)
        config = bool(before.persistent) if config is None else bool(config)
        if live and not active:
            raise ConflictError("live=true, but the domain is not running")
        if config and not before.persistent:
            raise ConflictError("config=true, but the domain is transient (no persistent config)")
        if not (live or config):
            raise InvalidActionError(
                "nothing to change: live and config are both false", field="action.parameters"
            )
        desired = {"vcpus": vcpus, "memory_mib": memory, "live": live, "config": config}
        undo = {"vcpus": before.vcpus if vcpus is not None else None,
                "memory_mib": before.memory_mib if memory is not None else None,
                "live": live, "config": config}  # fmt: skip
        return desired, undo

    async def _has_snapshot(self, target: Target, name: str) -> bool:
        def check(conn: Conn) -> bool:
            return name in self._lookup(conn, target).snapshotListNames(0)

        return await self._call(f"snapshots of {target}", check)

    # -- execute -----------------------------------------------------------------------

    async def _execute(self, plan: Plan) -> Outcome:
        self._forget(plan.target)
        action = plan.action
        what = f"{action.verb} {action.target}"
        if action.verb is Verb.SHUTDOWN:
            return await self._shutdown(plan)
        key = _cache_key(action.target.resource)
        read_at, stamp = time.monotonic(), self._stamp(key)
        applied, detail, after = await self._call(
            what, lambda c: self._apply_and_read(c, plan), retry=action.verb not in _ONCE_ONLY
        )
        if after is None:
            return Outcome(plan, _status(applied), await self._describe_or_absent(action.target),
                           detail)  # fmt: skip
        if _UUID.fullmatch(key) or after.power is PowerState.ABSENT:
            self._forget(action.target)
        else:  # read after the change, in its job: kept unless an event came meanwhile
            self._keep_if(key, stamp, read_at, after, drop=True)  # drop: describes under way
        return Outcome(plan, _status(applied), after, detail)

    def _apply_and_read(self, conn: Conn, plan: Plan) -> tuple[bool, str, RuntimeState | None]:
        """:meth:`_apply`, then the state it left, in one job for the worker thread. A
        failed read gives None, to be read again on its own: a retry of this whole job
        after a lost connection would find the change made and call it ``already``."""
        applied, detail = self._apply(conn, plan)
        try:
            after: RuntimeState | None = self._read_state(conn, plan.action.target)
        except NotFoundError:
            after = RuntimeState(power=PowerState.ABSENT)
        except libvirt.libvirtError:
            after = None
        return applied, detail, after

    def _apply(self, conn: Conn, plan: Plan) -> tuple[bool, str]:
        """Do the verb unless the domain is already as desired. (applied?, detail)."""
        action, target = plan.action, plan.action.target
        verb = action.verb
        if verb is Verb.CREATE:
            return self._create(conn, action)
        try:
            dom = self._lookup(conn, target)
        except NotFoundError:
            if verb is Verb.DELETE:
                return False, "domain was already undefined"
            raise
        power = _POWER.get(dom.state()[0], PowerState.UNKNOWN)
        match verb:
            case Verb.START:
                if power in _LIVE:
                    return False, f"domain was already {power}"
                dom.create()
                return True, "started"
            case Verb.DESTROY:
                if not dom.isActive():
                    return False, "domain was already off"
                dom.destroy()
                return True, "powered off"
            case Verb.SAVE:
                if not dom.isActive():
                    if dom.hasManagedSaveImage(0):
                        return False, "domain was already saved"
                    raise ConflictError("domain is off and has no managed save to keep")
                dom.managedSave(0)
                return True, "memory saved to disk; start restores it"
            case Verb.REBOOT:
                dom.reboot(0)
                return True, "reboot requested"
            case Verb.RESET:
                dom.reset(0)
                return True, "reset"
            case Verb.SUSPEND:
                if power is PowerState.PAUSED:
                    return False, "domain was already paused"
                dom.suspend()
                return True, "paused"
            case Verb.RESUME:
                if power is PowerState.RUNNING:
                    return False, "domain was already running"
                dom.resume()
                return True, "resumed"
            case Verb.RESIZE:
                return self._resize(dom, plan.desired)
            case Verb.SNAPSHOT:
                name = plan.desired["snapshot"]
                if name in dom.snapshotListNames(0):
                    return False, f"snapshot {name} already exists"
                dom.snapshotCreateXML(snapshot_xml(name, str(action.param("description") or "")))
                return True, f"snapshot {name} taken"
            case Verb.REVERT:
                dom.revertToSnapshot(dom.snapshotLookupByName(plan.desired["snapshot"], 0), 0)
                return True, f"reverted to snapshot {plan.desired['snapshot']}"
            case Verb.SNAPSHOT_DELETE:
                name = plan.desired["snapshot"]
                if name not in dom.snapshotListNames(0):
                    return False, f"snapshot {name} was already gone"
                dom.snapshotLookupByName(name, 0).delete(0)
                return True, f"snapshot {name} deleted"
            case Verb.MIGRATE:
                flags = libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
                if action.param("live") is not False and dom.isActive():
                    flags |= libvirt.VIR_MIGRATE_LIVE
                dom.migrateToURI3(plan.desired["destination"], {}, flags)
                return True, f"migrated to {plan.desired['destination']}"
            case Verb.DELETE:
                if dom.isActive():
                    raise ConflictError("domain is running: stop it first")
                flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                if "<nvram" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE):
                    flags |= libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM  # UEFI variables stay
                if action.param("snapshots") == "delete":
                    flags |= libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                dom.undefineFlags(flags)
                return True, "undefined"
        raise UnsupportedError(f"verb {verb} is not supported by the libvirt adapter")

    def _resize(self, dom: Dom, desired: Mapping[str, Any]) -> tuple[bool, str]:
        # Live and persistent changes are made one at a time: some drivers refuse
        # both flags in one call, and a live change can fail where a config one works.
        changed = []
        vcpus, memory = desired["vcpus"], desired["memory_mib"]
        for where, flag in (("live", _AFFECT_LIVE), ("config", _AFFECT_CONFIG)):
            if not desired[where]:
                continue
            if vcpus is not None and dom.vcpusFlags(flag) != vcpus:
                dom.setVcpusFlags(vcpus, flag)
                changed.append(f"{vcpus} vCPUs ({where})")
            if memory is not None and self._memory_mib(dom, flag == _AFFECT_LIVE) != memory:
                dom.setMemoryFlags(memory * 1024, flag)
                changed.append(f"{memory} MiB ({where})")
        if not changed:
            return False, "domain already had that size"
        return True, "resized to " + ", ".join(changed)

    @staticmethod
    def _memory_mib(dom: Dom, live: bool) -> int:
        if live:
            return int(dom.info()[2]) // 1024
        root = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        m = re.search(r"<currentMemory unit='KiB'>(\d+)</currentMemory>", root)
        return int(m.group(1)) // 1024 if m else -1

    def _create(self, conn: Conn, action: Action) -> tuple[bool, str]:
        name = action.target.resource
        try:
            self._lookup(conn, action.target)
            return False, f"domain {name} was already defined"
        except NotFoundError:
            pass
        kind = self.config.domain_type or ("test" if conn.getType() == "TEST" else "qemu")
        xml = domain_xml(
            name,
            domain_type=kind,
            vcpus=action.int_param("vcpus") or 1,
            memory_mib=action.int_param("memory_mib") or 512,
            image=str(action.param("image")) if action.param("image") else None,
        )
        conn.defineXML(xml)
        return True, f"defined {kind} domain {name}"

    async def _shutdown(self, plan: Plan) -> Outcome:
        """ACPI shutdown, waiting for the guest; forced off after the timeout if asked."""
        action, target = plan.action, plan.action.target
        wait = action.param("timeout_s")  # 0 is a wait of none: force at once, if asked
        timeout = self.config.shutdown_timeout if wait is None else float(wait)

        def request(conn: Conn) -> bool:
            dom = self._lookup(conn, target)
            if not dom.isActive():
                return False
            dom.shutdownFlags(0)  # the hypervisor's default: ACPI power button on QEMU
            return True

        if not await self._call(f"shutdown {target}", request):
            after = await self._describe_or_absent(target)
            return Outcome(plan, OutcomeStatus.ALREADY, after, "domain was already off")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            after = await self._describe_or_absent(target)
            if after.power not in _LIVE:
                return Outcome(plan, OutcomeStatus.APPLIED, after, "guest powered off (ACPI)")
            await asyncio.sleep(self.config.poll_interval)
        if action.param("force") is True:
            await self._call(f"destroy {target}", lambda c: self._lookup(c, target).destroy())
            after = await self._describe_or_absent(target)
            return Outcome(
                plan, OutcomeStatus.APPLIED, after,
                f"guest did not power off within {timeout:g} s; forced off",
            )  # fmt: skip
        raise AdapterTimeoutError(
            f"guest did not power off within {timeout:g} s (pass force=true to force it); "
            "the request stands and the guest may still power off"
        )

    async def _describe_or_absent(self, target: Target) -> RuntimeState:
        """A fresh read (never the cache): for states after an action and for polling."""
        self._forget(target)
        try:
            return await self._describe(target, fresh=True)
        except NotFoundError:
            return RuntimeState(power=PowerState.ABSENT)

    # -- revert ------------------------------------------------------------------------

    async def _revert(self, outcome: Outcome) -> Outcome:
        self._forget(outcome.plan.target)
        plan = outcome.plan
        verb, target, undo = plan.action.verb, plan.target, plan.undo
        prior = PowerState(undo.get("power", "unknown"))

        def restore(conn: Conn) -> str:
            if verb is Verb.CREATE:
                dom = self._lookup(conn, target)
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
                return "undefined the created domain"
            dom = self._lookup(conn, target)
            match verb:
                case Verb.START:
                    if prior in _LIVE:  # it was running (or paused) before: leave it be
                        return f"left {prior}: it was {prior} before the start"
                    if dom.isActive():
                        dom.destroy()
                    return "powered off again"
                case Verb.SHUTDOWN | Verb.DESTROY | Verb.SAVE:
                    if prior in _LIVE and not dom.isActive():
                        dom.create()
                    if prior is PowerState.PAUSED:
                        dom.suspend()
                    return f"back to {prior}"
                case Verb.SUSPEND:
                    if prior is PowerState.RUNNING:
                        dom.resume()
                    return f"back to {prior}"
                case Verb.RESUME:
                    if prior is PowerState.PAUSED:
                        dom.suspend()
                    return f"back to {prior}"
                case Verb.RESIZE:
                    # Each place back to its own size: the saved one may not have been the
                    # running one (plans before config_* were kept: the same for both).
                    done = []
                    if undo["live"]:
                        back = {"vcpus": undo["vcpus"], "memory_mib": undo["memory_mib"],
                                "live": True, "config": False}  # fmt: skip
                        done.append(self._resize(dom, back)[1])
                    if undo["config"]:
                        back = {"vcpus": undo.get("config_vcpus", undo["vcpus"]),
                                "memory_mib": undo.get("config_memory_mib", undo["memory_mib"]),
                                "live": False, "config": True}  # fmt: skip
                        done.append(self._resize(dom, back)[1])
                    return "; ".join(done)
                case Verb.SNAPSHOT:
                    name = undo["snapshot"]
                    if name in dom.snapshotListNames(0):
                        dom.snapshotLookupByName(name, 0).delete(0)
                    return f"snapshot {name} deleted"
            raise UnsupportedError(f"{verb} cannot be reverted by the libvirt adapter")

        if verb is Verb.MIGRATE:
            raise UnsupportedError("migrate back with a new migrate action to the source host")
        detail = await self._call(f"revert {verb} {target}", restore)
        after = await self._describe_or_absent(target)
        return Outcome(plan, OutcomeStatus.REVERTED, after, detail)

    # -- reconcile ---------------------------------------------------------------------

    async def _reconcile(self, plan: Plan) -> Reconciliation:
        if plan.action.verb is not Verb.RESIZE or not plan.desired["config"]:
            return await super()._reconcile(plan)
        # A change to the saved definition shows there, not in the running size.
        state = await self._describe_or_absent(plan.target)
        if state.power is PowerState.ABSENT:
            return Reconciliation(plan, None, state, "the domain is gone: no size to read")
        desired, undo = plan.desired, plan.undo
        places: list[tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]] = []
        if desired["live"] and state.power in _LIVE:
            now = (state.vcpus, state.memory_mib)
            places.append((now, (desired["vcpus"], desired["memory_mib"]),
                           (undo["vcpus"], undo["memory_mib"])))  # fmt: skip
        saved = await self._call(
            f"saved size of {plan.target}", lambda c: _saved_size(self._lookup(c, plan.target))
        )
        places.append((saved, (desired["vcpus"], desired["memory_mib"]),
                       (undo.get("config_vcpus", undo["vcpus"]),
                        undo.get("config_memory_mib", undo["memory_mib"]))))  # fmt: skip

        def matches(now: tuple[Any, ...], want: tuple[Any, ...]) -> bool:
            return all(w is None or n == w for n, w in zip(now, want, strict=True))

        if all(matches(now, want) for now, want, _ in places):
            took: bool | None = True
        elif all(matches(now, was) for now, _, was in places):
            took = False
        else:
            took = None
        if took is None:
            detail = "the sizes match neither the plan nor the state before it"
        else:
            detail = "took effect" if took else "did not take effect"
        return Reconciliation(plan, took, state, detail)

    async def _judge(self, plan: Plan, state: RuntimeState) -> bool | None:
        verb = plan.action.verb
        if verb in (Verb.SNAPSHOT, Verb.SNAPSHOT_DELETE):
            name = plan.desired["snapshot"]
            exists = state.power is not PowerState.ABSENT and await self._has_snapshot(
                plan.target, name
            )
            return exists if verb is Verb.SNAPSHOT else not exists
        if verb is Verb.MIGRATE and state.power is PowerState.ABSENT:
            return True  # gone from here; only the destination can say more
        return None  # reboot, reset, revert: no trace in the domain's state


_SNAPSHOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _cache_key(resource: str) -> str:
    """A domain's describe-cache key: a UUID in libvirt's own (lower-case) form, the form
    that events drop entries under."""
    return resource.lower() if _UUID.fullmatch(resource) else resource


def _saved_size(dom: Dom) -> tuple[int, int]:
    """The vCPUs and memory (MiB) of the domain's saved (persistent) definition."""
    return int(dom.vcpusFlags(_AFFECT_CONFIG)), LibvirtAdapter._memory_mib(dom, live=False)


def _alive(conn: Conn) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def _status(applied: bool) -> OutcomeStatus:
    return OutcomeStatus.APPLIED if applied else OutcomeStatus.ALREADY
