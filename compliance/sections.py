"""The evidence sections: what :meth:`Evidence.result <compliance.evidence.Evidence.result>`
returns, built from an evidence's figures; no I/O.

:func:`sections` turns the counters, histograms and lists that an
:class:`~compliance.evidence.Evidence` gathered into one JSON object per section
(completeness, decisions, risk, oversight, outcomes, incidents, models,
explanations, drift, retention). It reads the evidence's state, private parts
included (pending approvals, drift bins, the policy and model card lookups), as a
method of the class would. Here too are what the sections are
measured by (histogram bins, gap threshold, Art. 73 deadlines, retention minimum)
and how each event listed one by one is written (:func:`scope_event`,
:func:`policy_event`, :func:`model_event`, :func:`incident_event`), which the
evidence calls as it reads. Invariants:

* nothing is invented: a figure that the records cannot give (thresholds when
  the policy text is unavailable, drift without a model card) is reported as
  not recorded, with the reason;
* the result is a plain JSON value built only from the records (and the
  optional policy texts and model cards passed in), so the same ledger and
  period always give the same value.

Example::

    ev = Evidence(Period.parse("2026-11-01", "2026-12-01"))
    for rec in records:
        ev.feed(rec)
    sections(ev)["decisions"]["count"]  # ev.result() is sections(ev)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tomllib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from compliance.tally import MAP, Entry, ModelCard, plain, rounded
from ledger.record import format_time, parse_time

if TYPE_CHECKING:
    from compliance.evidence import Evidence

__all__ = [
    "APPROVAL_EDGES",
    "ART73_DEADLINES",
    "GAP_SECONDS",
    "RETENTION_MINIMUM_DAYS",
    "RISK_BINS",
    "incident_event",
    "model_event",
    "policy_event",
    "scope_event",
    "sections",
]

RISK_BINS = 20  # risk histogram: [0, 0.05), [0.05, 0.1), ... [0.95, 1]
RETENTION_MINIMUM_DAYS = 183  # six months (Art. 19(1), 26(6)), counted generously as 183 days
GAP_SECONDS = 86_400.0  # a stretch without any record longer than this is reported as a gap
# Seconds-to-approval histogram edges (upper bounds, exclusive); the last bin is open.
APPROVAL_EDGES = (10.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 86_400.0)

#: Art. 73 reporting deadlines, in days from awareness (Regulation (EU) 2024/1689).
ART73_DEADLINES = {
    "general": (15, "Art. 73(2)"),
    "death": (10, "Art. 73(4)"),
    "widespread-or-critical-infrastructure": (2, "Art. 73(3)"),
}
# How the gateway's incident severity maps onto Art. 73 (docs/compliance.md).
_SEVERITY_CLASS = {
    "serious": "general",
    "critical": "widespread-or-critical-infrastructure",
}


def sections(ev: Evidence) -> dict[str, Any]:
    """The evidence sections of ``ev``, by name."""
    return {
        "completeness": _completeness(ev),
        "decisions": _decisions(ev),
        "risk": _risk(ev),
        "oversight": _oversight(ev),
        "outcomes": _outcomes(ev),
        "incidents": _incidents(ev),
        "models": _models(ev),
        "explanations": _explanations(ev),
        "drift": _drift(ev),
        "retention": _retention(ev),
    }


def _completeness(ev: Evidence) -> dict[str, Any]:
    return {
        "records_in_ledger": ev.records,
        "records_in_period": ev.in_period,
        "first_index_in_period": ev.first_index,
        "last_index_in_period": ev.last_index,
        "records_by_kind": dict(sorted(ev.kinds.items())),
        "unreadable_records": ev.unreadable,
        "gap_threshold_hours": rounded(GAP_SECONDS / 3600, 2),
        "gaps": ev.gaps.to_json(),
        "checkpoints_in_period": ev.checkpoints_in_period,
        "covering_checkpoint": ev.covering,
        "logged_fields": [
            "index",
            "time",
            "kind",
            "prev",
            "key_id",
            "trace_id",
            "actor",
            "target",
            "decision_id",
            "body",
        ],
    }


def _decisions(ev: Evidence) -> dict[str, Any]:
    return {
        "count": ev.decisions,
        "by_verdict": dict(sorted(ev.verdicts.items())),
        "by_verb": dict(sorted(ev.verbs.items())),
        "by_runtime": dict(sorted(ev.runtimes.items())),
        "by_policy": dict(sorted(ev.by_policy.items())),
        "by_day": {d: dict(sorted(c.items())) for d, c in sorted(ev.by_day.items())},
        "without_request_id": ev.without_request_id,
        "dry_runs": ev.dry_runs,
        "fallbacks": {
            "count": ev.fallbacks,
            "by_verdict": dict(sorted(ev.fallback_verdicts.items())),
        },
        "halted_by_stop_switch": ev.halted_decisions,
    }


def _thresholds(ev: Evidence, policy_id: str, source: str) -> dict[str, Any]:
    text = ev._policy_text(policy_id, source) if ev._policy_text else None
    if text is None or hashlib.sha256(text.raw).hexdigest() != policy_id:
        return {
            "recorded": False,
            "why": "the ledger records the policy's id (SHA-256) and source path, not its "
            "text, and no policy file with that SHA-256 was available",
        }
    try:
        return text.thresholds()
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, AttributeError, TypeError) as err:
        return {"recorded": False, "why": f"the policy file does not parse: {err}"}


def _risk(ev: Evidence) -> dict[str, Any]:
    policies = []
    if ev.policy_in_force is not None:
        policies.append({**ev.policy_in_force, "in_force_at_start": True})
    policies += [{**p, "in_force_at_start": False} for p in ev.policy_activations.items]
    for p in policies:
        p["thresholds"] = _thresholds(ev, p["policy_id"], p["source"])
    width = 1 / RISK_BINS
    return {
        "scored": ev.risk.n,
        "unscored": ev.decisions - ev.risk.n,
        "summary": ev.risk.to_json(),
        "histogram": [
            {"from": rounded(i * width, 4), "to": rounded((i + 1) * width, 4), "count": c}
            for i, c in enumerate(ev.risk_bins)
        ],
        "policies": policies,
        "policy_activations_in_period": ev.policy_activations.total,
        "residual_risk_accepted": {
            "auto_executed": ev.auto_executed_risk.to_json(),
            "approved_by_people": ev.approved_risk.to_json(),
        },
    }


def _oversight(ev: Evidence) -> dict[str, Any]:
    reviewers = {}
    for name, c in sorted(ev.reviewers.items()):
        n = c["approved"] + c["denied"]
        reviewers[name] = {
            "approved": c["approved"],
            "denied": c["denied"],
            "approval_rate": rounded(c["approved"] / n, 4) if n else None,
        }
    labels = [f"<{int(e)}s" for e in APPROVAL_EDGES] + [f">={int(APPROVAL_EDGES[-1])}s"]
    return {
        "approvals": ev.approvals,
        "denials": ev.denials,
        "completed_by_approval": ev.completed,
        "expiries": ev.expiries,
        "still_pending_at_end": len(ev._open),
        "reviewers": reviewers,
        "time_to_approval_seconds": {
            **ev.time_to_approval.to_json(),
            "histogram": [
                {"bin": lab, "count": n} for lab, n in zip(labels, ev.approval_bins, strict=True)
            ],
        },
        "overrides": {
            "denials": ev.denials,
            "rollbacks": sum(ev.rollbacks.values()),
            "rollbacks_by_actor": dict(sorted(ev.rollbacks.items())),
        },
        "halts": ev.halts.to_json(),
        "resumes": ev.resumes.to_json(),
        "access_refusals": ev.access_refusals,
    }


def _outcomes(ev: Evidence) -> dict[str, Any]:
    return {
        "by_status": dict(sorted(ev.outcomes.items())),
        "rollbacks": dict(sorted(ev.rollback_outcomes.items())),
        "recovered_after_restart": ev.recovered,
    }


def _incidents(ev: Evidence) -> dict[str, Any]:
    return {
        **ev.incidents.to_json(),
        "by_severity": dict(sorted(ev.severities.items())),
        "severity_mapping": {
            "serious": "serious incident, general deadline (Art. 73(2), 15 days)",
            "critical": "serious incident affecting critical infrastructure or widespread "
            "(Art. 73(3), 2 days)",
            "major": "not a serious incident by its label; assess",
            "minor": "not a serious incident by its label",
        },
        "death_not_recorded": "incident records carry no field for a death; where one "
        "occurred, Art. 73(4) requires a report within 10 days",
    }


def _models(ev: Evidence) -> dict[str, Any]:
    cards = {}
    for model_id in sorted(ev.by_model):
        card = ev._card(model_id)
        cards[model_id] = None if card is None else _card_summary(card)
    return {
        "in_force_at_start": ev.model_in_force,
        "activations": ev.models.to_json(),
        "decisions_by_model": dict(sorted(ev.by_model.items())),
        "cards": cards,
    }


def _explanations(ev: Evidence) -> dict[str, Any]:
    ev._sum_shap()
    n = ev.shap_rows
    means = sorted(((-rounded(s / n), f) for f, s in ev.abs_shap.items()) if n else [])
    importance = [{"feature": f, "mean_abs_shap": -m} for m, f in means]
    return {
        "decisions_explained": ev.explained,
        "decisions_without_explanation": ev.decisions - ev.explained,
        "global_importance": importance,
    }


def _drift(ev: Evidence) -> dict[str, Any]:
    from explain.drift import Thresholds, psi
    from explain.features import FEATURE_NAMES

    for model_id in {*ev._drift_rows, *ev._drift_recorded}:
        ev._flush_drift(model_id)
    levels = Thresholds()
    models = {}
    for model_id in sorted(ev.by_model):
        card = ev._card(model_id)
        if card is None or card.profile is None:
            models[model_id] = {
                "available": False,
                "why": "no model card with a drift reference for this model",
            }
            continue
        n = ev._drift_n[model_id]
        if not n:
            models[model_id] = {"available": False, "why": "no decisions could be featurized"}
            continue
        counts = ev._drift_counts[model_id]
        features = []
        for i, name in enumerate(FEATURE_NAMES):
            value = psi(card.profile.features[name].fractions, (counts[i] / n).tolist())
            features.append({"feature": name, "psi": rounded(value), "level": levels.level(value)})
        models[model_id] = {"available": True, "decisions": n, "features": features}
    return {
        "method": "population stability index against the model card's training "
        "profile (explain.drift), per feature",
        "thresholds": {"moderate": levels.moderate, "significant": levels.significant},
        "unreadable_decisions": ev._drift_errors,
        "models": models,
    }


def _retention(ev: Evidence) -> dict[str, Any]:
    if not ev.first_time:
        return {
            "oldest_record": None,
            "held_days": 0,
            "minimum_days": RETENTION_MINIMUM_DAYS,
            "meets_minimum": False,
        }
    # Measured at the period's end, or at the newest record if the period ends later; a
    # period that ends before the oldest record held nothing for any time.
    at = max(min(ev.period.end, parse_time(ev.last_time)), parse_time(ev.first_time))
    held = (at - parse_time(ev.first_time)).total_seconds() / 86_400
    return {
        "oldest_record": ev.first_time,
        "newest_record": ev.last_time,
        "held_days": rounded(held, 2),
        "minimum_days": RETENTION_MINIMUM_DAYS,
        "meets_minimum": held >= RETENTION_MINIMUM_DAYS,
        "measured_at": format_time(at),
    }


# -- the events listed one by one, written as the evidence reads them --------------------


def scope_event(rec: Entry) -> dict[str, Any]:
    """A halt or resume record: what the stop switch stopped or let go again."""
    b = rec.body
    scope = b.get("scope") if isinstance(b.get("scope"), Mapping) else {}
    assert isinstance(scope, MAP)
    if scope.get("all"):
        text = "everything"
    elif scope.get("runtime"):
        text = f"runtime {scope.get('runtime')}"
    else:
        text = str(scope.get("selector", "")) or "unspecified"
    return {
        "time": rec.time,
        "index": rec.index,
        "scope": text,
        "actor": rec.actor,
        "reason": str(b.get("reason", "")),
    }


def policy_event(rec: Entry) -> dict[str, Any]:
    """A policy record: the policy in force from its time on."""
    b = rec.body
    return {
        "policy_id": str(b.get("policy_id", "")),
        "source": str(b.get("source", "")),
        "since": rec.time,
        "actor": rec.actor,
    }


def model_event(rec: Entry) -> dict[str, Any]:
    """A model record: an activation (or other event) of a model from the registry."""
    b = rec.body
    return {
        "time": rec.time,
        "index": rec.index,
        "event": str(b.get("event", "")),
        "model_id": str(b.get("model_id", "")),
        "previous_model_id": str(b.get("previous_model_id", "")),
        "card_sha256": str(b.get("card_sha256", "")),
        "roc_auc": str(b.get("roc_auc", "")),
        "reason": str(b.get("reason", "")),
        "actor": rec.actor,
    }


def incident_event(rec: Entry, end: dt.datetime) -> dict[str, Any]:
    """An incident record, with its Art. 73 deadline as it stands at the period's ``end``."""
    b = rec.body
    severity = str(b.get("severity", "") or "minor")
    harmful = b.get("harmful") is True
    item: dict[str, Any] = {
        "time": rec.time,
        "index": rec.index,
        "decision_id": rec.decision_id,
        "target": rec.target,
        "actor": rec.actor,
        "harmful": harmful,
        "severity": severity,
        "description": str(b.get("description", "")),
    }
    item["art73"] = _art73(parse_time(rec.time), severity, harmful, end)
    return item


def _art73(aware: dt.datetime, severity: str, harmful: bool, end: dt.datetime) -> dict[str, Any]:
    """The Art. 73 reporting deadline for an incident, counted from the record's time."""
    klass = _SEVERITY_CLASS.get(severity) if harmful else None
    if klass is None:
        return {
            "serious_incident": False,
            "deadline": None,
            "basis": None,
            "why": "not labelled harmful with severity serious or critical",
        }
    days, basis = ART73_DEADLINES[klass]
    deadline = aware + dt.timedelta(days=days)
    return {
        "serious_incident": True,
        "class": klass,
        "aware": format_time(aware),
        "days": days,
        "basis": basis,
        "deadline": format_time(deadline),
        "deadline_passed_by_period_end": deadline <= end,
        "if_death": format_time(aware + dt.timedelta(days=ART73_DEADLINES["death"][0])),
    }


def _card_summary(card: ModelCard) -> dict[str, Any]:
    c = card.card
    metrics = c.get("metrics", {}) if isinstance(c.get("metrics"), Mapping) else {}
    keep = ("roc_auc", "pr_auc", "brier", "log_loss", "holdout_rows", "holdout_positive_rate")
    return {
        "card_sha256": card.card_sha256,
        "created": str(c.get("created", "")),
        "schema_version": str(c.get("schema_version", "")),
        "model_type": str(c.get("model_type", "")),
        "data": plain(c.get("data", {})),
        "metrics": {k: plain(metrics[k]) for k in keep if k in metrics},
        "intended_use": str(c.get("intended_use", "")),
        "limits": [str(x) for x in c.get("limits", [])]
        if isinstance(c.get("limits"), list)
        else [],
        "drift_reference": card.profile is not None,
    }
