"""Ledger benchmark: durable signed appends, export, verify, proofs, memory.

Prints figures and compares them with the targets of the ledger issue:

* durable signed appends of ~1 KB records with 1, 16 and 256 concurrent
  writers: >= 15,000 records/s at 256 writers;
* ``verify`` of a 1,000,000-record export: >= 12,000 records/s with every
  signature checked, >= 200,000 records/s checking chain, roots and
  checkpoints only; peak RSS < 300 MB;
* one inclusion proof in a 1,000,000-record ledger: < 2 ms, log2(n) hashes.

Usage::

    python benchmarks/ledger_bench.py                 # full run (~1M records; minutes)
    python benchmarks/ledger_bench.py --records 100000 --repeat 3

Each figure is the median of ``--repeat`` runs. The machine is shared and
noisy: compare ratios, not absolute numbers, across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ledger import DataDir, Draft, LedgerConfig
from ledger.merkle import verify_inclusion

TARGETS = {
    "append_256": 15_000.0,
    "verify_signatures": 12_000.0,
    "verify_fast": 200_000.0,
    "proof_ms": 2.0,
    "rss_mb": 300.0,
}


def _body(i: int) -> dict[str, object]:
    """A ~1 KB decision body, float-free like the gateway's."""
    return {
        "verb": "write",
        "risk": f"0.{i % 10000:04d}",
        "verdict": "execute",
        "engine": "autoscaler",
        "parameters": {"vcpus": 4, "memory_mib": 8192},
        "contributions": [
            {"feature": f"feature_{k:02d}", "value": f"0.{k:04d}"} for k in range(12)
        ],
        "justification": "queue depth above target for 5 minutes; adding capacity " * 5,
    }


def _draft(i: int) -> Draft:
    return Draft(
        "decision",
        _body(i),
        trace_id=f"{i + 1:032x}",
        actor="autoscaler",
        target=f"libvirt/vm-{i % 500}",
        decision_id=f"d-{i:08d}",
    )


async def _appends(d: DataDir, writers: int, count: int) -> float:
    """Records/s for ``count`` appends spread over ``writers`` tasks."""
    # The sealing process starts with the ledger, as `govgate serve` starts it.
    config = LedgerConfig(
        checkpoint_every=10_000, checkpoint_interval=1.0, seal_process_at_start=True
    )
    async with d.open_ledger(config) as log:
        await log.append(_draft(0))  # warm: genesis, frontier cache
        per = count // writers
        drafts = [_draft(i) for i in range(per * writers)]
        start = time.perf_counter()

        async def writer(w: int) -> None:
            for k in range(per):
                await log.append(drafts[w * per + k])

        await asyncio.gather(*(writer(w) for w in range(writers)))
        return per * writers / (time.perf_counter() - start)


async def _fill(d: DataDir, total: int) -> None:
    """Grow the ledger to ``total`` records with large batches (setup, not measured)."""
    config = LedgerConfig(checkpoint_every=100_000, checkpoint_interval=0, max_batch=4096)
    async with d.open_ledger(config) as log:
        head, _ = await log.store.snapshot()
        done = head.size
        step = 8192
        last = time.perf_counter()
        while done < total:
            n = min(step, total - done)
            await log.append_many([_draft(done + k) for k in range(n)])
            done += n
            if time.perf_counter() - last > 5:
                print(f"  … {done:,}/{total:,} records", file=sys.stderr)
                last = time.perf_counter()


def _child_rss(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` and return (seconds, peak RSS in MB) of that child alone."""
    code = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "dt = time.perf_counter() - t\n"
        "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True
    ).stdout.split()
    return float(out[0]), float(out[1])


async def _proof_latency(d: DataDir, samples: int) -> tuple[float, int, int]:
    async with d.open_ledger(LedgerConfig(checkpoint_interval=0, checkpoint_on_close=False)) as log:
        cp = await log.checkpoint()
        rng = random.Random(7)
        times = []
        hashes = 0
        for _ in range(samples):
            i = rng.randrange(cp.size)
            t = time.perf_counter()
            p = await log.inclusion_proof(i, cp.size)
            times.append(time.perf_counter() - t)
            verify_inclusion(p.leaf_hash, i, cp.size, p.proof, cp.root)
            hashes = len(p.proof)
        return statistics.median(times) * 1000, hashes, cp.size


def _status(value: float, target: float, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "meets" if ok else "MISSES"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000, help="ledger size for verify/proofs")
    ap.add_argument("--appends", type=int, default=20_000, help="appends per writer setting")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median reported)")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()

    base = args.dir or Path(tempfile.mkdtemp(prefix="govgate-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    govgate = str(Path(sys.executable).with_name("govgate"))
    figures: dict[str, float] = {}
    print(f"govgate ledger benchmark — {os.cpu_count()} CPUs, work dir {base}")

    print("\n[appends] durable signed ~1 KB records")
    for writers in (1, 16, 256):
        runs = []
        for _ in range(args.repeat):
            d = DataDir(tempfile.mkdtemp(dir=base, prefix=f"append-{writers}-"))
            d.generate_key("bench.example/log")
            count = args.appends if writers > 1 else min(args.appends, 3000)
            runs.append(asyncio.run(_appends(d, writers, count)))
            shutil.rmtree(d.path)
        figures[f"append_{writers}"] = statistics.median(runs)
        line = f"  {writers:>3} writers: {statistics.median(runs):>9,.0f} records/s"
        line += f"  (runs: {', '.join(f'{x:,.0f}' for x in runs)})"
        if writers == 256:
            target = TARGETS["append_256"]
            line += f"  target >= {target:,.0f}: {_status(figures['append_256'], target)}"
        print(line)

    print(f"\n[ledger of {args.records:,} records] building (not measured) …")
    d = DataDir(base / "big")
    if not d.key_path.exists():
        d.generate_key("bench.example/log")
    asyncio.run(_fill(d, args.records))
    vkey = d.signer().verifier_key
    export = base / "big.jsonl"

    secs, rss = _child_rss(
        [govgate, "ledger", "export", "--data", str(d.path), "--out", str(export)]
    )
    figures["export_rps"] = args.records / secs
    figures["export_rss_mb"] = rss
    print(f"  export: {args.records / secs:,.0f} records/s, peak RSS {rss:.0f} MB")

    for mode, flag, target_key in (
        ("signatures", "--signatures", "verify_signatures"),
        ("fast (no record signatures)", "--no-signatures", "verify_fast"),
    ):
        runs, peak = [], 0.0
        for _ in range(args.repeat):
            secs, rss = _child_rss(
                [govgate, "ledger", "verify", str(export), "--key", vkey, flag, "--quiet"]
            )
            runs.append(args.records / secs)
            peak = max(peak, rss)
        figures[target_key] = statistics.median(runs)
        figures[f"{target_key}_rss_mb"] = peak
        print(
            f"  verify, {mode}: {statistics.median(runs):,.0f} records/s "
            f"(target >= {TARGETS[target_key]:,.0f}: "
            f"{_status(statistics.median(runs), TARGETS[target_key])}), "
            f"peak RSS {peak:.0f} MB (target < {TARGETS['rss_mb']:.0f}: "
            f"{_status(peak, TARGETS['rss_mb'], higher_is_better=False)})"
        )

    ms, hashes, size = asyncio.run(_proof_latency(d, 200))
    figures["proof_ms"] = ms
    print(
        f"  inclusion proof in a tree of {size:,}: median {ms:.3f} ms, {hashes} hashes "
        f"(target < {TARGETS['proof_ms']} ms: "
        f"{_status(ms, TARGETS['proof_ms'], higher_is_better=False)})"
    )
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
