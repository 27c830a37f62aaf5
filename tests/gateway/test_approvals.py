"""Approval rules: digest binding, no self-approval, distinct approvers, TTL, reasons."""

from __future__ import annotations

import datetime as dt

import pytest

from adapters.action import Action
from gateway.approvals import ApprovalError, Pending, ReviewOutcome, request_digest

ENGINE = "spiffe://govgate.local/engine-1"
ALICE = "spiffe://govgate.local/alice"
BOB = "spiffe://govgate.local/bob"
T0 = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)


def action(verb: str = "delete", resource: str = "db-1") -> Action:
    return Action.from_json({"verb": verb, "target": {"runtime": "libvirt", "resource": resource}})


def pending(required: int = 2, reason_required: bool = True) -> Pending:
    digest = request_digest("r-1", ENGINE, action())
    return Pending("d-1", ENGINE, digest, required, T0 + dt.timedelta(hours=1), reason_required)


def test_digest_binds_request_id_requester_and_action():
    d = request_digest("r-1", ENGINE, action())
    assert len(d) == 32
    assert d == request_digest("r-1", ENGINE, action())
    assert d != request_digest("r-2", ENGINE, action())
    assert d != request_digest("r-1", ALICE, action())
    assert d != request_digest("r-1", ENGINE, action(resource="db-2"))
    assert d != request_digest("r-1", ENGINE, action(verb="destroy"))


def test_two_distinct_approvers_make_it_ready():
    p = pending()
    digest = p.digest
    assert p.review(ALICE, True, "checked backups", digest, T0) is ReviewOutcome.WAITING
    with pytest.raises(ApprovalError, match="already reviewed") as info:
        p.review(ALICE, True, "again", digest, T0)
    assert info.value.code == "duplicate"
    assert p.review(BOB, True, "ok", digest, T0) is ReviewOutcome.READY
    assert p.approvers == [ALICE, BOB]
    with pytest.raises(ApprovalError) as info:
        p.review("spiffe://govgate.local/carol", True, "late", digest, T0)
    assert info.value.code == "not-pending"


def test_requester_cannot_review_its_own_request():
    p = pending(required=1)
    with pytest.raises(ApprovalError) as info:
        p.review(ENGINE, True, "trust me", p.digest, T0)
    assert info.value.code == "self-approval"
    assert p.reviews == []


def test_an_approval_cannot_be_replayed_onto_another_action():
    p = pending(required=1)
    other = request_digest("r-1", ENGINE, action(resource="db-2"))
    with pytest.raises(ApprovalError) as info:
        p.review(ALICE, True, "ok", other, T0)
    assert info.value.code == "digest-mismatch"
    assert p.closed is None


def test_expiry_and_reasons():
    p = pending(required=1)
    late = T0 + dt.timedelta(hours=1)
    assert p.expired(late)
    with pytest.raises(ApprovalError) as info:
        p.review(ALICE, True, "ok", p.digest, late)
    assert info.value.code == "expired"
    p = pending(required=1)
    with pytest.raises(ApprovalError, match="approval") as info:
        p.review(ALICE, True, " ", p.digest, T0)
    assert info.value.code == "reason-required"
    lenient = pending(required=1, reason_required=False)
    assert lenient.review(ALICE, True, "", lenient.digest, T0) is ReviewOutcome.READY
    strict = pending(required=1, reason_required=False)
    with pytest.raises(ApprovalError, match="denial"):
        strict.review(ALICE, False, "", strict.digest, T0)  # a denial always needs a reason
    assert strict.review(ALICE, False, "no backup", strict.digest, T0) is ReviewOutcome.DENIED
    assert not strict.expired(late)  # closed decisions do not expire


def test_construction_limits():
    with pytest.raises(ValueError, match="at least one"):
        Pending("d", ENGINE, b"x" * 32, 0, T0)
    with pytest.raises(ValueError, match="timezone"):
        Pending("d", ENGINE, b"x" * 32, 1, dt.datetime(2026, 1, 1))
