"""The embedded-defaults walkthrough behind ``govgate demo``.

It shows what the risk model and the ledger promise, on real models, a real
SQLite file and real keys: create the log key; score a stream of sample
proposals with the active (or bundled) XGBoost model through the
micro-batcher and explain three of them; record the decisions, approvals,
denials, outcomes, a halt and a few incidents from concurrent writers; sign a
checkpoint; run the gateway over gRPC with mTLS on libvirt's test driver (a
simulated engine's proposals, reviews by two overseers, a halt, a rollback:
``gateway.demo_gateway``); prove one record's inclusion, export, verify the
export offline with only the public key; then change one byte of a copy and
watch verification name the record.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from explain.batcher import MicroBatcher
from explain.bootstrap import Example, generate
from explain.explanation import Explanation
from explain.features import Context, featurize
from explain.model import Model
from explain.registry import Registry
from explain.scorer import Scorer
from gateway.demo_gateway import gateway_walk
from ledger import DataDir, Draft, LedgerConfig, VerificationError
from ledger.export import export_ledger
from ledger.merkle import verify_inclusion
from ledger.record import Record
from ledger.verify import verify_export

__all__ = ["run_demo"]

_OVERSEERS = ["alice@ops", "bob@ops", "carol@sec"]
# Demo thresholds: execute below the first, ask a human up to the second, deny above.
# The gateway's policy engine (per verb and scope) replaces them.
_EXECUTE_BELOW, _DENY_FROM = 0.3, 0.8


@dataclass(frozen=True)
class _Scored:
    example: Example
    explanation: Explanation


async def _score(examples: list[Example], model: Model) -> tuple[list[_Scored], MicroBatcher]:
    """Score every proposal concurrently, as the gateway's requests will arrive."""
    async with MicroBatcher(Scorer(model)) as batcher:
        explanations = await asyncio.gather(
            *(batcher.score(featurize(e.action, e.state, Context(now=e.time))) for e in examples)
        )
    return [_Scored(e, x) for e, x in zip(examples, explanations, strict=True)], batcher


def _show_scoring(scored: list[_Scored], batcher: MicroBatcher, model: Model, con: Console,
                  elapsed: float) -> None:  # fmt: skip
    con.print(
        f"  model {model.id[:16]} ({model.trees} trees, schema {model.schema}): "
        f"{len(scored)} proposals scored and explained in {elapsed:.2f}s, "
        f"{batcher.batches} XGBoost calls ({batcher.rows / max(batcher.batches, 1):.0f} a call)"
    )
    ranked = sorted(scored, key=lambda s: s.explanation.risk)
    for s in (ranked[0], ranked[len(ranked) // 2], ranked[-1]):
        a, exp = s.example.action, s.explanation
        env = s.example.state.label("environment", "env") or "unlabelled"
        con.print(
            f"  [bold]{a.verb} {a.target}[/bold] ({env}, engine {a.engine}): "
            f"risk [bold]{exp.risk:.3f}[/bold] -> {_verdict(exp.risk)}"
        )
        for c in exp.top(3):
            con.print(f"      {c.text()}")


def _verdict(risk: float) -> str:
    return "execute" if risk < _EXECUTE_BELOW else ("approval" if risk < _DENY_FROM else "deny")


def _sample(rng: random.Random, scored: list[_Scored]) -> list[Draft]:
    """The ledger stream the scores lead to: decisions, approvals, denials, outcomes,
    a halt, and incidents on a few executed decisions that went wrong."""
    drafts: list[Draft] = []
    for i, s in enumerate(scored):
        a, exp = s.example.action, s.explanation
        did = f"d-{i:06d}"
        verdict = _verdict(exp.risk)
        body: dict[str, Any] = {
            "action": a.to_record(),
            "state": s.example.state.to_record(),
            "scored_at": s.example.time.isoformat().replace("+00:00", "Z"),
            "verdict": verdict,
            **exp.to_record(),
        }
        draft = functools.partial(
            Draft, trace_id=f"{rng.getrandbits(128):032x}", target=str(a.target), decision_id=did
        )
        drafts.append(draft("decision", body, actor=a.engine))
        if verdict == "approval":
            who = rng.choice(_OVERSEERS)
            drafts.append(draft("approval", {"reviewer": who}, actor=who))
        if verdict == "deny":
            drafts.append(draft("denial", {"reason": f"risk {exp.risk:.3f} >= {_DENY_FROM}"}))
        else:
            drafts.append(draft("outcome", {"status": "ok"}))
            if s.example.label and rng.random() < 0.3:
                drafts.append(draft("incident", {"harmful": True, "severity": "minor"}))
        if i == len(scored) // 2:
            scope = {"all": False, "runtime": "", "selector": "env=prod"}
            drafts.append(Draft("halt", {"scope": scope, "reason": "drill"}, actor="carol@sec"))
            drafts.append(Draft("resume", {"scope": scope, "reason": "drill over"},
                                actor="carol@sec"))  # fmt: skip
    return drafts


async def _append_stream(d: DataDir, drafts: list[Draft], writers: int, con: Console) -> Record:
    config = LedgerConfig(checkpoint_every=500, checkpoint_interval=0.5)
    async with d.open_ledger(config) as log:
        queue = list(reversed(drafts))
        shown = 0
        last: Record | None = None
        started = time.perf_counter()

        async def writer() -> None:
            nonlocal shown, last
            while queue:
                rec = await log.append(queue.pop())
                last = rec
                if shown < 12 or rec.kind in ("halt", "resume"):
                    shown += 1
                    con.print(
                        f"  [dim]#{rec.index:<5}[/dim] [bold]{rec.kind:<9}[/bold] "
                        f"{rec.target or '-':<14} {rec.actor or '-':<12} "
                        f"leaf {rec.leaf_hash.hex()[:16]}…"
                    )

        await asyncio.gather(*(writer() for _ in range(writers)))
        elapsed = time.perf_counter() - started
        con.print(
            f"  … {len(drafts)} records appended by {writers} concurrent writers in "
            f"{elapsed:.2f}s ({len(drafts) / elapsed:,.0f}/s), each durable (fsync'd) before "
            "its writer continued"
        )
        assert last is not None
        return last


async def _prove(d: DataDir, index: int, con: Console) -> None:
    async with d.open_ledger(LedgerConfig(checkpoint_interval=0)) as log:
        cp = await log.checkpoint()
        proof = await log.inclusion_proof(index, cp.size)
        verify_inclusion(proof.leaf_hash, index, cp.size, proof.proof, cp.root)
    con.print(
        f"  record #{index} is in the tree of size {cp.size}: "
        f"{len(proof.proof)} hashes, verified against the signed root"
    )


def run_demo(data: Path, records: int, writers: int, con: Console, pace: float = 0.3) -> int:
    """Run the walkthrough in ``data``; return the process exit status."""
    d = DataDir(data)
    con.rule("[bold]govgate demo: risk scores, the gateway and the ledger")
    con.print(f"data directory: {data.resolve()}")

    con.print("\n[bold]1. The log's signing key[/bold]")
    if d.key_path.exists():
        signer = d.signer()
        con.print(f"  using the existing key {signer.key_id}")
    else:
        signer = d.generate_key()
        con.print(f"  generated Ed25519 key {signer.key_id} → {d.key_path} (mode 0600)")
    vkey = signer.verifier_key
    con.print(f"  verifier key (give this to auditors): [cyan]{vkey}[/cyan]")

    con.print(f"\n[bold]2. Scoring {records} proposals with the risk model[/bold]")
    model = Registry(data / "models").load()  # the active model, else the bundled default
    started = time.perf_counter()
    scored, batcher = asyncio.run(_score(generate(records, seed=20261125), model))
    _show_scoring(scored, batcher, model, con, time.perf_counter() - started)

    con.print(f"\n[bold]3. Recording the decisions in the ledger ({writers} writers)[/bold]")
    drafts = _sample(random.Random(20261125), scored)  # noqa: S311 - sample data
    last = asyncio.run(_append_stream(d, drafts, writers, con))

    con.print("\n[bold]4. The gateway: proposals over gRPC with mTLS[/bold]")
    asyncio.run(gateway_walk(data, con, pace))

    con.print("\n[bold]5. Inclusion proof (RFC 9162)[/bold]")
    asyncio.run(_prove(d, last.index // 2, con))

    con.print("\n[bold]6. Export and independent verification[/bold]")
    export = data / "export.jsonl"

    async def do_export() -> str:
        async with d.open_ledger(LedgerConfig(checkpoint_interval=0)) as log:
            return (await export_ledger(log, export)).checkpoint_note

    note = asyncio.run(do_export())
    result = verify_export(export, signer.verifier)
    con.print(
        f"  {export}: {result.size} records, {result.checkpoints} signed checkpoints — "
        "[green]every signature, the hash chain and every Merkle root verify[/green]"
    )

    con.print("\n[bold]7. Tampering is caught[/bold]")
    tampered = data / "export-tampered.jsonl"
    shutil.copyfile(export, tampered)
    raw = bytearray(tampered.read_bytes())
    lines = raw.split(b"\n")
    victim = len(lines) // 3
    while not lines[victim].startswith(b'{"payload"'):
        victim += 1
    offset = sum(len(x) + 1 for x in lines[:victim]) + 20
    raw[offset] = ord("A") if raw[offset] != ord("A") else ord("B")
    tampered.write_bytes(raw)
    try:
        verify_export(tampered, signer.verifier)
    except VerificationError as e:
        con.print(f"  changed one byte on line {victim + 1}: [red]{e}[/red]")
    else:
        con.print("  [red]tampering went unnoticed — this is a bug[/red]")
        return 1

    con.print("\n[bold]8. The signed checkpoint (C2SP tlog-checkpoint, signed note)[/bold]")
    con.print(Panel(note.rstrip("\n"), expand=False))
    # Name the command as this shell can run it: .venv/bin is usually not on PATH.
    exe = "govgate" if shutil.which("govgate") else os.path.relpath(sys.argv[0])
    table = Table(title="Try next", show_header=False, box=None)
    table.add_row(f"{exe} ledger query --data {data} --kind halt")
    table.add_row(f"{exe} ledger proof --data {data} --index 7")
    table.add_row(f"{exe} ledger verify {export} --key '{vkey}'")
    table.add_row(f"{exe} model explain --action examples/actions/delete-production-high-risk.json")
    table.add_row(f"{exe} model train --data {data} --from-ledger --horizon-days 0")
    table.add_row(f"{exe} report --framework eu-ai-act --from 2000-01-01 --to 2100-01-01 "
                  f"--format html --out report.html --data {data}")  # fmt: skip
    con.print(table)
    return 0
