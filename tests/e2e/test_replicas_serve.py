"""Three ``govgate serve`` replicas on one real PostgreSQL ledger.

Load goes to all three; one replica is killed with SIGKILL mid-load and started again
under the same name. Afterwards no acknowledged decision is missing, no request was
decided twice, no decision has two outcomes, an approval given through one replica
runs what another recorded, a halt through one stops the others, and the ledger is one
chain that verifies with its signed checkpoints and proofs. A second test restarts
PostgreSQL itself under load: the replicas fail closed while it is down and recover by
themselves.

Each replica's libvirt test driver lives in its own process, so "ran once" is read from
the ledger (one ``outcome`` record per decision), not from the domains.
"""

from __future__ import annotations

import base64
import itertools
import json
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from postgres_server import PostgresServer
from test_serve import GOVGATE, Served, Site, propose, site, state

from gateway._proto.govgate.v1 import decision_pb2, oversight_pb2, types_pb2
from ledger import DataDir
from ledger.checkpoint import open_checkpoint
from ledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from ledger.note import NoteVerifier

__all__ = ["site"]  # the fixture, shared with test_serve

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.DEADLINE_EXCEEDED)  # fmt: skip


def govgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GOVGATE, *args], capture_output=True, text=True, timeout=120)


def migrated(url: str) -> str:
    done = govgate("db", "migrate", "--ledger-url", url)
    assert done.returncode == 0, done.stderr
    assert "schema version 1" in done.stderr
    again = govgate("db", "migrate", "--ledger-url", url)
    assert "nothing to do" in again.stderr
    return url


def replica(site: Site, url: str, name: str) -> Served:
    return site.serve("--ledger-url", url, "--replica", name)


class Load:
    """Engines sending proposals round-robin to the replicas; a call that fails with a
    retryable status is sent again, same request id, to the next replica."""

    def __init__(self, replicas: list[Served], senders: int = 6) -> None:
        self.replicas = replicas
        self.acked: dict[str, tuple[str, str]] = {}  # request id: (decision id, state)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._send, args=(i,)) for i in range(senders)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)

    def _send(self, sender: int) -> None:
        n = 0
        while not self._stop.is_set():
            request_id = f"load-{sender}-{n}"
            n += 1
            req = propose(request_id, "resize", f"web-{1 + n % 2}", vcpus=str(2 + n % 3))
            give_up = time.monotonic() + 60
            for attempt in itertools.count():
                if time.monotonic() > give_up:
                    with self._lock:
                        self.errors.append(f"{request_id}: still failing after 60 s")
                    break
                served = self.replicas[(sender + n + attempt) % len(self.replicas)]
                try:
                    d = served.decisions().Propose(req, timeout=10)
                except grpc.RpcError as err:
                    if err.code() in RETRYABLE:
                        time.sleep(0.1)
                        continue
                    with self._lock:
                        self.errors.append(f"{request_id}: {err.code()} {err.details()}")
                    break
                except ValueError:  # the channel was closed under us (replica replaced)
                    time.sleep(0.1)
                    continue
                with self._lock:
                    self.acked[request_id] = (d.decision_id, state(d))
                break

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert time.monotonic() < deadline, f"only {len(self.acked)} decisions acked"
            time.sleep(0.05)


def records(site: Site, url: str) -> list[dict[str, object]]:
    done = govgate("ledger", "query", "--data", str(site.data), "--ledger-url", url,
                   "--limit", "1000000")  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def verify(site: Site, url: str) -> None:
    """Export and verify; an inclusion proof and a consistency proof from the CLI check."""
    export = site.tmp / "export.jsonl"
    done = govgate("ledger", "export", "--data", str(site.data), "--ledger-url", url,
                   "--out", str(export))  # fmt: skip
    assert done.returncode == 0, done.stderr
    key = DataDir(site.data).signer().verifier.key_string
    checked = govgate("ledger", "verify", str(export), "--key", key, "--quiet")
    assert checked.returncode == 0, checked.stderr
    note = govgate("ledger", "checkpoint", "--data", str(site.data), "--ledger-url", url)
    cp = open_checkpoint(note.stdout, [NoteVerifier.from_key_string(key)])
    proof = json.loads(govgate("ledger", "proof", "--data", str(site.data), "--ledger-url", url,
                               "--index", "3", "--size", str(cp.size)).stdout)  # fmt: skip
    verify_inclusion(
        leaf_hash(base64.b64decode(proof["leaf"])), 3, cp.size,
        [base64.b64decode(h) for h in proof["proof"]], cp.root,
    )  # fmt: skip
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    notes = [x["checkpoint"] for x in lines if "checkpoint" in x]
    assert len(notes) >= 2, "the elected signer signed checkpoints as the log grew"
    old = open_checkpoint(notes[0], [NoteVerifier.from_key_string(key)])
    consistent = json.loads(govgate("ledger", "consistency", "--data", str(site.data),
                                    "--ledger-url", url, "--old", str(old.size),
                                    "--size", str(cp.size)).stdout)  # fmt: skip
    verify_consistency(old.size, cp.size, [base64.b64decode(h) for h in consistent["proof"]],
                       old.root, cp.root)  # fmt: skip


def test_three_replicas_survive_a_sigkill_and_share_approvals_and_halts(
    site: Site, postgres_url: str
):
    url = migrated(postgres_url)
    replicas = [replica(site, url, f"r{i}") for i in (1, 2, 3)]
    with Load(replicas) as load:
        load.wait_for(30)
        victim = replicas[1]
        victim.proc.send_signal(signal.SIGKILL)
        assert victim.proc.wait(timeout=30) == -signal.SIGKILL
        load.wait_for(len(load.acked) + 30)  # the other two carry on
        victim.close()
        replicas[1] = replica(site, url, "r2")  # the same name: it finishes its own work
        load.wait_for(len(load.acked) + 30)
    assert load.errors == []
    assert "rebuilt from" in replicas[1].output()

    # An approval through r3 runs what r1 recorded; r1 then reports it executed.
    waiting = replicas[0].decisions().Propose(propose("p-1", "reboot", "api-1"), timeout=30)
    assert state(waiting) == "PENDING_APPROVAL", waiting.reasons
    listed = replicas[2].oversight().ListPending(oversight_pb2.ListPendingRequest(), timeout=30)
    assert waiting.decision_id in [d.decision_id for d in listed.decisions]
    review = oversight_pb2.ReviewRequest(decision_id=waiting.decision_id, reason="checked",
                                         request_digest=waiting.request_digest)  # fmt: skip
    approved = replicas[2].oversight().Approve(review, timeout=30)
    assert state(approved) == "EXECUTED", approved.reasons
    get = decision_pb2.GetDecisionRequest(decision_id=waiting.decision_id)
    assert state(replicas[0].decisions().GetDecision(get, timeout=30)) == "EXECUTED"

    # A halt through r2 stops r1 and r3 at once; a resume through r3 lifts it for all.
    everything = types_pb2.Scope(all=True)
    replicas[1].oversight().Halt(oversight_pb2.HaltRequest(scope=everything, reason="drill"),
                                 timeout=30)  # fmt: skip
    for i, served in ((0, replicas[0]), (2, replicas[2])):
        halted = served.decisions().Propose(propose(f"h-{i}", "resize", "web-1", vcpus="3"),
                                            timeout=30)  # fmt: skip
        assert state(halted) == "HALTED", halted.reasons
    replicas[2].oversight().Resume(oversight_pb2.ResumeRequest(scope=everything, reason="over"),
                                   timeout=30)  # fmt: skip
    after = replicas[0].decisions().Propose(propose("h-9", "resize", "web-1", vcpus="3"),
                                            timeout=30)  # fmt: skip
    assert state(after) == "EXECUTED", after.reasons
    for served in replicas:
        assert served.stop() == 0, served.output()

    held = records(site, url)
    decided = Counter(str(r["body"]["request_id"]) for r in held  # type: ignore[index]
                      if r["kind"] == "decision")  # fmt: skip
    assert [rid for rid, n in decided.items() if n > 1] == []  # no request decided twice
    outcomes = Counter(str(r["decision_id"]) for r in held if r["kind"] == "outcome")
    assert [d for d, n in outcomes.items() if n > 1] == []  # nothing ran twice
    by_id = {str(r["decision_id"]): r for r in held if r["kind"] == "decision"}
    for request_id, (decision_id, acked_state) in load.acked.items():
        assert decision_id in by_id, f"acknowledged {request_id} is not in the ledger"
        if acked_state == "EXECUTED":
            assert outcomes[decision_id] == 1
    interrupted = [d for d in by_id if by_id[d]["body"].get("verdict") == "EXECUTING"  # type: ignore[union-attr]
                   and outcomes[d] == 0]  # fmt: skip
    assert interrupted == []  # what the SIGKILL interrupted, the restart finished
    verify(site, url)


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    """A server of this test's own: it is restarted, which the session's must not be."""
    with PostgresServer() as server:
        yield server


def health(served: Served) -> int:
    stub = health_pb2_grpc.HealthStub(served.channel("engine-1"))
    try:
        return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status)
    except grpc.RpcError:
        return -1


def test_replicas_fail_closed_while_postgresql_restarts_and_recover(
    site: Site, own_server: PostgresServer
):
    url = migrated(own_server.create_database("govgate"))
    replicas = [replica(site, url, name) for name in ("a", "b")]
    with Load(replicas, senders=4) as load:
        load.wait_for(20)
        own_server.kill()  # the database crashes under load
        for i, served in enumerate(replicas):
            with pytest.raises(grpc.RpcError) as down:
                served.decisions().Propose(propose(f"pg-d{i}", "resize", "web-2", vcpus="3"),
                                           timeout=30)  # fmt: skip
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE  # fail closed: nothing ran
        deadline = time.monotonic() + 20
        while any(health(s) == health_pb2.HealthCheckResponse.SERVING for s in replicas):
            assert time.monotonic() < deadline, "health still says SERVING with the database down"
            time.sleep(0.2)
        own_server.restart()
        deadline = time.monotonic() + 60
        while any(health(s) != health_pb2.HealthCheckResponse.SERVING for s in replicas):
            assert time.monotonic() < deadline, "the replicas did not recover by themselves"
            time.sleep(0.2)
        load.wait_for(len(load.acked) + 20)  # the engines' retries went through
    assert load.errors == []
    for served in replicas:
        assert served.stop() == 0, served.output()
    held = records(site, url)
    decided = {str(r["decision_id"]): r for r in held if r["kind"] == "decision"}
    assert not any(str(r["body"]["request_id"]).startswith("pg-d")  # type: ignore[index]
                   for r in decided.values())  # fmt: skip
    assert all(d in decided for d, _ in load.acked.values())  # nothing acknowledged was lost
    assert len(decided) == len({str(r["body"]["request_id"]) for r in decided.values()})  # type: ignore[index]
    verify(site, url)
