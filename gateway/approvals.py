"""Approvals: who may review a pending decision, and when it is ready to execute.

The rules, enforced by :meth:`Pending.review`:

* **Bound to the exact request.** Each review carries the digest of the action
  as the reviewer saw it (:func:`request_digest`: SHA-256 over the RFC 8785
  form of the request id, the requester and the action). A review whose digest
  differs is refused, so an approval cannot be replayed onto another action.
* **No self-approval.** The identity that proposed the action cannot review it.
* **Distinct approvers.** Each identity reviews once, and ``required`` distinct
  approvals make the decision ready.
* **Time-bound.** A review after the deadline is refused, and the decision has
  expired (the gateway records ``EXPIRED``).
* **Reasons.** A denial always needs a reason; an approval needs one when the
  policy says so.

This module holds no I/O. The gateway records every accepted review in the
ledger before acting on it.

Example::

    pending = Pending("d-1", requester="spiffe://govgate.local/engine-1",
                      digest=request_digest("r-1", requester, action), required=2,
                      deadline=now + ttl)
    state = pending.review("spiffe://govgate.local/alice", True, "looks right", digest, now)
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
from dataclasses import dataclass, field

from adapters.action import Action
from ledger.canonical import canonical_json

__all__ = [
    "ApprovalError",
    "Pending",
    "ReviewOutcome",
    "request_digest",
]


class ApprovalError(Exception):
    """A review that the rules refuse; ``code`` says which rule."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # self-approval, digest-mismatch, duplicate, expired,
        # reason-required, not-pending


class ReviewOutcome(enum.StrEnum):
    WAITING = "waiting"  # approved, but more approvals are needed
    READY = "ready"  # enough distinct approvals: execute
    DENIED = "denied"  # a reviewer denied it


def request_digest(request_id: str, requester: str, action: Action) -> bytes:
    """SHA-256 over the canonical JSON of what was proposed, by whom, under which id."""
    doc = {"request_id": request_id, "requester": requester, "action": action.to_record()}
    return hashlib.sha256(canonical_json(doc)).digest()


@dataclass(frozen=True)
class Review:
    reviewer: str
    approved: bool
    reason: str
    time: dt.datetime


@dataclass
class Pending:
    decision_id: str
    requester: str
    digest: bytes
    required: int
    deadline: dt.datetime
    reason_required: bool = True
    reviews: list[Review] = field(default_factory=list)
    closed: ReviewOutcome | None = None

    def __post_init__(self) -> None:
        if self.required < 1:
            raise ValueError("a pending decision needs at least one approval")
        if self.deadline.tzinfo is None:
            raise ValueError("deadline must be timezone-aware")

    @property
    def approvers(self) -> list[str]:
        return [r.reviewer for r in self.reviews if r.approved]

    def expired(self, now: dt.datetime) -> bool:
        return self.closed is None and now >= self.deadline

    def review(
        self, reviewer: str, approved: bool, reason: str, digest: bytes, now: dt.datetime,
        *, recorded: bool = False,
    ) -> ReviewOutcome:  # fmt: skip
        """Apply one review, or raise :class:`ApprovalError` and change nothing.

        ``recorded``: a review read back from the ledger. The gateway checked its deadline
        before it wrote the record, and the record's own time (when it was sealed) may be a
        little later, so the deadline is not checked again."""
        if self.closed is not None:
            raise ApprovalError(
                "not-pending", f"decision {self.decision_id} is already {self.closed}"
            )
        if now >= self.deadline and not recorded:
            raise ApprovalError(
                "expired", f"decision {self.decision_id} expired at {self.deadline.isoformat()}"
            )
        if not reviewer:
            raise ApprovalError("self-approval", "a review needs an authenticated reviewer")
        if reviewer == self.requester:
            raise ApprovalError(
                "self-approval", f"{reviewer} proposed this action and cannot review it"
            )
        if digest != self.digest:
            raise ApprovalError(
                "digest-mismatch",
                "the review is for a different request than the one pending "
                f"(digest {digest.hex()[:12]}..., pending {self.digest.hex()[:12]}...)",
            )
        if any(r.reviewer == reviewer for r in self.reviews):
            raise ApprovalError("duplicate", f"{reviewer} has already reviewed this decision")
        if not reason.strip() and (not approved or self.reason_required):
            what = "a denial" if not approved else "an approval (the policy requires it)"
            raise ApprovalError("reason-required", f"{what} needs a reason")
        self.reviews.append(Review(reviewer, approved, reason, now))
        if not approved:
            self.closed = ReviewOutcome.DENIED
        elif len(self.approvers) >= self.required:
            self.closed = ReviewOutcome.READY
        return self.closed or ReviewOutcome.WAITING
