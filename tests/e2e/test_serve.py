"""``govgate serve`` as a real process: configuration, restarts, a SIGKILL mid-decision, shadow.

Each test runs the command line in a child process on a loopback port with
mTLS, talks to it with the generated stubs, and stops it with SIGTERM (a
clean stop must exit 0) or SIGKILL (a crash). The runtime is libvirt's test
driver with the sample domains, which lives inside the gateway's process:
after a restart the domains are as the sample file describes them, which is
what lets a test see that a recovered decision was *not* run again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from gateway._proto.govgate.v1 import (
    decision_pb2,
    decision_pb2_grpc,
    oversight_pb2,
    oversight_pb2_grpc,
    types_pb2,
)
from gateway.identity import init_certs
from ledger import DataDir

HERE = Path(__file__).resolve().parent
GOVGATE = [sys.executable, "-m", "gateway.cli"]
# Staging executes at almost any risk; production always waits for one approver.
POLICY = b"""version = 1
[defaults]
execute_below = 0.99
approve_below = 1.0
min_confidence = 0.0
approval_ttl = "1h"

[[rules]]
name = "production waits for a person"
match = { selector = "env=prod" }
execute_below = 0.0
"""


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    site: Site
    channels: dict[str, grpc.Channel] = field(default_factory=dict)

    def channel(self, who: str) -> grpc.Channel:
        if who not in self.channels:
            certs = self.site.data / "certs"
            creds = grpc.ssl_channel_credentials(
                (certs / "ca.pem").read_bytes(),
                (certs / f"{who}.key").read_bytes(),
                (certs / f"{who}.pem").read_bytes(),
            )
            self.channels[who] = grpc.secure_channel(f"localhost:{self.port}", creds)
        return self.channels[who]

    def decisions(self, who: str = "engine-1") -> decision_pb2_grpc.DecisionServiceStub:
        return decision_pb2_grpc.DecisionServiceStub(self.channel(who))

    def oversight(self, who: str = "alice") -> oversight_pb2_grpc.OversightServiceStub:
        return oversight_pb2_grpc.OversightServiceStub(self.channel(who))

    def close(self) -> None:
        for ch in self.channels.values():
            ch.close()
        self.channels.clear()

    def stop(self) -> int:
        self.close()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Site:
    data: Path
    tmp: Path
    runs: list[Served] = field(default_factory=list)

    def serve(
        self,
        *args: str,
        crash: bool = False,
        stuck: bool = False,
        env: dict[str, str] | None = None,
    ) -> Served:
        port_file = self.data / "port"
        port_file.unlink(missing_ok=True)
        log = self.tmp / f"serve-{len(self.runs)}.log"
        cmd = GOVGATE
        if crash or stuck:
            cmd = [
                sys.executable,
                str(HERE / ("_crash_server.py" if crash else "_stuck_server.py")),
            ]
        with log.open("wb") as sink:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [*cmd, "serve", "--data", str(self.data), "--listen", "127.0.0.1:0",
                 "--port-file", str(port_file), "--policy", str(self.tmp / "policy.toml"),
                 *args],
                stdout=subprocess.DEVNULL, stderr=sink,
                env={**os.environ, "COLUMNS": "200", **(env or {})},
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"govgate serve did not start:\n{log.read_text()}")
            time.sleep(0.05)
        served = Served(proc, int(port_file.read_text()), log, self)
        self.runs.append(served)
        return served

    def verify_ledger(self) -> None:
        export = self.tmp / "export.jsonl"
        export.unlink(missing_ok=True)
        run = [*GOVGATE, "ledger", "export", "--data", str(self.data), "--out", str(export)]
        subprocess.run(run, check=True, capture_output=True, timeout=60)
        key = DataDir(self.data).signer().verifier.key_string
        done = subprocess.run(
            [*GOVGATE, "ledger", "verify", str(export), "--key", key, "--quiet"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    data = tmp_path / "data"
    DataDir(data).generate_key("example.com/govgate")
    init_certs(data / "certs", ["engine-1", "alice"])
    (tmp_path / "policy.toml").write_bytes(POLICY)
    s = Site(data, tmp_path)
    yield s
    for served in s.runs:
        served.close()
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()


def propose(
    request_id: str, verb: str, resource: str, **params: str
) -> decision_pb2.ProposeRequest:
    return decision_pb2.ProposeRequest(
        request_id=request_id,
        action=types_pb2.Action(
            verb=verb, target=types_pb2.Target(runtime="libvirt", resource=resource),
            parameters=params, justification="load forecast for the evening peak",
            confidence=0.9, engine="autoscaler",
        ),
    )  # fmt: skip


def state(d: types_pb2.Decision) -> str:
    return types_pb2.DecisionState.Name(d.state)


def test_a_restarted_gateway_keeps_decisions_pending_approvals_and_halts(site: Site):
    first = site.serve()
    done = first.decisions().Propose(propose("r-1", "resize", "web-1", vcpus="4"), timeout=30)
    assert state(done) == "EXECUTED", done.reasons
    waiting = first.decisions().Propose(propose("r-2", "reboot", "api-1"), timeout=30)
    assert state(waiting) == "PENDING_APPROVAL", waiting.reasons
    prod = types_pb2.Scope(selector="env=prod")
    first.oversight().Halt(oversight_pb2.HaltRequest(scope=prod, reason="drill"), timeout=30)
    assert first.stop() == 0, first.output()
    assert "stopped; the ledger is closed" in first.output()
    # Every record is from the last hour (the risk model's window): the floor stays at 0.
    assert "replay floor 0 saved" in first.output()
    assert (site.data / "replay-floor.json").exists()

    second = site.serve()
    assert "rebuilt from" in second.output()
    assert "replay floor not used" not in second.output()
    again = second.decisions().Propose(propose("r-1", "resize", "web-1", vcpus="4"), timeout=30)
    assert (again.decision_id, state(again)) == (done.decision_id, "EXECUTED")
    pending = second.oversight().ListPending(oversight_pb2.ListPendingRequest(), timeout=30)
    assert [d.decision_id for d in pending.decisions] == [waiting.decision_id]
    review = oversight_pb2.ReviewRequest(decision_id=waiting.decision_id, reason="checked",
                                         request_digest=waiting.request_digest)  # fmt: skip
    with pytest.raises(grpc.RpcError) as halted:  # the halt survived the restart
        second.oversight().Approve(review, timeout=30)
    assert halted.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "stop switch" in (halted.value.details() or "")
    second.oversight().Resume(oversight_pb2.ResumeRequest(scope=prod, reason="over"), timeout=30)
    approved = second.oversight().Approve(review, timeout=30)
    assert state(approved) == "EXECUTED", approved.reasons
    assert second.stop() == 0
    site.verify_ledger()


def test_a_crash_between_decision_and_outcome_is_finished_at_start_up(site: Site):
    crashing = site.serve(crash=True)
    with pytest.raises(grpc.RpcError) as lost:
        crashing.decisions().Propose(propose("r-1", "resize", "web-1", vcpus="4"), timeout=30)
    assert lost.value.code() == grpc.StatusCode.UNAVAILABLE  # the caller saw no answer
    assert crashing.proc.wait(timeout=30) == -signal.SIGKILL
    crashing.close()

    restarted = site.serve()
    log = restarted.output()
    assert "finished d-" in log
    assert "FAILED" in log
    d = restarted.decisions().Propose(propose("r-1", "resize", "web-1", vcpus="4"), timeout=30)
    assert state(d) == "FAILED"  # the engine's retry gets the recorded decision...
    assert "not retried" in d.outcome.detail
    get = decision_pb2.GetDecisionRequest(decision_id=d.decision_id)
    assert restarted.decisions().GetDecision(get, timeout=30).decision_id == d.decision_id
    # ... and nothing ran: web-1 still has the sample's 2 vCPUs, so a resize to 2 is a no-op
    check = restarted.decisions().Propose(propose("r-2", "resize", "web-1", vcpus="2"), timeout=30)
    assert "already" in check.outcome.status.lower() or "already" in check.outcome.detail.lower()
    assert restarted.stop() == 0
    site.verify_ledger()


def test_shadow_mode_decides_and_records_but_never_executes(site: Site):
    shadow = site.serve("--shadow")
    assert "shadow mode" in shadow.output()
    d = shadow.decisions().Propose(propose("r-1", "resize", "web-1", vcpus="4"), timeout=30)
    assert state(d) == "DRY_RUN"
    assert any("shadow" in r for r in d.reasons), d.reasons
    assert shadow.stop() == 0

    live = site.serve()  # the same site enforcing: web-1 was never resized
    check = live.decisions().Propose(propose("r-2", "resize", "web-1", vcpus="2"), timeout=30)
    assert state(check) == "EXECUTED"
    assert "already" in check.outcome.status.lower() or "already" in check.outcome.detail.lower()
    assert live.stop() == 0
    site.verify_ledger()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("[server]\nlisten = 7443\n", "server.listen: must be a str"),
        ("[server]\nlisten = 'nowhere'\n", "'nowhere' is not HOST:PORT"),
        ("[gateway]\npolcy = 'x.toml'\n", "gateway.polcy: unknown setting"),
        ("[runtimes.libvirt]\nurl = 'test:///default'\n", "runtimes.libvirt.url: unknown"),
        ("[ledger]\nmax_batch = 0\n", "max_batch must be in 1..65536"),
        ("not toml [", "not valid TOML"),
        ("[tls]\nca = 'missing.pem'\n", "govgate certs init"),
    ],
)
def test_bad_configuration_is_refused_with_a_clear_error(site: Site, setup: str, message: str):
    config = site.tmp / "govgate.toml"
    config.write_text(setup)
    done = subprocess.run(
        [*GOVGATE, "serve", "--data", str(site.data), "--config", str(config)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"},
    )  # fmt: skip
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_port_in_use_is_refused_with_a_clear_error(site: Site):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [*GOVGATE, "serve", "--data", str(site.data), "--listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"},
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def serve_once(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    """``govgate serve`` expected to refuse to start."""
    return subprocess.run(
        [*GOVGATE, "serve", "--data", str(site.data), "--listen", "127.0.0.1:0",
         "--policy", str(site.tmp / "policy.toml"), *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"},
    )  # fmt: skip


def test_gateways_share_a_ledger_file_only_as_replicas(site: Site):
    alone = site.serve()
    second = serve_once(site)
    assert second.returncode == 1, second.stderr
    assert "another gateway is serving" in second.stderr
    assert "Traceback" not in second.stderr
    replica = serve_once(site, "--replica", "a")
    assert replica.returncode == 1, replica.stderr
    assert "a gateway that is not a replica is serving" in replica.stderr
    assert alone.stop() == 0, alone.output()

    a, b = site.serve("--replica", "a"), site.serve("--replica", "b")
    assert "replica a" in a.output()
    assert "replica b" in b.output()
    lone = serve_once(site)
    assert lone.returncode == 1, lone.stderr
    assert "another gateway is serving" in lone.stderr
    twin = serve_once(site, "--replica", "a")  # recovery and replay floors go by the name
    assert twin.returncode == 1, twin.stderr
    assert "replica a is serving" in twin.stderr
    first = a.decisions().Propose(propose("r-1", "resize", "web-1", vcpus="4"), timeout=30)
    assert state(first) == "EXECUTED", first.reasons
    again = b.decisions().Propose(propose("r-1", "resize", "web-1", vcpus="4"), timeout=30)
    assert again.decision_id == first.decision_id  # decided once, whichever replica asks
    everything = types_pb2.Scope(all=True)
    a.oversight().Halt(oversight_pb2.HaltRequest(scope=everything, reason="drill"), timeout=30)
    halted = b.decisions().Propose(propose("r-2", "resize", "web-2", vcpus="3"), timeout=30)
    assert state(halted) == "HALTED", halted.reasons
    b.oversight().Resume(oversight_pb2.ResumeRequest(scope=everything, reason="done"),
                         timeout=30)  # fmt: skip
    resumed = a.decisions().Propose(propose("r-3", "resize", "web-2", vcpus="3"), timeout=30)
    assert state(resumed) == "EXECUTED", resumed.reasons
    assert a.stop() == 0, a.output()
    assert b.stop() == 0, b.output()
    site.verify_ledger()
    done = subprocess.run(
        [*GOVGATE, "ledger", "query", "--data", str(site.data), "--kind", "decision"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    bodies = [json.loads(line)["body"] for line in done.stdout.splitlines()]
    decided = {body["request_id"]: body for body in bodies}
    assert sorted(decided) == ["r-1", "r-2", "r-3"]
    # The record that lets an action run names the replica that runs it.
    assert decided["r-1"]["replica"] == decided["r-3"]["replica"] == "a"


def children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").glob("*/children")
            for c in task.read_text().split()]  # fmt: skip


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_workers_share_the_address_and_the_ledger_and_are_restarted(site: Site):
    served = site.serve("--workers", "2")
    assert "2 workers listening on 127.0.0.1:" in served.output()
    workers = children(served.proc.pid)
    assert len(workers) == 2
    certs = site.data / "certs"
    creds = grpc.ssl_channel_credentials(
        (certs / "ca.pem").read_bytes(), (certs / "engine-1.key").read_bytes(),
        (certs / "engine-1.pem").read_bytes(),
    )  # fmt: skip

    def propose_on_new_connections(prefix: str, count: int) -> None:
        # One connection each (no shared subchannel): the kernel hands each to a worker.
        for i in range(count):
            with grpc.secure_channel(
                f"localhost:{served.port}", creds, options=[("grpc.use_local_subchannel_pool", 1)]
            ) as ch:
                stub = decision_pb2_grpc.DecisionServiceStub(ch)
                req = propose(f"{prefix}-{i}", "resize", f"web-{1 + i % 2}", vcpus=str(2 + i % 3))
                d = stub.Propose(req, timeout=30)
                assert state(d) == "EXECUTED", d.reasons

    propose_on_new_connections("r", 24)
    # Another supervisor on the same address would run workers of the same names: refused.
    twin = serve_once(site, "--workers", "2", "--listen", f"127.0.0.1:{served.port}")
    assert twin.returncode == 1, twin.stderr
    assert "replica worker-1 is serving" in twin.stderr
    os.kill(workers[0], signal.SIGKILL)  # a crash: the supervisor starts it again
    assert wait_for(lambda: "exited with status -9; starting it again" in served.output())
    assert wait_for(lambda: "worker worker-1 listening again" in served.output())
    assert len(children(served.proc.pid)) == 2
    assert workers[0] not in children(served.proc.pid)
    propose_on_new_connections("s", 24)
    assert served.stop() == 0, served.output()
    assert "all workers stopped" in served.output()
    assert "[worker-1]" in served.output()  # each worker's lines name it
    site.verify_ledger()
    done = subprocess.run(
        [*GOVGATE, "ledger", "query", "--data", str(site.data), "--kind", "decision"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    bodies = [json.loads(line)["body"] for line in done.stdout.splitlines()]
    assert len(bodies) == 48
    assert {body["replica"] for body in bodies} == {"worker-1", "worker-2"}


@contextlib.contextmanager
def running(log: Path, *argv: str) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` started, its standard error in ``log``; killed if it still runs at the end."""
    with log.open("wb") as sink:
        proc = subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=sink)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


SLOW_START = (sys.executable, str(HERE / "_slow_start_server.py"))


def test_a_stop_while_workers_start_stops_them_once_and_cleanly(site: Site):
    log, port_file = site.tmp / "workers.log", site.tmp / "port"
    with running(log, *GOVGATE, "serve", "--data", str(site.data), "--listen", "127.0.0.1:0",
                 "--port-file", str(port_file), "--policy", str(site.tmp / "policy.toml"),
                 "--workers", "2") as proc:  # fmt: skip
        # Worker 1 listens; worker 2 has just been started.
        assert wait_for(lambda: "[worker-1] listening on" in log.read_text()), log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    out = log.read_text()
    assert "second signal:" not in out  # passed on once: a drain, not a forced stop
    assert "start-up cut short" not in out
    assert not port_file.exists()


def test_workers_stop_when_their_supervisor_is_killed(site: Site):
    served = site.serve("--workers", "2")
    workers = children(served.proc.pid)
    served.proc.kill()  # no signal to pass on: the workers see their standard input close
    served.proc.wait()
    assert wait_for(lambda: all(gone(pid) for pid in workers), seconds=60), served.output()
    assert served.output().count("stopped; the ledger is closed") == 2


@pytest.mark.parametrize(
    ("signals", "said"),
    [
        # One: start-up finishes what it writes, then the gateway stops before listening.
        ([signal.SIGTERM], "a stop was asked for during start-up: not listening"),
        # Ctrl-C twice: start-up is cut short, without waiting for it to end.
        ([signal.SIGINT, signal.SIGINT], "start-up cut short by a second signal"),
    ],
)
def test_a_stop_during_start_up_ends_it_cleanly_before_listening(
    site: Site, signals: list[int], said: str
):
    log = site.tmp / "slow.log"
    with running(log, *SLOW_START, "serve", "--data", str(site.data),
                 "--listen", "127.0.0.1:0") as proc:  # fmt: skip
        assert wait_for(lambda: "rebuilding slowly" in log.read_text()), log.read_text()
        for signum in signals:
            proc.send_signal(signum)
            time.sleep(0.3)  # two signals at once are one (the kernel keeps one pending)
        assert proc.wait(timeout=60) == 0, log.read_text()
    out = log.read_text()
    assert said in out
    assert "listening on" not in out
    assert "the ledger is closed" in out


def health_of(served: Served) -> str:
    stub = health_pb2_grpc.HealthStub(served.channel("alice"))
    status = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))


def wait_for(predicate: Callable[[], bool], seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_health_follows_whether_the_ledger_can_write(site: Site):
    served = site.serve()
    assert health_of(served) == "SERVING"
    watch = health_pb2_grpc.HealthStub(served.channel("alice")).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=60
    )
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    locker = sqlite3.connect(site.data / "ledger.db", timeout=0)
    try:
        locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        assert wait_for(lambda: health_of(served) == "NOT_SERVING"), served.output()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
    finally:
        locker.rollback()
        locker.close()
    assert wait_for(lambda: health_of(served) == "SERVING"), served.output()
    log = served.output()
    assert "NOT_SERVING: the ledger database cannot be written" in log
    assert "SERVING: the ledger can write again" in log
    done = served.decisions().Propose(propose("r-1", "resize", "web-1", vcpus="4"), timeout=30)
    assert state(done) == "EXECUTED"
    assert served.stop() == 0


def test_a_runtime_call_stuck_in_a_thread_does_not_hold_the_stop_past_the_grace(site: Site):
    """A libvirt call hung in the adapter's worker thread: SIGTERM drains for --grace,
    closes the ledger and exits 0, without waiting for the thread; the next start
    reconciles the decision the call left without an outcome."""
    served = site.serve("--grace", "1", stuck=True)
    # Five calls: every one of the adapter's four worker threads stuck, and one waiting.
    callers = futures.ThreadPoolExecutor(5)
    calls = [
        callers.submit(
            served.decisions().Propose,
            propose(f"r-{n}", "resize", f"web-{1 + n % 2}" if n < 2 else "web-1", vcpus="4"),
            timeout=120,
        )
        for n in range(5)
    ]
    assert wait_for(lambda: served.output().count("stuck executing") >= 4), served.output()
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=30) == 0, served.output()  # the calls would take 600 s
    assert "stopped; the ledger is closed" in served.output()
    for call in calls:
        with pytest.raises(grpc.RpcError):
            call.result(timeout=30)
    served.close()
    again = site.serve()
    assert "after the restart" in again.output(), again.output()
    assert again.stop() == 0
    site.verify_ledger()


def test_reflection_lists_the_services_and_can_be_switched_off(site: Site):
    def services(served: Served) -> list[str]:
        stub = reflection_pb2_grpc.ServerReflectionStub(served.channel("alice"))
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        [answer] = list(stub.ServerReflectionInfo(iter([ask]), timeout=10))
        return sorted(s.name for s in answer.list_services_response.service)

    on = site.serve()
    assert {"govgate.v1.DecisionService", "govgate.v1.OversightService",
            "govgate.v1.LedgerService", "grpc.health.v1.Health"} <= set(services(on))  # fmt: skip
    assert on.stop() == 0
    off = site.serve("--no-reflection")
    with pytest.raises(grpc.RpcError) as info:
        services(off)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert off.stop() == 0


def test_sigterm_drains_and_a_second_one_stops_what_is_still_in_flight(site: Site):
    served = site.serve("--grace", "60")
    waiting = served.decisions().Propose(propose("r-1", "reboot", "api-1"), timeout=30)
    assert state(waiting) == "PENDING_APPROVAL"
    watch = served.decisions().WatchDecision(
        decision_pb2.WatchDecisionRequest(decision_id=waiting.decision_id), timeout=120
    )
    assert state(next(watch)) == "PENDING_APPROVAL"  # a call in flight until it is decided
    started = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: "draining: NOT_SERVING" in served.output())
    assert served.proc.poll() is None  # the watch holds it within the 60 s grace
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=30) == 0
    assert time.monotonic() - started < 30
    assert "second signal: cancelling" in served.output()
    with pytest.raises(grpc.RpcError):
        next(watch)
    served.close()
    again = site.serve()  # nothing recorded was lost: the decision is still pending
    pending = again.oversight().ListPending(oversight_pb2.ListPendingRequest(), timeout=30)
    assert [d.decision_id for d in pending.decisions] == [waiting.decision_id]
    assert again.stop() == 0
    site.verify_ledger()


def test_json_logs_carry_events_but_no_secrets_or_free_text(site: Site):
    dead = free_port()  # a collector that is down: OpenTelemetry complains, in JSON too
    served = site.serve("--log-format", "json", env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{dead}",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1", "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRICS_EXPORTER": "none",
    })  # fmt: skip
    marker = "TOP-SECRET-JUSTIFICATION"
    request = propose("r-1", "resize", "web-1", vcpus="4")
    request.action.justification = f"{marker} \x1b[2J"  # refused: a control character
    with pytest.raises(grpc.RpcError):
        served.decisions().Propose(request, timeout=30)
    request.action.justification = marker
    done = served.decisions().Propose(request, timeout=30)
    assert served.stop() == 0
    lines = [json.loads(line) for line in served.output().splitlines() if line.strip()]
    events = [line["event"] for line in lines]
    assert any(e.startswith("listening on 127.0.0.1:") for e in events)
    assert "stopped; the ledger is closed" in events
    [decision] = [line for line in lines if line["event"] == "decision"]
    assert decision["decision_id"] == done.decision_id
    assert (decision["state"], decision["verb"], decision["target"]) == (
        "EXECUTED", "resize", "libvirt/web-1"
    )  # fmt: skip
    assert all({"time", "level", "event"} <= set(line) for line in lines)
    assert any(line.get("logger", "").startswith("opentelemetry") for line in lines), events
    text = served.output()
    assert marker not in text
    for key in (site.data / "keys").glob("*.key"):
        assert key.read_text().strip().split()[-1] not in text
    assert "PRIVATE KEY" not in text  # nor any TLS key


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector on loopback: keeps the spans it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []  # (trace id, parent span id, name)

    def Export(self, request: Any, context: Any) -> Any:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                self.spans += [(sp.trace_id.hex(), sp.parent_span_id.hex(), sp.name)
                               for sp in ss.spans]  # fmt: skip
        return trace_service_pb2.ExportTraceServiceResponse()


def test_serve_exports_the_callers_trace_over_otlp_when_asked(site: Site):
    collector = Collector()
    receiver = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    try:
        served = site.serve(env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRICS_EXPORTER": "none",  # this collector takes traces only
        })  # fmt: skip
        assert "tracing: otlp export" in served.output()
        trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        metadata = (("traceparent", f"00-{trace_id}-{parent}-01"),)
        request = propose("r-1", "resize", "web-1", vcpus="4")
        done = served.decisions().Propose(request, timeout=30, metadata=metadata)
        assert state(done) == "EXECUTED"
        assert served.stop() == 0  # the exporter is flushed on the way out
        mine = [s for s in collector.spans if s[0] == trace_id]
        names = {name for _, _, name in mine}
        assert "govgate.v1.DecisionService/Propose" in names
        assert "govgate.decide" in names
        [server_span] = [s for s in mine if s[2] == "govgate.v1.DecisionService/Propose"]
        assert server_span[1] == parent  # a child of the engine's span
    finally:
        receiver.stop(None)
    site.verify_ledger()
    run = subprocess.run(  # an operator goes from the trace to the signed records
        [*GOVGATE, "ledger", "query", "--data", str(site.data), "--trace-id", trace_id],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    kinds = [json.loads(line)["kind"] for line in run.stdout.splitlines()]
    assert kinds == ["decision", "outcome"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """Prometheus text exposition, as {'name{labels}': value}, without otel_scope labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("govgate_"):
            key, _, value = line.rpartition(" ")
            key = re.sub(r',?otel_scope_[a-z_]+="[^"]*"', "", key).replace("{,", "{")
            out[key.replace("{}", "")] = float(value)
    return out


def test_metrics_are_scraped_by_prometheus(site: Site):
    port = free_port()
    served = site.serve("--metrics-listen", f"127.0.0.1:{port}")
    executed = served.decisions().Propose(propose("r-1", "resize", "web-1", vcpus="4"), timeout=30)
    waiting = served.decisions().Propose(propose("r-2", "reboot", "api-1"), timeout=30)
    assert (state(executed), state(waiting)) == ("EXECUTED", "PENDING_APPROVAL")
    before = scrape(port)
    assert before["govgate_approvals_pending"] == 1
    review = oversight_pb2.ReviewRequest(decision_id=waiting.decision_id, reason="checked",
                                         request_digest=waiting.request_digest)  # fmt: skip
    served.oversight().Approve(review, timeout=30)
    after = scrape(port)
    state_verb = 'govgate_decisions_total{{govgate_decision_state="{}",govgate_decision_verb="{}"}}'
    assert after[state_verb.format("EXECUTED", "resize")] == 1
    assert after[state_verb.format("PENDING_APPROVAL", "reboot")] == 1
    assert after["govgate_approvals_pending"] == 0
    assert after["govgate_approval_wait_seconds_count"] == 1
    for stage in ("decide", "describe", "score", "policy", "ledger.append", "execute"):
        assert after[f'govgate_decision_duration_seconds_count{{govgate_stage="{stage}"}}'] >= 1
    assert after["govgate_ledger_append_duration_seconds_count"] >= 5  # 2 + 1 + review + 1
    assert after["govgate_ledger_size"] >= 7  # key, policy, then these decisions' records
    assert served.stop() == 0
    assert f"metrics: prometheus (scrape http://127.0.0.1:{port}/metrics)" in served.output()
