"""``govgate model ...`` as an operator runs it: the explain contract, training, activation."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from pathlib import Path

import orjson
import pytest
from cli_harness import QUIET, Govgate

from explain.registry import BUNDLED_DIR
from ledger import DataDir, Draft
from ledger.store import RecordQuery

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "actions"
LOW = EXAMPLES / "resize-staging-low-risk.json"
HIGH = EXAMPLES / "delete-production-high-risk.json"
BUNDLED = (BUNDLED_DIR / "DEFAULT").read_text().strip()


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_explain_json_contract_from_the_installed_script(gg: Govgate, tmp_path: Path):
    results = {}
    for name, path in (("low", LOW), ("high", HIGH)):
        r = gg.sub("model", "explain", "--action", path, "--json", "--data", tmp_path)
        assert r.code == 0, r
        out = orjson.loads(r.out)
        assert {"risk", "base_value", "contributions", "model_id", "schema_version"} <= set(out)
        assert out["model_id"] == BUNDLED
        bundled = (BUNDLED_DIR / f"{BUNDLED}.ubj").read_bytes()
        assert out["model_id"] == hashlib.sha256(bundled).hexdigest()
        assert out["schema_version"] == "govgate.features/v1"
        assert len(out["contributions"]) == 19
        margin = out["base_value"] + math.fsum(out["contributions"].values())
        assert _sigmoid(margin) == pytest.approx(out["risk"], abs=1e-9)
        results[name] = out
    assert results["low"]["risk"] < 0.2 < 0.9 < results["high"]["risk"]
    top = results["high"]["top"][0]
    assert top["feature"] == "destructiveness"
    assert "raises risk" in top["text"]


def test_explain_human_output_and_chart(gg: Govgate, tmp_path: Path):
    chart = tmp_path / "why.svg"
    r = gg("model", "explain", "--action", HIGH, "--top", "3", "--chart", chart, "--data", tmp_path)
    assert r.code == 0, r
    assert "delete libvirt/db-primary-1: risk 0.9" in r.out
    assert r.out.count("log-odds (") == 3
    assert "destructiveness" in chart.read_text()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "not JSON"),
        ('{"action": {"verb": "explode", "target": {"runtime": "libvirt", "resource": "x"}}}',
         "action.verb: unknown verb 'explode'"),
        ('{"action": {"verb": "resize", "target": {"runtime": "libvirt", "resource": "x"},'
         ' "parameters": {"vcpus": "lots"}}}', "action.parameters.vcpus"),
        ('{"action": {"verb": "start", "target": {"runtime": "libvirt", "resource": "x"}},'
         ' "state": {"vcpus": -1}}', "state.vcpus"),
        ('{"action": {"verb": "start", "target": {"runtime": "libvirt", "resource": "x"}},'
         ' "time": "yesterday"}', "RFC 3339"),
        ("[]", "expected a JSON object"),
    ],
)  # fmt: skip
def test_invalid_action_file_exits_2_with_one_line(
    gg: Govgate, tmp_path: Path, content: str, needle: str
):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    r = gg("model", "explain", "--action", bad, "--json", "--data", tmp_path)
    assert r.code == 2, r
    assert r.out == ""
    assert len(r.err.strip().splitlines()) == 1, r
    assert needle in r.msg


def test_missing_action_file_exits_2(gg: Govgate, tmp_path: Path):
    r = gg.sub("model", "explain", "--action", tmp_path / "nope.json", "--data", tmp_path)
    assert r.code == 2, r
    assert "cannot read" in r.msg
    assert len(r.err.strip().splitlines()) == 1


def test_train_activate_records_in_ledger_and_is_used(gg: Govgate, log: tuple[Path, str]):
    data, _ = log
    r = gg("model", "train", "--data", data, "--samples", "3000", "--trees", "20", "--activate")
    assert r.code == 0, r
    model_id = r.out.strip()
    assert len(model_id) == 64
    assert f"model {model_id}" in r.msg
    assert "ROC-AUC" in r.msg
    assert (data / "models" / "ACTIVE").read_text().strip() == model_id

    records = _records(data, "model")
    assert len(records) == 1
    body = records[0]["body"]
    assert body["model_id"] == model_id
    assert body["previous_model_id"] == BUNDLED
    card_file = data / "models" / f"{model_id}.card.json"
    assert body["card_sha256"] == hashlib.sha256(card_file.read_bytes()).hexdigest()

    listed = [
        orjson.loads(line)
        for line in gg("model", "list", "--data", data, "--json").out.splitlines()
    ]
    assert {(m["model_id"], m["active"], m["bundled"]) for m in listed} == {
        (model_id, True, False),
        (BUNDLED, False, True),
    }
    explained = orjson.loads(gg("model", "explain", "--action", LOW, "--json", "--data", data).out)
    assert explained["model_id"] == model_id

    card = gg("model", "card", model_id[:10], "--data", data)
    assert card.code == 0
    assert card.out.startswith(f"# Model card: `{model_id[:16]}`")
    assert json.loads(gg("model", "card", "--json", "--data", data).out)["model_id"] == model_id

    back = gg("model", "activate", BUNDLED[:8], "--data", data, "--reason", "roll back")
    assert back.code == 0, back
    assert [rec["body"]["model_id"] for rec in _records(data, "model")] == [model_id, BUNDLED]
    assert _records(data, "model")[1]["body"]["reason"] == "roll back"


def test_activation_needs_the_ledger(gg: Govgate, tmp_path: Path):
    data = tmp_path / "nokey"
    r = gg("model", "train", "--data", data, "--samples", "2000", "--trees", "5")
    assert r.code == 0, r
    model_id = r.out.strip()
    r = gg("model", "activate", model_id, "--data", data)
    assert r.code == 1
    assert "no signing key" in r.msg
    assert not (data / "models" / "ACTIVE").exists()


def test_verify_reports_a_tampered_model(gg: Govgate, tmp_path: Path):
    data = tmp_path / "d"
    model_id = gg("model", "train", "--data", data, "--samples", "2000", "--trees", "5").out.strip()
    assert gg("model", "verify", "--data", data).code == 0
    path = data / "models" / f"{model_id}.ubj"
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    r = gg("model", "verify", "--data", data)
    assert r.code == 1
    assert f"FAILED {model_id}" in r.msg
    assert f"ok {BUNDLED}" in r.msg
    r = gg("model", "explain", "--action", LOW, "--model", model_id, "--data", data)
    assert r.code == 1
    assert "not its id" in r.msg


def test_verify_checks_the_active_model_and_the_cards_shape(gg: Govgate, tmp_path: Path):
    """What a gateway would load, and what list and card read, must pass verify too."""
    data = tmp_path / "d"
    model_id = gg("model", "train", "--data", data, "--samples", "2000", "--trees", "5").out.strip()
    marker = data / "models" / "ACTIVE"
    for active, why in (("0123" * 16, "no model 0123"), ("garbage", "does not hold a model id")):
        marker.write_text(active + "\n")
        r = gg("model", "verify", "--data", data)
        assert r.code == 1, r
        assert "FAILED the active model" in r.msg
        assert why in r.msg, r
    marker.unlink()
    assert gg("model", "verify", "--data", data).code == 0

    card_path = data / "models" / f"{model_id}.card.json"
    card = json.loads(card_path.read_text())
    card["data"] = "bootstrap"  # names its model, but is not a card's shape
    card_path.write_text(json.dumps(card))
    r = gg("model", "verify", "--data", data)
    assert r.code == 1, r
    assert f"FAILED {model_id}" in r.msg
    assert "malformed" in r.msg
    for command in (("model", "list"), ("model", "card", model_id[:10])):
        shown = gg(*command, "--data", data)
        assert "Traceback" not in shown.err, (command, shown)


def test_train_from_history_file_and_bad_history(gg: Govgate, tmp_path: Path):
    from explain.bootstrap import generate

    lines = [
        json.dumps({"action": e.action.to_json(), "state": e.state.to_json(),
                    "time": e.time.isoformat(), "label": e.label})
        for e in generate(600, seed=5)
    ]  # fmt: skip
    history = tmp_path / "past.jsonl"
    history.write_text("\n".join(lines) + "\n")
    r = gg("model", "train", "--data", tmp_path, "--history", history, "--trees", "10", "--json")
    assert r.code == 0, r
    card = orjson.loads(r.out)
    assert card["data"]["source"] == "history"
    assert card["data"]["rows"] == 600
    assert hashlib.sha256(history.read_bytes()).hexdigest() in card["data"]["detail"]

    history.write_text(lines[0] + "\n" + lines[1].replace('"label": ', '"label": 7, "x": ') + "\n")
    r = gg("model", "train", "--data", tmp_path, "--history", history)
    assert r.code == 1
    assert "past.jsonl line 2" in r.msg


def test_train_from_ledger_decisions_and_incidents(gg: Govgate, log: tuple[Path, str]):
    from explain.bootstrap import generate

    data, _ = log
    drafts = []
    examples = generate(400, seed=9)
    for i, e in enumerate(examples):
        did = f"d-{i}"
        body = {"action": e.action.to_json(), "state": e.state.to_json()}
        drafts.append(Draft("decision", body, decision_id=did))
        drafts.append(Draft("outcome", {"status": "succeeded"}, decision_id=did))
        if e.label:
            drafts.append(Draft("incident", {"harmful": True}, decision_id=did))
    _append(data, drafts)
    # Decisions just made and never harmed are too recent to count as harmless: with a
    # zero horizon they do count.
    r = gg("model", "train", "--data", data, "--from-ledger", "--horizon-days", "0",
           "--trees", "10", "--json")  # fmt: skip
    assert r.code == 0, r
    card = orjson.loads(r.out)
    assert card["data"]["source"] == "ledger"
    assert card["data"]["rows"] == 400
    assert card["data"]["positives"] == sum(e.label for e in examples)
    assert f"{sum(e.label for e in examples)} harmful" in r.msg

    r = gg("model", "train", "--data", data, "--from-ledger")  # default horizon: 7 days
    assert r.code == 1
    assert "labelled rows" in r.msg or "harmless" in r.msg


def _append(data: Path, drafts: list[Draft]) -> None:
    async def go() -> None:
        async with DataDir(data).open_ledger(QUIET) as ledger:
            await ledger.append_many(drafts)

    asyncio.run(go())


def _records(data: Path, kind: str) -> list[dict]:
    async def go() -> list[dict]:
        async with DataDir(data).store() as store:
            return [r.to_json() for r in await store.query(RecordQuery(kind=kind))]

    return asyncio.run(go())
