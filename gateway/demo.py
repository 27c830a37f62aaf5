"""The embedded-defaults walkthrough behind ``govgate demo``.

It shows what the ledger promises, on a real SQLite file and real keys:
create the log key, append a stream of sample governance records from
concurrent writers, sign a checkpoint, prove one record's inclusion, export,
verify the export offline with only the public key, then change one byte of
a copy and watch verification name the record.

(Later issues turn this into the full gateway demo: proposals through gRPC,
risk scores, approvals and libvirt's test driver.)
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from ledger import DataDir, Draft, LedgerConfig, VerificationError
from ledger.export import export_ledger
from ledger.merkle import verify_inclusion
from ledger.record import Record
from ledger.verify import verify_export

__all__ = ["run_demo"]

_VERBS = ["start", "shutdown", "reboot", "suspend", "resume", "write", "snapshot", "migrate"]
_ENGINES = ["autoscaler", "aiops-agent", "llm-agent", "scheduler"]
_OVERSEERS = ["alice@ops", "bob@ops", "carol@sec"]


def _sample(rng: random.Random, n: int) -> list[Draft]:
    """A plausible stream: decisions, some approvals and denials, outcomes, a halt."""
    drafts: list[Draft] = []
    for i in range(n):
        vm = f"libvirt/vm-{rng.randrange(1, 40):02d}"
        did = f"d-{i:06d}"
        trace = f"{rng.getrandbits(128):032x}"
        verb = rng.choice(_VERBS)
        risk = rng.random()
        verdict = "execute" if risk < 0.4 else ("approval" if risk < 0.8 else "deny")
        body: dict[str, Any] = {
            "verb": verb,
            "risk": f"{risk:.4f}",  # decimal string: payloads stay float-free (exact JCS)
            "verdict": verdict,
            "engine": rng.choice(_ENGINES),
            "parameters": {"vcpus": rng.choice([2, 4, 8])} if verb == "write" else {},
        }
        draft = functools.partial(Draft, trace_id=trace, target=vm, decision_id=did)
        drafts.append(draft("decision", body, actor=str(body["engine"])))
        if verdict == "approval":
            who = rng.choice(_OVERSEERS)
            drafts.append(draft("approval", {"reviewer": who}, actor=who))
        if verdict == "deny":
            drafts.append(draft("denial", {"reason": "risk above threshold"}))
        else:
            drafts.append(draft("outcome", {"status": "ok"}))
        if i == n // 2:
            drafts.append(
                Draft("halt", {"scope": "env=prod", "reason": "drill"}, actor="carol@sec")
            )
            drafts.append(Draft("resume", {"scope": "env=prod"}, actor="carol@sec"))
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


def run_demo(data: Path, records: int, writers: int, con: Console) -> int:
    """Run the walkthrough in ``data``; return the process exit status."""
    d = DataDir(data)
    con.rule("[bold]govgate ledger demo")
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

    con.print(f"\n[bold]2. Appending sample governance records ({writers} writers)[/bold]")
    drafts = _sample(random.Random(20261125), records)  # noqa: S311 - sample data
    last = asyncio.run(_append_stream(d, drafts, writers, con))

    con.print("\n[bold]3. Inclusion proof (RFC 9162)[/bold]")
    asyncio.run(_prove(d, last.index // 2, con))

    con.print("\n[bold]4. Export and independent verification[/bold]")
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

    con.print("\n[bold]5. Tampering is caught[/bold]")
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

    con.print("\n[bold]6. The signed checkpoint (C2SP tlog-checkpoint, signed note)[/bold]")
    con.print(Panel(note.rstrip("\n"), expand=False))
    # Name the command as this shell can run it: .venv/bin is usually not on PATH.
    exe = "govgate" if shutil.which("govgate") else os.path.relpath(sys.argv[0])
    table = Table(title="Try next", show_header=False, box=None)
    table.add_row(f"{exe} ledger query --data {data} --kind halt")
    table.add_row(f"{exe} ledger proof --data {data} --index 7")
    table.add_row(f"{exe} ledger verify {export} --key '{vkey}'")
    con.print(table)
    return 0
