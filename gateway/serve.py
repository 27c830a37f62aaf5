"""``govgate serve``: one gateway process, from configuration to a listening mTLS server.

Start-up, in order (each step says what it does on standard error):

1. open the ledger in the data directory (it must have a signing key);
2. open the runtime adapters and load the risk model (the active one in
   ``DATA/models``, else the bundled default);
3. rebuild the gateway's state from the ledger and finish what a crash
   interrupted (:mod:`gateway.recovery`);
4. activate the policy: a ``policy`` record with its id, on every start;
5. freeze the objects loaded so far out of the garbage collector's reach
   (``gc.freeze``): otherwise full collections walk XGBoost's and NumPy's
   objects and stall the event loop for tens of milliseconds under load; and
   collect the youngest generation every ``_GC_YOUNG`` allocations instead of
   700, so that fewer objects of decisions still in flight are promoted to
   the old generation, whose collections are the long pauses;
6. listen (mTLS, client certificates required), and sweep for overdue
   approvals every ``expiry_interval`` seconds.

SIGTERM or SIGINT stops it: no new calls, in-flight ones get ``grace``
seconds, then the ledger signs its final checkpoint and closes.

Example::

    asyncio.run(serve(ServeConfig.load(None, data=Path("demo-data")), say=print))
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import gc
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import grpc

from adapters.errors import AdapterError
from adapters.kata import KataAdapter
from adapters.libvirt import LibvirtAdapter, LibvirtConfig
from adapters.runtime import RuntimeAdapter
from explain.batcher import MicroBatcher
from explain.drift import Profile
from explain.errors import ExplainError
from explain.model import Model
from explain.registry import Registry
from explain.scorer import Scorer
from gateway.config import SAMPLE_DOMAINS, ConfigError, ServeConfig
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.pipeline import Gateway
from gateway.policy import Policy
from gateway.recovery import load_floor, recover, save_floor
from gateway.roles import Roles
from gateway.samples import write_node
from gateway.server import Health, ServerOptions, TlsFiles, start_server
from gateway.telemetry import (
    TracingInterceptor,
    exporter_names,
    metric_exporter_names,
    setup_metrics,
    setup_tracing,
)
from ledger import DataDir, Ledger, LedgerError
from ledger.errors import StoreError
from ledger.sqlite import try_lock

__all__ = ["EXAMPLE_POLICY", "serve"]

EXAMPLE_POLICY = Path(__file__).with_name("policies") / "default.toml"

Say = Callable[[str], None]
_GC_YOUNG = 10_000  # allocations between young collections (CPython's default: 700)
_FOLLOW_INTERVAL = 0.25  # seconds between catch-ups with other replicas when idle
_SHOWN = 5  # unreadable records named one by one at start-up; the rest are counted


def _tls(config: ServeConfig) -> TlsFiles:
    files = TlsFiles(config.path(config.ca), config.path(config.cert), config.path(config.key))
    for f in (files.ca, files.cert, files.key):
        if not f.is_file():
            raise ConfigError(
                f"no {f}: create certificates with `govgate certs init --data {config.data}` "
                "or set [tls] in the configuration"
            )
    return files


@contextlib.asynccontextmanager
async def _adapters(config: ServeConfig, say: Say) -> AsyncIterator[dict[str, RuntimeAdapter]]:
    async with contextlib.AsyncExitStack() as stack:
        out: dict[str, RuntimeAdapter] = {}
        if config.libvirt is not None:
            lv = config.libvirt
            if lv.uri == SAMPLE_DOMAINS:
                node = write_node(config.data / "libvirt-node.xml")
                lv = LibvirtConfig(**{**lv.__dict__, "uri": f"test://{node.resolve()}"})
            out["libvirt"] = await stack.enter_async_context(LibvirtAdapter(lv))
            say(f"runtime libvirt: {lv.uri}")
        if config.kata is not None:
            out["kata"] = await stack.enter_async_context(KataAdapter(config.kata))
            say(f"runtime kata: containerd at {config.kata.address}")
        if not out:
            raise ConfigError("no runtime is configured: add [runtimes.libvirt] or [runtimes.kata]")
        yield out


def _lock(path: Path, mode: int) -> int | None:
    """:func:`ledger.sqlite.try_lock`, its failure a configuration error."""
    try:
        return try_lock(path, mode)
    except StoreError as err:
        raise ConfigError(str(err)) from None


@contextlib.contextmanager
def _one_gateway(data: DataDir, replica: str) -> Iterator[None]:
    """On the SQLite ledger, refuse a second gateway unless every gateway on the file is a
    replica (``data.shared``), each under a name of its own: gateways that are not
    replicas share none of their state (halts, approvals, request ids), so two of them
    would each enforce only their own; two under one name would each finish the other's
    work after a crash (recovery and the replay floor go by the name). Held (``flock``:
    ``ledger.db.serving`` exclusive alone, shared by replicas; ``ledger.db.replica.NAME``
    exclusive) until the context exits; the kernel lets go when the process dies. A
    PostgreSQL ledger is always shared."""
    if data.ledger_url is not None:
        yield
        return
    db = data.db_path
    serving = _lock(db.with_name(db.name + ".serving"),
                    fcntl.LOCK_SH if data.shared else fcntl.LOCK_EX)  # fmt: skip
    if serving is None and data.shared:
        raise ConfigError(
            f"a gateway that is not a replica is serving {db}; stop it, or start every "
            "gateway on this ledger with a replica name (--replica)"
        )
    if serving is None:
        raise ConfigError(
            f"another gateway is serving {db}: one gateway per ledger file, or start every "
            "gateway on it with a replica name (--replica, docs/deploy.md)"
        )
    name = None
    try:
        if data.shared:
            name = _lock(db.with_name(f"{db.name}.replica.{replica}"), fcntl.LOCK_EX)
            if name is None:
                raise ConfigError(
                    f"replica {replica} is serving {db} already: every replica needs a "
                    "name of its own"
                )
        yield
    finally:
        if name is not None:
            os.close(name)
        os.close(serving)


async def serve(
    config: ServeConfig,
    *,
    say: Say,
    ready: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    early_signals: Sequence[int] = (),
) -> None:
    """Run the gateway until SIGTERM/SIGINT (or ``stop`` is set); ``ready(port)`` once listening.

    A signal during start-up lets start-up finish what it writes (recovery's outcome
    records, the policy record), then stops before listening, cleanly; a second one cuts
    start-up short (what it wrote stays written; the next start goes on from there).
    ``early_signals``: those that came before this coroutine ran (the command line
    catches them from its start), taken as if they came now."""
    stop, force = stop or asyncio.Event(), asyncio.Event()
    listening = False
    starting: list[asyncio.Task[None]] = []

    def signalled() -> None:
        if not stop.is_set():
            stop.set()
            return
        force.set()  # the second signal forces
        if not listening and starting:
            starting[0].cancel()

    def listened(port: int) -> None:
        nonlocal listening
        listening = True
        if ready is not None:
            ready(port)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled)
    try:
        for _ in early_signals:
            signalled()
        starting.append(asyncio.ensure_future(_serve(config, say, listened, stop, force)))
        if force.is_set():  # two signals before it began
            starting[0].cancel()
        try:
            await starting[0]
        except asyncio.CancelledError:
            if listening or not force.is_set():
                raise  # not the second signal's doing
            say("start-up cut short by a second signal; the ledger is closed")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _serve(
    config: ServeConfig, say: Say, ready: Callable[[int], None] | None, stop: asyncio.Event,
    force: asyncio.Event,
) -> None:  # fmt: skip
    tls = _tls(config)
    policy = Policy.load(config.path(config.policy) if config.policy else EXAMPLE_POLICY)
    roles = Roles.load(config.path(config.roles)) if config.roles else None
    data = DataDir(config.data, config.ledger_url or None, shared=bool(config.replica))
    data.signer()  # refuse early, with the key file's own error, when there is no key
    model = Registry(config.data / "models").load(config.model or None)
    tracing_provider = setup_tracing()  # before the Gateway, which takes its tracer
    prometheus = None
    if config.metrics_listen:
        host, _, port = config.metrics_listen.rpartition(":")
        prometheus = (host, int(port))
    meter_provider = setup_metrics(prometheus)
    metrics = None
    if meter_provider is not None:
        metrics = Metrics(meter_provider.get_meter("govgate"), _profile(config, model, say))
        exporters = [*metric_exporter_names(), *(["prometheus"] if prometheus else [])]
        scrape = f" (scrape http://{config.metrics_listen}/metrics)" if prometheus else ""
        say(f"metrics: {', '.join(exporters)}{scrape}")
    try:
        if tracing_provider is not None:
            say(f"tracing: {', '.join(exporter_names())} export (OTEL_* environment)")
        with _one_gateway(data, config.replica):
            await _run(config, tls, policy, roles, model, metrics, data, say, ready, stop, force)
    finally:  # flush what is queued, both at once and bounded: a collector may be down
        flushes = []
        if tracing_provider is not None:
            flushes.append(asyncio.to_thread(tracing_provider.shutdown))
        if meter_provider is not None:
            flushes.append(asyncio.to_thread(meter_provider.shutdown, timeout_millis=5000))
        await asyncio.gather(*flushes)
    say("stopped; the ledger is closed")


def _profile(config: ServeConfig, model: Model, say: Say) -> Profile | None:
    """The model's training profile, which drift is measured against (from its card)."""
    try:
        return Profile.from_json(Registry(config.data / "models").card(model.id)["reference"])
    except (ExplainError, KeyError, TypeError, ValueError) as err:
        say(f"no drift metric: model {model.id[:16]} has no readable profile ({err})")
        return None


async def _run(
    config: ServeConfig, tls: TlsFiles, policy: Policy, roles: Roles | None, model: Model,
    metrics: Metrics | None, data: DataDir, say: Say, ready: Callable[[int], None] | None,
    stop: asyncio.Event, force: asyncio.Event,
) -> None:  # fmt: skip
    # A server starts its sealing process now, not in the middle of its first burst.
    ledger_config = dataclasses.replace(config.ledger, seal_process_at_start=True)
    async with (
        data.open_ledger(ledger_config) as ledger,
        _adapters(config, say) as adapters,
        MicroBatcher(Scorer(model)) as batcher,
    ):
        where = getattr(ledger.store, "url", data.db_path)
        shared = f", replica {config.replica}" if config.replica else ""
        say(f"ledger {where} ({ledger.origin}{shared}); model {model.id[:16]}")
        gw = Gateway(ledger, adapters, batcher, policy, shadow=config.shadow, roles=roles,
                     metrics=metrics, replica=config.replica)  # fmt: skip
        if metrics is not None:
            metrics.watch_pending(lambda: len(gw.pending()))
        floor, why = await load_floor(gw, data.path, salt=data.salt())
        if why:
            say(f"replay floor not used: {why}; reading the whole ledger")
        state = await recover(gw, floor=floor)
        since = f" (from record {floor}, the replay floor of the last stop)" if floor else ""
        say(f"rebuilt from {state.records} records{since}: {len(state.decisions)} decisions, "
            f"{len(state.pending)} pending, {len(state.halts)} halts")  # fmt: skip
        if state.foreign:
            say(f"left alone {state.foreign} decision records no gateway wrote")
        for line in state.skipped[:_SHOWN]:
            say(f"skipped {line}")
        if len(state.skipped) > _SHOWN:
            say(f"skipped {len(state.skipped) - _SHOWN} more unreadable records")
        for d in state.unfinished:
            say(f"finished {d.decision_id} after the restart: {d.state}")
        for decision_id in state.rollbacks:
            say(f"finished {decision_id}'s interrupted rollback: its effect is unknown")
        index = await gw.activate_policy(policy, actor="govgate serve")  # every load is recorded
        change = "unchanged" if state.policy_id == policy.id else "changed"
        say(f"policy {policy.id[:16]} loaded, {change} (record {index})")
        if config.shadow:
            say("shadow mode: decisions are made and recorded, never executed")
        if stop.is_set():  # signalled during start-up: what it had to write is written
            say("a stop was asked for during start-up: not listening")
            await _save_floor(gw, data, say)
            return
        gc.collect()
        gc.freeze()
        gc.set_threshold(_GC_YOUNG, *gc.get_threshold()[1:])
        host, _, port = config.listen.rpartition(":")
        health = Health(say)
        tracing = TracingInterceptor(server_address=host)  # outside the error mapper
        options = ServerOptions(max_inflight=config.max_inflight, reflection=config.reflection,
                                stream_window=config.stream_window, interceptors=(tracing,),
                                reuse_port=config.reuse_port)  # fmt: skip
        try:
            server, bound = await start_server(gw, tls, host=host, port=int(port),
                                               options=options, health_status=health)  # fmt: skip
        except RuntimeError as err:  # grpc: "Failed to bind to address ..."
            raise ConfigError(
                f"cannot listen on {config.listen}: the address is in use or not this host's "
                f"({err})"
            ) from None
        tracing.server_port = bound
        say(f"listening on {host}:{bound} (mTLS"
            + (", reflection" if config.reflection else "") + ")")  # fmt: skip
        if ready is not None:
            ready(bound)
        chores = [
            asyncio.create_task(_sweep(gw, config.expiry_interval, say)),
            asyncio.create_task(_follow(gw, _FOLLOW_INTERVAL)),
            asyncio.create_task(_watch_health(ledger, health, config.health_interval, say)),
        ]
        try:
            await stop.wait()
            for chore in chores:
                chore.cancel()
            await health.set(False, "draining")
            say(f"draining: NOT_SERVING, no new calls; in-flight calls get {config.grace:g}s "
                "(a second signal stops them now)")  # fmt: skip
            await _drain(server, config.grace, force, say)
            await _save_floor(gw, data, say)
        finally:
            for chore in chores:
                chore.cancel()
            await server.stop(None)  # a no-op after a drain; else cancels what is in flight


async def _follow(gw: Gateway, every: float) -> None:
    """With replicas: catch up with the others now and then even when no call asks, so that
    watchers see their changes (a failure shows in health; the next round retries)."""
    if not gw.shared:
        return
    while True:
        await asyncio.sleep(every)
        with contextlib.suppress(GatewayError):
            await gw.sync()


async def _sweep(gw: Gateway, every: float, say: Say) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            expired = await gw.expire_overdue()
        except (GatewayError, AdapterError, OSError) as err:  # the next sweep tries again
            say(f"expiry sweep failed: {err}")
            continue
        except Exception as err:  # a bug: say so, and keep sweeping (deadlines must hold)
            say(f"expiry sweep failed: {type(err).__name__}: {err}")
            continue
        if expired:
            say(f"{expired} pending decision(s) expired")


async def _save_floor(gw: Gateway, data: DataDir, say: Say) -> None:
    """Leave the next start a replay floor (gateway.recovery), if one can be vouched for."""
    try:
        floor = await save_floor(gw, data.path, salt=data.salt())
    except (OSError, LedgerError, ValueError) as err:
        say(f"replay floor not saved ({err}); the next start reads from an older one, if any")
        return
    if floor is None:
        say(
            "replay floor not saved: work was still under way; the next start reads from "
            "an older one, if any"
        )
    else:
        say(f"replay floor {floor} saved: the next start reads the ledger from there")


async def _drain(server: grpc.aio.Server, grace: float, force: asyncio.Event, say: Say) -> None:
    """Let in-flight calls finish within ``grace``, or until ``force`` is set.

    Calls cut short lose nothing recorded: a decision recorded without its outcome is
    finished by the next start-up (docs/serve.md).
    """
    draining = asyncio.create_task(server.stop(grace))
    forced = asyncio.create_task(force.wait())
    await asyncio.wait({draining, forced}, return_when=asyncio.FIRST_COMPLETED)
    if not draining.done():
        say("second signal: cancelling the calls still in flight")
        await server.stop(None)
    forced.cancel()
    await draining


async def _watch_health(ledger: Ledger, health: Health, every: float, say: Say) -> None:
    """``SERVING`` exactly while the ledger can write; said when it changes."""
    while True:
        await asyncio.sleep(every)
        try:
            if not ledger.accepting:
                raise LedgerError("the ledger's writer has stopped")
            await ledger.store.check_writable()
        except LedgerError as err:
            if await health.set(False, str(err)):
                say(f"NOT_SERVING: {err}")
        else:
            if await health.set(True):
                say("SERVING: the ledger can write again")
