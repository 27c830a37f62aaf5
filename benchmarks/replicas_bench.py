"""Replicas benchmark: governed decisions/s and latency with 1, 2 and 3 ``govgate serve``
replicas sharing one PostgreSQL ledger, and ledger appends/s on PostgreSQL against SQLite.

It starts its own PostgreSQL server (``tests/postgres_server.py``: fsync on,
``synchronous_commit = on``), then for each replica count N (``--replicas``):

* a fresh database, migrated (``ledger.postgres.migrate``), and a fresh data directory
  (signing key, HMAC salt, certificates) that all N replicas share;
* N ``govgate serve --ledger-url URL --replica rI`` processes on loopback, each on its own
  port, with ``gateway_bench``'s permissive benchmark policy (every low-risk proposal
  executes), so every decision takes the full path: describe, score, SHAP, a signed
  durable decision record in PostgreSQL, execute, outcome record;
* a load client in a separate process (async gRPC with mTLS) that warms every replica
  up, then runs a closed loop (``--concurrency`` unary ``Propose`` callers in all, spread
  over the replicas round-robin) and an open loop (``--rate`` requests/s in all, spread
  round-robin; latency measured from each call's scheduled time). The actions are
  ``gateway_bench``'s: low-risk resizes of the staging and development sample domains,
  alternating between two vCPU counts, each with a unique request id. A failure is any
  answer that is not EXECUTED, or a call that failed;
* the replicas are stopped with SIGTERM (each must exit 0); the ledger is exported
  (``govgate ledger export --ledger-url``) and verified with only the public key
  (``govgate ledger verify``), and must hold exactly one ``key`` record, one ``policy``
  record per replica start, and one ``decision`` and one ``outcome`` record per decision.

Then durable signed appends of ~1 KB records (``ledger_bench``'s records) through
``ledger.Ledger`` directly, with 1, 16 and 256 concurrent writers, for ``--append-seconds``
each, on SQLite (a fresh ``ledger.db``) and on PostgreSQL (a fresh database).

Every replica, PostgreSQL and the load client share this machine's cores (the output says
how many). On a 2-core machine more replicas cannot add CPU, so throughput cannot scale
with N here: what the figures show is that throughput does not collapse and latency stays
bounded as replicas contend for the log head. No target is set for these figures; the
script prints COLLAPSE if the closed-loop throughput with 2 or 3 replicas falls below half
of one replica's, or if a p99 with N replicas exceeds 5x one replica's.

Usage::

    .venv/bin/python benchmarks/replicas_bench.py             # 10 s phases, N = 1, 2, 3
    .venv/bin/python benchmarks/replicas_bench.py --quick     # smoke run: 3 s, N = 1, 2
    .venv/bin/python benchmarks/replicas_bench.py --replicas 1,3 --seconds 20 --json out.json

The last line of output is the figures as one JSON object. The machine is shared and
noisy: compare ratios, not absolute numbers, across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "benchmarks", REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from gateway_bench import (  # noqa: E402
    CALL_TIMEOUT,
    DOMAINS,
    PERMISSIVE_POLICY,
    PhaseResult,
    _machine_cpu_s,
    _proc_cpu_s,
    _Tally,
    paced,
    resize_request,
)
from ledger_bench import _draft  # noqa: E402

from ledger import DataDir, LedgerConfig  # noqa: E402

COLLAPSE_RATE = 0.5  # closed-loop decisions/s with N replicas below this x N=1's
COLLAPSE_P99 = 5.0  # p99 with N replicas above this x N=1's
APPEND_WRITERS = (1, 16, 256)
ORIGIN = "bench.example/replicas"


def say(line: str) -> None:
    """A progress line on standard error."""
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


# -- figures -------------------------------------------------------------------------------


@dataclass
class Phase(PhaseResult):
    """``gateway_bench``'s phase figures, plus PostgreSQL's CPU and the spread over replicas."""

    pg_cpu_s: float = 0.0  # the PostgreSQL server's processes (postmaster and backends)
    per_replica: dict[str, int] = field(default_factory=dict)  # answers by replica

    @property
    def others_cores(self) -> float:
        busy = self.machine_cpu_s - self.server_cpu_s - self.client_cpu_s - self.pg_cpu_s
        return max(0.0, busy) / self.seconds if self.seconds else 0.0

    def cores(self, cpu_s: float) -> float:
        return cpu_s / self.seconds if self.seconds else 0.0


@dataclass
class ReplicaRun:
    replicas: int
    phases: dict[str, Phase]
    warmup: int  # decisions before the measured phases
    warmup_failures: int
    exits: list[int]  # each replica's exit status after SIGTERM
    ledger_size: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # records by kind, from the database
    ledger_ok: bool = False
    ledger_detail: str = ""

    @property
    def decisions(self) -> int:
        return self.warmup + sum(p.decisions for p in self.phases.values())

    def problems(self) -> list[str]:
        """Why this run's figures are not governed, executed, recorded decisions."""
        out = []
        failures = self.warmup_failures + sum(p.failures for p in self.phases.values())
        if failures:
            out.append(f"{failures} answers not EXECUTED or calls failed")
        if any(code != 0 for code in self.exits):
            out.append(f"replicas exited with {self.exits} after SIGTERM")
        if not self.ledger_ok:
            out.append(f"the ledger did not verify: {self.ledger_detail}")
        expected = {"key": 1, "policy": self.replicas, "decision": self.decisions,
                    "outcome": self.decisions}  # fmt: skip
        if self.kinds != expected:
            out.append(f"the ledger holds {self.kinds}, expected {expected}")
        if self.ledger_size != sum(self.kinds.values()):
            out.append(f"the export has {self.ledger_size} records, the database "
                       f"{sum(self.kinds.values())}")  # fmt: skip
        return out


# -- the load client (a separate process) --------------------------------------------------


def _tree_cpu_s(root: int) -> float:
    """CPU seconds of process ``root`` and its children, with the children they reaped: the
    PostgreSQL postmaster and its backends (which each lead a process group of their own)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(entry.name) == root or int(fields[1]) == root:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


async def _client(config: dict[str, Any]) -> dict[str, Any]:
    """Warm every replica up, then the closed and the open loop; returns what it measured."""
    import grpc

    from gateway._proto.govgate.v1 import decision_pb2_grpc, types_pb2

    data = Path(config["data"])
    pids: list[int] = config["server_pids"]
    pg_pid = int(config["pg_pid"])
    domains: list[str] = config["domains"]
    vcpus: list[str] = config["vcpus"]
    seconds = float(config["seconds"])
    sequence = 0

    def make() -> Any:
        nonlocal sequence
        sequence += 1
        return resize_request(config["run"], sequence, domains, vcpus, "replicas-bench")

    state_name = types_pb2.DecisionState.Name
    creds = grpc.ssl_channel_credentials(
        (data / "certs" / "ca.pem").read_bytes(),
        (data / "certs" / "engine-1.key").read_bytes(),
        (data / "certs" / "engine-1.pem").read_bytes(),
    )
    channels = [grpc.aio.secure_channel(f"localhost:{port}", creds) for port in config["ports"]]
    stubs = [decision_pb2_grpc.DecisionServiceStub(c) for c in channels]
    names = [f"r{i + 1}" for i in range(len(stubs))]

    async def call(i: int, tally: _Tally, per: Counter[str], start: float) -> None:
        """One Propose to replica ``i``; latency counted from ``start`` (loop.time())."""
        loop = asyncio.get_running_loop()
        try:
            d = await stubs[i].Propose(make(), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            tally.errors[err.code().name] += 1
            return
        tally.answer(d, loop.time() - start, state_name)
        per[names[i]] += 1

    async def closed_loop(tally: _Tally, per: Counter[str]) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds

        async def caller(i: int) -> None:
            while loop.time() < end:
                await call(i, tally, per, loop.time())

        await asyncio.gather(*(caller(k % len(stubs)) for k in range(config["concurrency"])))

    async def open_loop(tally: _Tally, per: Counter[str]) -> None:
        await paced(float(config["rate"]), seconds, tally,
                    lambda k, due: call(k % len(stubs), tally, per, due))  # fmt: skip

    out: dict[str, Any] = {"phases": {}}
    try:
        # TLS handshakes, the first model calls, caches: on every replica.
        warm, per = _Tally("warmup"), Counter[str]()
        end = time.perf_counter() + float(config["warmup"])
        while time.perf_counter() < end:
            now = asyncio.get_running_loop().time()
            await asyncio.gather(*(call(i, warm, per, now) for i in list(range(len(stubs))) * 4))
        out["warmup"] = len(warm.latencies)
        out["warmup_failures"] = warm.result(0.0).failures
        for name, run in (("closed", closed_loop), ("open", open_loop)):
            print(f"  … {name} loop, {seconds:g} s", file=sys.stderr, flush=True)
            tally, per = _Tally(name), Counter[str]()
            gc.collect()
            cpu0, pg0 = time.process_time(), _tree_cpu_s(pg_pid)
            servers0 = sum(_proc_cpu_s(p) for p in pids)
            machine0, wall0 = _machine_cpu_s(), time.perf_counter()
            await run(tally, per)
            result = Phase(**asdict(tally.result(time.perf_counter() - wall0)))
            result.machine_cpu_s = _machine_cpu_s() - machine0
            result.server_cpu_s = sum(_proc_cpu_s(p) for p in pids) - servers0
            result.client_cpu_s = time.process_time() - cpu0
            result.pg_cpu_s = _tree_cpu_s(pg_pid) - pg0
            result.per_replica = dict(per)
            if name == "open":
                result.offered = float(config["rate"])
            out["phases"][name] = asdict(result)
    finally:
        for c in channels:
            await c.close()
    return out


def client_main(config_path: Path) -> None:
    config = json.loads(config_path.read_text())
    gc.collect()
    gc.freeze()  # the imports' objects: keep the cyclic GC's full passes short
    try:
        result = asyncio.run(_client(config))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        sys.exit(130)
    Path(config["out"]).write_text(json.dumps(result))


# -- the replicas under test ---------------------------------------------------------------


class Replica:
    """One ``govgate serve --replica NAME`` on the shared data directory and database."""

    def __init__(self, data: Path, url: str, name: str, policy: Path) -> None:
        self.name = name
        self.port_file = data / f"port-{name}"
        self.log_path = data / f"serve-{name}.log"
        govgate = str(Path(sys.executable).with_name("govgate"))
        self.cmd = [govgate, "serve", "--data", str(data), "--ledger-url", url,
                    "--replica", name, "--listen", "127.0.0.1:0",
                    "--port-file", str(self.port_file), "--policy", str(policy)]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def launch(self) -> None:
        # Tracing and metrics off (as govgate serve runs by default), whatever the caller's
        # environment says; the flags above say where the data and the ledger are.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GOVGATE_"))}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, deadline: float) -> None:
        assert self.proc is not None
        while not (self.port_file.exists() and self.port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"replica {self.name} did not start:\n{self.log_tail()}")
            time.sleep(0.05)
        self.port = int(self.port_file.read_text())

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60) -> int:
        """The exit status after :meth:`terminate`; killed (-9) if it takes too long."""
        if self.proc is None:
            return 0
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9


@contextlib.contextmanager
def _replicas(data: Path, url: str, count: int, policy: Path) -> Any:
    """``count`` replicas started at once; on the way out SIGTERM to all, then their exits
    (the yielded list of exit statuses is filled in then)."""
    replicas = [Replica(data, url, f"r{i + 1}", policy) for i in range(count)]
    exits: list[int] = []
    try:
        for r in replicas:
            r.launch()
        deadline = time.monotonic() + 180
        for r in replicas:
            r.wait_ready(deadline)
        yield replicas, exits
    finally:
        for r in replicas:
            r.terminate()
        exits.extend(r.wait() for r in replicas)


def _govgate(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    govgate = str(Path(sys.executable).with_name("govgate"))
    return subprocess.run(
        [govgate, *argv], check=False, capture_output=True, text=True, timeout=timeout
    )


def _fresh_data(path: Path) -> str:
    """A data directory with a signing key, the HMAC salt and certificates; the verifier key."""
    from gateway.identity import init_certs

    signer = DataDir(path).generate_key(ORIGIN)
    init_certs(path / "certs", ["engine-1"])
    (path / "bench-policy.toml").write_bytes(PERMISSIVE_POLICY)
    return signer.verifier_key


def _fresh_database(pg: Any, name: str) -> str:
    from ledger.postgres import migrate

    url: str = pg.create_database(name)
    asyncio.run(migrate(url))
    return url


def run_replicas(pg: Any, base: Path, n: int, args: argparse.Namespace) -> ReplicaRun:
    db = f"replicas_{n}"
    url = _fresh_database(pg, db)
    data = base / f"replicas-{n}"
    data.mkdir()
    vkey = _fresh_data(data)
    say(f"N={n}: starting {n} replica(s) on {pg.url(db)}")
    policy = data / "bench-policy.toml"
    with _replicas(data, url, n, policy) as (replicas, exits):
        say(f"N={n}: listening on ports {', '.join(str(r.port) for r in replicas)}; load client")
        out = data / "client.json"
        config = {
            "data": str(data), "ports": [r.port for r in replicas],
            "server_pids": [r.pid for r in replicas], "pg_pid": pg.pid, "run": f"n{n}",
            "seconds": args.seconds, "rate": args.rate, "concurrency": args.concurrency,
            "warmup": args.warmup, "domains": DOMAINS.split(","), "vcpus": ["3", "4"],
            "out": str(out),
        }  # fmt: skip
        config_path = data / "client-config.json"
        config_path.write_text(json.dumps(config))
        budget = 2 * args.seconds + args.warmup + 2 * CALL_TIMEOUT + 120
        client = subprocess.run(
            [sys.executable, __file__, "--client", str(config_path)], check=False, timeout=budget
        )
        if client.returncode != 0 or not out.exists():
            tails = "\n".join(f"--- {r.name}:\n{r.log_tail()}" for r in replicas)
            raise RuntimeError(f"the load client failed ({client.returncode}):\n{tails}")
        measured = json.loads(out.read_text())
        say(f"N={n}: stopping the replicas (SIGTERM)")
    run = ReplicaRun(
        replicas=n,
        phases={k: Phase(**v) for k, v in measured["phases"].items()},
        warmup=int(measured["warmup"]),
        warmup_failures=int(measured["warmup_failures"]),
        exits=exits,
    )
    say(f"N={n}: exporting and verifying the ledger")
    export = data / "export.jsonl"
    done = _govgate("ledger", "export", "--data", str(data), "--ledger-url", url,
                    "--out", str(export))  # fmt: skip
    if done.returncode != 0:
        run.ledger_detail = f"export failed: {done.stderr.strip()[-500:]}"
    else:
        with export.open() as f:
            run.ledger_size = int(json.loads(f.readline())["size"])
        done = _govgate("ledger", "verify", str(export), "--key", vkey, "--quiet")
        text = done.stdout + done.stderr
        run.ledger_ok = done.returncode == 0
        # The verdict ("OK n records, ..." or the failure) is the end of the output.
        detail = " ".join(text[text.find("OK ") :].split()) if "OK " in text else text.strip()
        run.ledger_detail = detail.split("; keys")[0][:300] or f"exit {done.returncode}"
    rows = pg.psql("SELECT kind, count(*) FROM records GROUP BY kind", database=db)
    run.kinds = {k: int(v) for k, v in (line.split("|") for line in rows.split())}
    if not args.keep:
        pg.drop_database(db)
        shutil.rmtree(data, ignore_errors=True)
    return run


# -- ledger appends ------------------------------------------------------------------------


async def _append_rate(d: DataDir, writers: int, seconds: float) -> tuple[float, int]:
    """Durable signed appends/s of ~1 KB records from ``writers`` tasks for ``seconds``."""
    drafts = [_draft(i) for i in range(1024)]
    config = LedgerConfig(checkpoint_every=0, checkpoint_interval=0)
    async with d.open_ledger(config) as log:
        await log.append(drafts[0])  # warm: genesis, connections, frontier cache
        count = 0
        loop = asyncio.get_running_loop()
        start = loop.time()
        end = start + seconds

        async def writer(w: int) -> None:
            nonlocal count
            k = w
            while loop.time() < end:
                await log.append(drafts[k % len(drafts)])
                count += 1
                k += writers

        await asyncio.gather(*(writer(w) for w in range(writers)))
        return count / (loop.time() - start), count


def run_appends(pg: Any, base: Path, args: argparse.Namespace) -> dict[str, dict[int, float]]:
    rates: dict[str, dict[int, float]] = {"sqlite": {}, "postgres": {}}
    for writers in APPEND_WRITERS:
        for backend in ("sqlite", "postgres"):
            path = base / f"append-{backend}-{writers}"
            db = f"append_{writers}"
            url = _fresh_database(pg, db) if backend == "postgres" else None
            d = DataDir(path, url)
            d.generate_key(ORIGIN)
            rate, count = asyncio.run(_append_rate(d, writers, args.append_seconds))
            rates[backend][writers] = rate
            say(f"appends: {backend:<8} {writers:>3} writers: {rate:>8,.0f}/s ({count:,} records)")
            if url is not None:
                pg.drop_database(db)
            shutil.rmtree(path, ignore_errors=True)
    return rates


# -- report --------------------------------------------------------------------------------


def _print_replicas(runs: list[ReplicaRun], args: argparse.Namespace) -> None:
    print(f"\ngoverned decisions (unary Propose over mTLS), {args.seconds:g} s per phase")
    print(f"{'N':>2}  {'closed/s':>8} {'p50 ms':>7} {'p99 ms':>7}   "
          f"{'open/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'late p99':>8}   {'fail':>4}   "
          f"{'gateway':>7} {'pg':>5} {'client':>6} {'others':>6}  {'CPU ms/dec':>10}")  # fmt: skip
    for r in runs:
        c, o = r.phases["closed"], r.phases["open"]
        fail = r.warmup_failures + c.failures + o.failures
        cpu = (c.server_cpu_s + c.pg_cpu_s) / max(c.decisions, 1) * 1e3
        print(f"{r.replicas:>2}  {c.rate:>8,.0f} {c.p50_ms:>7.1f} {c.p99_ms:>7.1f}   "
              f"{o.rate:>6,.0f} {o.p50_ms:>7.1f} {o.p99_ms:>7.1f} {o.late_p99_ms:>8.1f}   "
              f"{fail:>4}   {c.cores(c.server_cpu_s):>7.2f} {c.cores(c.pg_cpu_s):>5.2f} "
              f"{c.cores(c.client_cpu_s):>6.2f} {c.others_cores:>6.2f}  {cpu:>10.2f}")  # fmt: skip
    print(
        f"closed: {args.concurrency} callers in all, round-robin over the replicas; open: "
        f"{args.rate:g}/s offered in all, latency from the scheduled time ('late p99': how "
        "late the client itself fired). Cores used during the closed loop: gateway = all "
        "replicas together, pg = the PostgreSQL server, others = everything else on the "
        "machine; CPU ms/dec = gateway + PostgreSQL CPU per closed-loop decision."
    )
    for r in runs:
        spread = ", ".join(f"{k} {v:,}" for k, v in sorted(r.phases["closed"].per_replica.items()))
        verdict = "verified" if r.ledger_ok else "DID NOT VERIFY"
        kinds = ", ".join(f"{v:,} {k}" for k, v in sorted(r.kinds.items()))
        print(f"  N={r.replicas}: {r.decisions:,} decisions (warm-up {r.warmup:,}); closed loop "
              f"by replica: {spread}; exits {r.exits}; ledger {r.ledger_size:,} records "
              f"({kinds}) {verdict}: {r.ledger_detail}")  # fmt: skip
        for name, p in r.phases.items():
            if p.failures:
                print(f"    {name}: FAILURES: states {p.states}, errors {p.errors}")


def _collapse(runs: list[ReplicaRun]) -> list[str]:
    """The COLLAPSE findings: N >= 2 against N = 1."""
    one = next((r for r in runs if r.replicas == 1), None)
    if one is None:
        return []
    out = []
    for r in runs:
        if r.replicas < 2:
            continue
        rate, base = r.phases["closed"].rate, one.phases["closed"].rate
        if rate < COLLAPSE_RATE * base:
            out.append(f"N={r.replicas} closed-loop {rate:,.0f}/s is below "
                       f"{COLLAPSE_RATE:g} x N=1's {base:,.0f}/s")  # fmt: skip
        for phase in ("closed", "open"):
            p99, base99 = r.phases[phase].p99_ms, one.phases[phase].p99_ms
            if base99 and p99 > COLLAPSE_P99 * base99:
                out.append(f"N={r.replicas} {phase}-loop p99 {p99:.1f} ms exceeds "
                           f"{COLLAPSE_P99:g} x N=1's {base99:.1f} ms")  # fmt: skip
    return out


def _print_appends(rates: dict[str, dict[int, float]], args: argparse.Namespace) -> None:
    print(f"\nledger appends: durable signed ~1 KB records, {args.append_seconds:g} s each, "
          "Ledger in this process")  # fmt: skip
    print(f"{'writers':>7}  {'SQLite/s':>9}  {'PostgreSQL/s':>12}  {'PG/SQLite':>9}")
    for w in APPEND_WRITERS:
        a, b = rates["sqlite"].get(w, 0.0), rates["postgres"].get(w, 0.0)
        print(f"{w:>7}  {a:>9,.0f}  {b:>12,.0f}  {b / a if a else 0.0:>9.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--replicas", default="1,2,3", help="replica counts to measure, in order")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per load phase")
    ap.add_argument("--concurrency", type=int, default=64,
                    help="closed-loop callers in all, spread over the replicas")  # fmt: skip
    ap.add_argument("--rate", type=float, default=150.0,
                    help="open-loop requests/s in all, spread over the replicas")  # fmt: skip
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured calls")
    ap.add_argument("--append-seconds", type=float, default=5.0,
                    help="seconds per append measurement")  # fmt: skip
    ap.add_argument("--parts", default="replicas,appends", help="which parts to run")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: --seconds 3 --append-seconds 2 --replicas 1,2")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep data directories and databases")
    ap.add_argument("--client", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client is not None:
        client_main(args.client)
        return
    if args.quick:
        args.seconds, args.append_seconds, args.replicas = 3.0, 2.0, "1,2"
    counts = [int(x) for x in args.replicas.split(",") if x]
    parts = {p for p in args.parts.split(",") if p}
    if not counts or min(counts) < 1 or parts - {"replicas", "appends"}:
        ap.error("--replicas takes counts >= 1; --parts takes replicas and/or appends")

    # SIGTERM as Ctrl-C: the finally blocks stop the replicas and PostgreSQL, remove temp dirs.
    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    from postgres_server import PostgresServer  # type: ignore[import-not-found]

    cores = os.cpu_count() or 1
    print(f"govgate replicas benchmark — this machine has {cores} CPU cores; every replica, "
          f"PostgreSQL and the load client share them, so scaling beyond one replica is "
          f"bounded by those {cores} cores: what matters is that throughput does not collapse "
          "and latency stays bounded as replicas are added.", flush=True)  # fmt: skip
    base = Path(tempfile.mkdtemp(prefix="govgate-replicas-bench-"))
    runs: list[ReplicaRun] = []
    rates: dict[str, dict[int, float]] = {}
    try:
        say("starting PostgreSQL")
        with PostgresServer() as pg:
            version = pg.psql("SHOW server_version").strip()
            print(f"PostgreSQL {version} on loopback (fsync on, synchronous_commit on), "
                  f"replicas {counts}, work dir {base}", flush=True)  # fmt: skip
            if "replicas" in parts:
                for n in counts:
                    runs.append(run_replicas(pg, base, n, args))
                    c, o = runs[-1].phases["closed"], runs[-1].phases["open"]
                    ok = "verified" if runs[-1].ledger_ok else "NOT verified"
                    say(f"N={n}: closed {c.rate:,.0f}/s p99 {c.p99_ms:.1f} ms; open "
                        f"{o.rate:,.0f}/s p99 {o.p99_ms:.1f} ms; ledger {ok}")  # fmt: skip
            if "appends" in parts:
                rates = run_appends(pg, base, args)
    finally:
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)

    if runs:
        _print_replicas(runs, args)
    if rates:
        _print_appends(rates, args)
    collapse = _collapse(runs)
    invalid = [f"N={r.replicas}: {p}" for r in runs for p in r.problems()]
    print()
    if runs:
        if collapse:
            print("COLLAPSE: " + "; ".join(collapse))
        elif any(r.replicas == 1 for r in runs) and len(runs) > 1:
            print(
                f"no collapse: closed-loop throughput with N >= 2 stayed above "
                f"{COLLAPSE_RATE:g} x N=1's, every p99 within {COLLAPSE_P99:g} x N=1's"
            )
        if invalid:
            print("INVALID: " + "; ".join(invalid))
        else:
            print("valid: every answer was EXECUTED, every replica exited 0, and every ledger "
                  "verified with exactly its expected records")  # fmt: skip
    doc = {
        "cpu_cores": cores,
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "replicas": {
            str(r.replicas): {
                "closed_rate": r.phases["closed"].rate,
                "closed_p50_ms": r.phases["closed"].p50_ms,
                "closed_p99_ms": r.phases["closed"].p99_ms,
                "open_rate": r.phases["open"].rate,
                "open_p50_ms": r.phases["open"].p50_ms,
                "open_p99_ms": r.phases["open"].p99_ms,
                "failures": r.warmup_failures + sum(p.failures for p in r.phases.values()),
                "gateway_cores": r.phases["closed"].cores(r.phases["closed"].server_cpu_s),
                "pg_cores": r.phases["closed"].cores(r.phases["closed"].pg_cpu_s),
                "decisions": r.decisions,
                "ledger_records": r.ledger_size,
                "ledger_verified": r.ledger_ok,
                "exits": r.exits,
            }
            for r in runs
        },
        "appends": {b: {str(w): v for w, v in by.items()} for b, by in rates.items()},
        "collapse": collapse,
        "valid": not invalid,
    }
    line = json.dumps(doc, separators=(",", ":"))
    if args.json:
        args.json.write_text(line + "\n")
    print(line)
    if invalid:
        sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: everything was stopped and removed above
        print("\ninterrupted; the replicas, PostgreSQL and the work directory are gone",
              file=sys.stderr)  # fmt: skip
        sys.exit(130)
