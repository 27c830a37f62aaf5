"""Framework mappings: each requirement, in our own words, and the evidence that bears on it.

Two frameworks: the EU AI Act (Regulation (EU) 2024/1689) and the NIST AI
Risk Management Framework 1.0 (NIST AI 100-1). Each :class:`Requirement`
names the evidence sections of :mod:`compliance.evidence` that apply, and
:func:`assess` gives it a status from what the evidence holds:

* ``evidenced``: the gateway's records show what the requirement asks for;
* ``partial``: they show part of it; ``missing`` says what else is needed;
* ``outside-gateway``: it is about things a gateway cannot see (development,
  data governance, organisational roles); ``missing`` says what.

The requirement statements are paraphrases for orientation, not legal text;
the reference is the regulation and the framework themselves.

Example::

    for item in assess("eu-ai-act", evidence_sections):
        print(item["id"], item["status"])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FRAMEWORKS", "Framework", "Requirement", "assess"]

Check = Callable[[Mapping[str, Any]], tuple[str, str]]  # evidence -> (status, missing)


@dataclass(frozen=True)
class Requirement:
    id: str
    title: str
    statement: str  # the requirement in one line, our own words
    evidence: tuple[str, ...]  # evidence section names
    check: Check


@dataclass(frozen=True)
class Framework:
    id: str
    title: str
    reference: str
    requirements: tuple[Requirement, ...]


def _always(status: str, missing: str) -> Check:
    return lambda ev: (status, missing)


def _risk(ev: Mapping[str, Any]) -> tuple[str, str]:
    policies = ev["risk"]["policies"]
    if not ev["risk"]["scored"]:
        return "partial", "no scored decisions in the period"
    if not policies or not all(p["thresholds"].get("recorded") for p in policies):
        return (
            "partial",
            "the thresholds in force are not recorded in the ledger (only the "
            "policy's SHA-256); supply the policy file; the risk management system itself "
            "(identification and evaluation of foreseeable risks) is documented outside the "
            "gateway",
        )
    return (
        "partial",
        "the risk management system as a whole (foreseeable risks, testing, "
        "measures beyond the approval policy) is documented outside the gateway",
    )


def _records(ev: Mapping[str, Any]) -> tuple[str, str]:
    c = ev["completeness"]
    if not c["records_in_period"]:
        return "partial", "no records in the period"
    if c["covering_checkpoint"] is None:
        return "partial", "no signed checkpoint covers the period"
    if c["gaps"]["count"]:
        return "partial", "the period has stretches without any record (see gaps); explain them"
    return "evidenced", ""


def _transparency(ev: Mapping[str, Any]) -> tuple[str, str]:
    models = ev["models"]["cards"]
    if ev["explanations"]["decisions_explained"] and models and all(models.values()):
        return (
            "partial",
            "instructions for use (Art. 13(2)-(3)) are a document for deployers, "
            "outside the gateway; the records show explanations and model cards",
        )
    return (
        "partial",
        "model cards are not available for every model used (give the data "
        "directory or its models); instructions for use are outside the gateway",
    )


def _oversight(ev: Mapping[str, Any]) -> tuple[str, str]:
    o = ev["oversight"]
    if o["approvals"] + o["denials"] and (o["halts"]["count"] or o["resumes"]["count"]):
        return "evidenced", ""
    return (
        (
            "partial",
            "no stop-switch use in the period: the records cannot show it works; run a halt drill",
        )
        if o["approvals"] + o["denials"]
        else ("partial", "no human reviews in the period")
    )


def _accuracy(ev: Mapping[str, Any]) -> tuple[str, str]:
    drift = ev["drift"]["models"]
    if drift and all(m.get("available") for m in drift.values()):
        return (
            "partial",
            "accuracy is measured at training (model card), not against real "
            "outcomes; cybersecurity of the deployment is outside the gateway",
        )
    return (
        "partial",
        "drift could not be computed for every model (no model card with a "
        "drift reference); cybersecurity is outside the gateway",
    )


def _retention(ev: Mapping[str, Any]) -> tuple[str, str]:
    r = ev["retention"]
    if r["meets_minimum"]:
        return "evidenced", ""
    return (
        "partial",
        f"the oldest record held is {r['held_days']} days old at the period's "
        f"end, less than the {r['minimum_days']}-day (six-month) minimum; that is fine only "
        "if the system has run for less time",
    )


def _monitoring(ev: Mapping[str, Any]) -> tuple[str, str]:
    return (
        "partial",
        "the post-market monitoring plan (Art. 72(3)) and data from deployers are "
        "outside the gateway; the records show incident labels, model changes and drift",
    )


def _incidents(ev: Mapping[str, Any]) -> tuple[str, str]:
    return (
        "partial",
        "whether and when each serious incident was reported to the market "
        "surveillance authority is not recorded in the ledger; the deadlines are computed "
        "from the time the incident was recorded, which may be after awareness",
    )


def _inventory(ev: Mapping[str, Any]) -> tuple[str, str]:
    if ev["models"]["decisions_by_model"]:
        return (
            "partial",
            "the records list the models and engines that acted through the "
            "gateway; AI systems that bypass it are not inventoried here",
        )
    return "partial", "no scored decisions: no model inventory from the records"


def _incident_practice(ev: Mapping[str, Any]) -> tuple[str, str]:
    if ev["incidents"]["count"]:
        return (
            "partial",
            "incidents are identified and recorded; testing practices and "
            "information sharing beyond the record are outside the gateway",
        )
    return (
        "partial",
        "no incidents recorded in the period; testing and information sharing "
        "are outside the gateway",
    )


def _deactivate(ev: Mapping[str, Any]) -> tuple[str, str]:
    o = ev["oversight"]
    if o["halts"]["count"] or o["overrides"]["rollbacks"]:
        return "evidenced", ""
    return (
        "partial",
        "no halt or rollback in the period: the mechanism exists but its use is not shown",
    )


_ART9 = "Risk management system"
EU_AI_ACT = Framework(
    "eu-ai-act",
    "EU AI Act (Regulation (EU) 2024/1689)",
    "https://eur-lex.europa.eu/eli/reg/2024/1689/oj",
    (
        Requirement(
            "Art. 9",
            _ART9,
            "Run a documented, continuous process that identifies, evaluates and "
            "mitigates risks, leaving only an acceptable residual risk.",
            ("risk", "decisions"),
            _risk,
        ),
        Requirement(
            "Art. 12",
            "Record-keeping",
            "The system logs events automatically over its lifetime so that its "
            "behaviour can be traced.",
            ("completeness",),
            _records,
        ),
        Requirement(
            "Art. 13",
            "Transparency and information to deployers",
            "Deployers can understand the system's output and use it properly.",
            ("explanations", "models"),
            _transparency,
        ),
        Requirement(
            "Art. 14",
            "Human oversight",
            "People can oversee the system, decline or reverse its output and stop it, "
            "and are kept aware of over-reliance on it.",
            ("oversight", "decisions"),
            _oversight,
        ),
        Requirement(
            "Art. 15",
            "Accuracy, robustness and cybersecurity",
            "The system performs consistently at a declared accuracy, tolerates errors "
            "and fails safe.",
            ("models", "drift", "decisions", "outcomes"),
            _accuracy,
        ),
        Requirement(
            "Art. 19 / 26(6)",
            "Retention of logs",
            "Automatically generated logs are kept for at least six months.",
            ("retention",),
            _retention,
        ),
        Requirement(
            "Art. 72",
            "Post-market monitoring",
            "The provider collects and analyses data on the system's performance in use "
            "throughout its life.",
            ("incidents", "models", "drift", "outcomes"),
            _monitoring,
        ),
        Requirement(
            "Art. 73",
            "Reporting of serious incidents",
            "Serious incidents are reported to the authority within 15 days of awareness, "
            "10 days after a death, 2 days when widespread or hitting critical "
            "infrastructure.",
            ("incidents",),
            _incidents,
        ),
        Requirement(
            "Annex IV",
            "Technical documentation",
            "Development, data, validation and design choices are documented.",
            ("models",),
            _always(
                "outside-gateway",
                "development documentation is outside what a "
                "gateway records; the model cards cover only the risk model",
            ),
        ),
    ),
)

NIST_AI_RMF = Framework(
    "nist-ai-rmf",
    "NIST AI Risk Management Framework 1.0 (NIST AI 100-1)",
    "https://doi.org/10.6028/NIST.AI.100-1",
    (
        Requirement(
            "GOVERN 1.6",
            "Inventory of AI systems",
            "There is an inventory of the organisation's AI systems, resourced by risk.",
            ("models", "decisions"),
            _inventory,
        ),
        Requirement(
            "GOVERN 3.2",
            "Roles for human-AI configurations",
            "Policies set out who oversees AI systems and how people and AI share decisions.",
            ("oversight", "risk"),
            _always(
                "partial",
                "the records show who reviewed, halted and rolled back, "
                "and which policy applied; the roles policy itself is an "
                "organisational document",
            ),
        ),
        Requirement(
            "GOVERN 4.3",
            "Testing, incident identification and information sharing",
            "Practices support testing AI, spotting incidents and sharing what is learnt.",
            ("incidents",),
            _incident_practice,
        ),
        Requirement(
            "MAP 3.5",
            "Human oversight processes",
            "Human oversight processes are defined, assessed and documented.",
            ("oversight", "risk"),
            _oversight,
        ),
        Requirement(
            "MEASURE 2.4",
            "Monitoring in production",
            "The system's behaviour is monitored while it is in production.",
            ("decisions", "drift", "outcomes"),
            _accuracy,
        ),
        Requirement(
            "MEASURE 2.6",
            "Safety evaluation",
            "The system is evaluated for safety regularly, residual risk stays within "
            "tolerance, and it can fail safely.",
            ("risk", "decisions", "outcomes"),
            _risk,
        ),
        Requirement(
            "MEASURE 2.7",
            "Security and resilience",
            "Security and resilience are evaluated and documented.",
            ("completeness", "oversight", "outcomes"),
            _always(
                "partial",
                "the ledger's integrity, access refusals, fallbacks and "
                "recovered outcomes are shown; security testing is outside the "
                "gateway",
            ),
        ),
        Requirement(
            "MEASURE 2.9",
            "Explainability",
            "The model is explained and documented, and its output interpreted in context.",
            ("explanations", "models"),
            _transparency,
        ),
        Requirement(
            "MANAGE 2.4",
            "Supersede, disengage or deactivate",
            "There are means to override, disengage or switch off a system that "
            "behaves outside its intended use.",
            ("oversight",),
            _deactivate,
        ),
        Requirement(
            "MANAGE 4.1",
            "Post-deployment monitoring plans",
            "Monitoring after deployment is implemented, including input, override, "
            "incident response, recovery and change management.",
            ("oversight", "incidents", "models", "drift"),
            _monitoring,
        ),
        Requirement(
            "MANAGE 4.3",
            "Incident communication and tracking",
            "Incidents and errors are tracked, responded to and communicated to those concerned.",
            ("incidents", "outcomes"),
            _incidents,
        ),
    ),
)

FRAMEWORKS: dict[str, Framework] = {f.id: f for f in (EU_AI_ACT, NIST_AI_RMF)}


def assess(framework: str, evidence: Mapping[str, Any], *, verified: bool) -> list[dict[str, Any]]:
    """Each requirement with its evidence sections and status; never ``evidenced`` unverified."""
    out = []
    for req in FRAMEWORKS[framework].requirements:
        status, missing = req.check(evidence)
        if not verified and status == "evidenced":
            status = "partial"
            missing = "the ledger did not verify: no evidence from it can be relied on"
        out.append(
            {
                "id": req.id,
                "title": req.title,
                "requirement": req.statement,
                "evidence": list(req.evidence),
                "status": status,
                "missing": missing,
                "evidence_verified": verified,
            }
        )
    return out
