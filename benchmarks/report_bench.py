"""Compliance report benchmark: generation time and peak RSS for N decision records.

Synthesises a ledger of ``--records`` decision records (realistic bodies: action,
state, risk, 19 SHAP contributions, the feature vector as the gateway records
it, the bundled model's id, so drift is computed too) plus approvals, outcomes,
halts and incidents, exports it once, then times ``build_report`` on the export
in a child process and reads its peak RSS.

Targets (issue 7): < 60 s and < 500 MB peak RSS for 1,000,000 decision records.
Peak RSS is the report process's; its worker processes (one per CPU, reading
parts of the export) are smaller. ``--no-signatures`` verifies the chain, the
Merkle roots and the signed checkpoints, which bind every record's bytes; with
signatures, every record's Ed25519 signature is checked too, at about 74 µs each
here, which alone takes longer than the target for 2.3 million records.

Usage::

    python benchmarks/report_bench.py --records 10000
    python benchmarks/report_bench.py --records 1000000 --no-signatures   # long build
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adapters.action import Action, RuntimeState
from explain.features import FEATURE_NAMES, Context, featurize
from explain.registry import Registry
from ledger import DataDir, Draft, LedgerConfig
from ledger.export import export_ledger
from ledger.record import parse_time

TARGET_SECONDS = 60.0
TARGET_MB = 500.0
VERBS = ("resize", "reboot", "start", "shutdown", "snapshot", "delete", "migrate")


def _decision(i: int, rng: random.Random, model_id: str) -> Draft:
    verb = rng.choice(VERBS)
    params: dict[str, object] = {"vcpus": 4} if verb == "resize" else {}
    if verb == "migrate":
        params = {"destination": "qemu+ssh://h2/system"}
    risk = rng.random()
    body = {
        "request_id": f"r-{i}",
        "action": {
            "verb": verb,
            "target": {"runtime": "libvirt", "resource": f"vm-{i % 500}"},
            "parameters": params,
            "justification": "p95 CPU above 85% for 20 minutes",
            "confidence": "0.9",
            "engine": "autoscaler",
            "requester": "engine-1",
        },
        "state": {
            "power": "running",
            "vcpus": 2,
            "max_vcpus": 8,
            "memory_mib": 4096,
            "max_memory_mib": 8192,
            "uptime_s": 3600 * (i % 100),
            "snapshots": i % 3,
            "disks": 1,
            "labels": {"environment": rng.choice(("prod", "staging", "dev"))},
            "recent_actions": i % 4,
            "persistent": True,
        },
        "scored_at": "2026-11-25T12:00:00.000000Z",
        "verdict": "EXECUTING" if risk < 0.3 else "PENDING_APPROVAL" if risk < 0.8 else "DENIED",
        "reasons": [],
        "policy_id": "0" * 64,
        "approvals_required": 1,
        "fallback": False,
        "dry_run": False,
        "digest": "00" * 32,
        "risk": repr(risk),
        "base_value": "-0.5",
        "contributions": {n: repr(rng.uniform(-1, 1)) for n in FEATURE_NAMES},
        "features": {},  # below: what the gateway records, the vector the model scored
        "model_id": model_id,
        "schema_version": "govgate.features/v1",
        "deadline": "2026-11-25T13:00:00.000000Z",
        "reason_required": True,
    }
    action = Action.from_json(body["action"], "action")
    state = RuntimeState.from_json(body["state"], "state")
    vector = featurize(action, state, Context(now=parse_time(str(body["scored_at"]))))
    body["features"] = {n: None if math.isnan(v) else repr(float(v))
                        for n, v in zip(FEATURE_NAMES, vector, strict=True)}  # fmt: skip
    return Draft(
        "decision", body, actor="engine-1", target=f"libvirt/vm-{i % 500}", decision_id=f"d-{i}"
    )


async def _fill(d: DataDir, decisions: int, out: Path) -> int:
    rng = random.Random(1)
    model_id = Registry(d.path / "models").active_id()
    config = LedgerConfig(checkpoint_every=100_000, checkpoint_interval=0)
    total = 0
    async with d.open_ledger(config) as log:
        for start in range(0, decisions, 1000):
            drafts = []
            for i in range(start, min(start + 1000, decisions)):
                drafts.append(_decision(i, rng, model_id))
                if i % 3 == 0:
                    drafts.append(
                        Draft(
                            "approval",
                            {"reviewer": "alice", "reason": "ok", "digest": "00" * 32},
                            actor="alice",
                            decision_id=f"d-{i}",
                        )
                    )
                drafts.append(Draft("outcome", {"status": "applied"}, decision_id=f"d-{i}"))
                if i % 10_000 == 0:
                    drafts.append(
                        Draft("halt", {"scope": {"all": True}, "reason": "drill"}, actor="bob")
                    )
                    drafts.append(
                        Draft(
                            "incident",
                            {"harmful": True, "severity": "serious", "description": "x"},
                            decision_id=f"d-{i}",
                        )
                    )
            await log.append_many(drafts)
            total += len(drafts)
        await export_ledger(log, out)
    return total


_CHILD = """
import resource, sys, time
from pathlib import Path
from compliance.report import build_report
t = time.perf_counter()
r = build_report(Path(sys.argv[1]), "eu-ai-act", "2000-01-01", "2100-01-01", key=sys.argv[2],
                 signatures=sys.argv[3] == "1", models=Path(sys.argv[4]))
dt = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(dt, rss, r["integrity"]["verified"], r["evidence"]["decisions"]["count"])
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=10_000, help="decision records")
    ap.add_argument(
        "--no-signatures", action="store_true", help="verify chain, roots and checkpoints only"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="report-bench-") as tmp:
        d = DataDir(Path(tmp) / "data")
        signer = d.generate_key("bench.example/ledger")
        export = Path(tmp) / "ledger.jsonl"
        t = time.perf_counter()
        total = asyncio.run(_fill(d, args.records, export))
        built = time.perf_counter() - t
        cmd = [
            sys.executable,
            "-c",
            _CHILD,
            str(export),
            signer.verifier.key_string,
            "0" if args.no_signatures else "1",
            str(d.path / "models"),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
        seconds, rss = float(out[0]), float(out[1])
        result = {
            "decision_records": args.records,
            "ledger_records": total,
            "ledger_build_s": round(built, 1),
            "signatures_checked": not args.no_signatures,
            "report_s": round(seconds, 2),
            "peak_rss_mb": round(rss, 1),
            "verified": out[2] == "True",
            "decisions_counted": int(out[3]),
            # The targets are for 1,000,000 decision records; a smaller run is not judged.
            "meets_time_target": seconds < TARGET_SECONDS if args.records >= 1_000_000 else None,
            "meets_rss_target": rss < TARGET_MB if args.records >= 1_000_000 else None,
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
