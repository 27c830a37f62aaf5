"""Runtime adapter benchmark: describe and verb latency on libvirt's test driver.

Prints p50/p99 of ``describe`` (target: p50 < 2 ms on ``test:///default``, issue #4)
and of plan + execute for each verb, through the real adapter: event loop,
worker thread, libvirt-python, the test driver. Medians over ``--repeat`` runs.

    .venv/bin/python benchmarks/adapters_bench.py [--calls 2000] [--repeat 3]

(The real QEMU guest and containerd figures come with those runtimes.)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapters.action import Action, Target
from adapters.libvirt import LibvirtAdapter, LibvirtConfig

TARGET_DESCRIBE_P50_MS = 2.0
T = Target("libvirt", "test")
VERBS = [  # each pair leaves the domain as it found it
    ("suspend", {}), ("resume", {}), ("destroy", {}), ("start", {}),
    ("resize", {"vcpus": "1"}), ("resize", {"vcpus": "2"}),
    ("snapshot", {"name": "bench"}), ("snapshot-delete", {"snapshot": "bench"}),
    ("reboot", {}), ("save", {}), ("start", {}),
]  # fmt: skip


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def one_run(calls: int) -> tuple[list[float], dict[str, list[float]]]:
    async with LibvirtAdapter(LibvirtConfig(uri="test:///default")) as lv:
        await lv.describe(T)
        describe = []
        for _ in range(calls):
            t = time.perf_counter()
            await lv.describe(T)
            describe.append(time.perf_counter() - t)
        verbs: dict[str, list[float]] = {}
        for _ in range(max(1, calls // 100)):
            for verb, params in VERBS:
                action = Action.from_json(
                    {"verb": verb, "target": {"runtime": "libvirt", "resource": "test"},
                     "parameters": params}
                )  # fmt: skip
                t = time.perf_counter()
                await lv.execute(await lv.plan(action))
                verbs.setdefault(verb, []).append(time.perf_counter() - t)
        return describe, verbs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000, help="describe calls per run")
    ap.add_argument("--repeat", type=int, default=3, help="runs (figures are medians)")
    args = ap.parse_args()
    runs = [asyncio.run(one_run(args.calls)) for _ in range(args.repeat)]
    p50 = statistics.median(pct(d, 0.5) for d, _ in runs) * 1e3
    p99 = statistics.median(pct(d, 0.99) for d, _ in runs) * 1e3
    print(f"describe on test:///default: p50 {p50:.3f} ms, p99 {p99:.3f} ms "
          f"({args.calls} calls x {args.repeat} runs)")  # fmt: skip
    print(f"{'verb':<16} {'p50 ms':>8} {'p99 ms':>8}   (plan + execute)")
    for verb in dict.fromkeys(v for v, _ in VERBS):
        p50v = statistics.median(pct(v[verb], 0.5) for _, v in runs) * 1e3
        p99v = statistics.median(pct(v[verb], 0.99) for _, v in runs) * 1e3
        print(f"{verb:<16} {p50v:>8.3f} {p99v:>8.3f}")
    verdict = "met" if p50 < TARGET_DESCRIBE_P50_MS else "MISSED"
    print(f"describe p50 {p50:.3f} ms (target < {TARGET_DESCRIBE_P50_MS} ms) {verdict}")


if __name__ == "__main__":
    main()
