"""A realistic ledger written by the real gateway (libvirt's test driver, the bundled model)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.action import Action
from adapters.libvirt import LibvirtAdapter, LibvirtConfig
from explain.batcher import MicroBatcher
from explain.registry import Registry
from explain.scorer import Scorer
from gateway.decision import Halt
from gateway.pipeline import Gateway
from gateway.policy import Policy
from gateway.samples import NODE
from ledger import DataDir, LedgerConfig
from ledger.export import export_ledger

ENGINE = "spiffe://govgate.local/engine-1"
ALICE = "spiffe://govgate.local/alice"
BOB = "spiffe://govgate.local/bob"

# Everything executes, except reboots (one person must approve) and deletes (forbidden).
POLICY = b"""version = 1
[defaults]
execute_below = 1.0
approve_below = 1.0
min_confidence = 0.0
approval_ttl = 60

[[rules]]
name = "reboots need a person"
match = { verbs = ["reboot"] }
approvals = 1

[[rules]]
name = "no deletes"
match = { verbs = ["delete"] }
forbid = true
"""


def act(verb: str, **params: Any) -> Action:
    return Action.from_json(
        {
            "verb": verb,
            "target": {"runtime": "libvirt", "resource": "web-1"},
            "parameters": params,
            "justification": "load is high",
            "confidence": 0.9,
            "engine": "autoscaler",
        }
    )


@dataclass
class Built:
    data: Path
    export: Path
    key: str
    ids: dict[str, str]  # what the scenario did: name -> decision id
    times: dict[str, str]  # name -> record time of a marker record


async def scenario(tmp: Path) -> Built:
    data = DataDir(tmp / "data")
    signer = data.generate_key("example.com/govgate")
    node = tmp / "node.xml"
    node.write_text(NODE)
    policy_path = tmp / "data" / "policy.toml"
    policy_path.write_bytes(POLICY)
    ids: dict[str, str] = {}
    times: dict[str, str] = {}
    config = LedgerConfig(checkpoint_every=0, checkpoint_interval=0)
    async with (
        data.open_ledger(config) as ledger,
        LibvirtAdapter(LibvirtConfig(uri=f"test://{node}", cache_ttl=0)) as lv,
        MicroBatcher(Scorer(Registry(tmp / "models").load())) as batcher,
    ):
        gw = Gateway(ledger, {"libvirt": lv}, batcher, Policy.load(policy_path))
        await gw.activate_policy(Policy.load(policy_path), actor=ALICE)
        await ledger.checkpoint()
        d = await gw.propose("r-1", act("resize", vcpus=4), requester=ENGINE)
        assert d.state == "EXECUTED", d.reasons
        ids["executed"] = d.decision_id
        d = await gw.propose("r-2", act("reboot"), requester=ENGINE)
        assert d.state == "PENDING_APPROVAL", d.reasons
        d = await gw.review(d.decision_id, ALICE, True, "planned", d.digest)
        assert d.state == "EXECUTED", d.reasons
        ids["approved"] = d.decision_id
        d = await gw.propose("r-3", act("reboot"), requester=ENGINE)
        d = await gw.review(d.decision_id, BOB, False, "not now", d.digest)
        assert d.state == "DENIED"
        d = await gw.propose("r-4", act("reboot"), requester=ENGINE)
        assert await gw.expire_overdue(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)) == 1
        d = await gw.propose("r-5", act("delete"), requester=ENGINE)
        assert d.state == "DENIED"
        d = await gw.rollback(ids["executed"], "undo the resize", ALICE)
        assert d.state == "ROLLED_BACK", d.reasons
        await gw.halt(Halt(all=True), "drill", ALICE)
        d = await gw.propose("r-6", act("suspend"), requester=ENGINE)
        assert d.state == "HALTED"
        await gw.resume(Halt(all=True), "drill over", BOB)
        await ledger.checkpoint()
        rec = (await ledger.store.snapshot())[0]
        del rec
        for severity in ("serious", "critical", "minor"):
            await gw.report_incident(ids["approved"], True, severity, f"{severity} one", BOB)
        out = tmp / "export.jsonl"
        await export_ledger(ledger, out)
    return Built(tmp / "data", out, signer.verifier.key_string, ids, times)
