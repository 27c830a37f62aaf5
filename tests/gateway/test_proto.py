"""The gRPC contract: the generated stubs are fresh, and the public names the issue fixes exist."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway._proto.govgate.v1 import decision_pb2, ledger_pb2, oversight_pb2, types_pb2

ROOT = Path(__file__).resolve().parents[2]


def _files(root: Path) -> dict[str, bytes]:
    base = root / "gateway" / "_proto"
    return {
        str(p.relative_to(base)): p.read_bytes()
        for p in sorted(base.rglob("*.py*"))
        if "__pycache__" not in p.parts
    }


def test_stubs_are_fresh(tmp_path: Path):
    subprocess.run(
        [str(ROOT / "scripts" / "gen-proto.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
    )
    fresh, committed = _files(tmp_path), _files(ROOT)
    assert fresh, "the generator wrote nothing"
    stale = sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))
    assert not stale, f"stale stubs (run scripts/gen-proto.sh): {stale}"


@pytest.mark.parametrize(
    ("module", "service", "methods"),
    [
        (decision_pb2, "DecisionService",
         {"Propose", "ProposeStream", "GetDecision", "WatchDecision", "Rollback",
          "ReportIncident"}),
        (oversight_pb2, "OversightService",
         {"ListPending", "Approve", "Deny", "Halt", "Resume"}),
        (ledger_pb2, "LedgerService",
         {"Query", "GetCheckpoint", "GetInclusionProof", "GetConsistencyProof"}),
    ],
)  # fmt: skip
def test_services_keep_their_names(module, service: str, methods: set[str]):
    svc = module.DESCRIPTOR.services_by_name[service]
    assert svc.full_name == f"govgate.v1.{service}"
    assert methods <= {m.name for m in svc.methods}
    streams = {m.name: (m.client_streaming, m.server_streaming) for m in svc.methods}
    if service == "DecisionService":
        assert streams["ProposeStream"] == (True, True)
        assert streams["WatchDecision"] == (False, True)
        assert streams["Propose"] == (False, False)
    if service == "LedgerService":
        assert streams["Query"] == (False, True)


def _fields(message) -> dict[str, str]:
    return {f.name: f.type for f in message.DESCRIPTOR.fields}


def test_messages_keep_their_fields():
    propose = decision_pb2.ProposeRequest.DESCRIPTOR.fields_by_name
    assert {"request_id", "action", "dry_run"} <= set(propose)
    assert propose["action"].message_type.full_name == "govgate.v1.Action"
    action = types_pb2.Action.DESCRIPTOR.fields_by_name
    assert {"verb", "target", "parameters", "justification", "confidence", "engine"} <= set(action)
    assert action["parameters"].message_type.GetOptions().map_entry
    assert action["confidence"].type == action["confidence"].TYPE_DOUBLE
    assert {"runtime", "resource"} <= set(_fields(types_pb2.Target))
    decision = set(_fields(types_pb2.Decision))
    assert {"decision_id", "state", "risk", "contributions", "model_id", "policy_id", "reasons",
            "ledger_index", "leaf_hash"} <= decision  # fmt: skip
    states = set(types_pb2.DecisionState.keys())
    assert {"EXECUTED", "PENDING_APPROVAL", "DENIED", "FAILED", "EXPIRED", "ROLLED_BACK",
            "DRY_RUN"} <= states  # fmt: skip
