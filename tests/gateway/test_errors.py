"""The one table from errors to gRPC statuses: every row, with its google.rpc details."""

from __future__ import annotations

import asyncio

import pytest
from google.rpc import code_pb2, error_details_pb2

from adapters.errors import AdapterTimeoutError, ConflictError, UnavailableError
from gateway.errors import (
    DeadlineExceededError,
    DecisionNotFoundError,
    InvalidRequestError,
    LedgerUnavailableError,
    OverloadedError,
    RequestConflictError,
    ReviewRefusedError,
)
from gateway.identity import IdentityError
from gateway.roles import AccessDeniedError
from gateway.server import Health, status_of
from ledger.errors import NotFoundError as LedgerNotFoundError
from ledger.errors import StoreError


def details(status: object) -> dict[str, object]:
    out: dict[str, object] = {}
    for packed in status.details:  # type: ignore[attr-defined]
        for kind in (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo,
                     error_details_pb2.RetryInfo):  # fmt: skip
            if packed.Is(kind.DESCRIPTOR):
                msg = kind()
                packed.Unpack(msg)
                out[kind.__name__] = msg
    return out


@pytest.mark.parametrize(
    ("err", "code", "reason"),
    [
        (InvalidRequestError("bad", field="action.verb"), code_pb2.INVALID_ARGUMENT,
         "INVALID_ARGUMENT"),
        (RequestConflictError("reused"), code_pb2.ALREADY_EXISTS, "REQUEST_ID_REUSED"),
        (DecisionNotFoundError("no such"), code_pb2.NOT_FOUND, "NOT_FOUND"),
        (LedgerNotFoundError("no size"), code_pb2.NOT_FOUND, "NOT_FOUND"),
        (ReviewRefusedError("self-approval", "own"), code_pb2.PERMISSION_DENIED, "SELF_APPROVAL"),
        (ReviewRefusedError("digest-mismatch", "x"), code_pb2.PERMISSION_DENIED,
         "DIGEST_MISMATCH"),
        (ReviewRefusedError("duplicate", "again"), code_pb2.ALREADY_EXISTS, "DUPLICATE"),
        (ReviewRefusedError("expired", "late"), code_pb2.FAILED_PRECONDITION, "EXPIRED"),
        (ReviewRefusedError("not-pending", "done"), code_pb2.FAILED_PRECONDITION, "NOT_PENDING"),
        (ReviewRefusedError("reason-required", "why"), code_pb2.INVALID_ARGUMENT,
         "REASON_REQUIRED"),
        (ReviewRefusedError("not-executed", "x"), code_pb2.FAILED_PRECONDITION, "NOT_EXECUTED"),
        (ReviewRefusedError("irreversible", "x"), code_pb2.FAILED_PRECONDITION, "IRREVERSIBLE"),
        (ReviewRefusedError("halted", "stop"), code_pb2.FAILED_PRECONDITION, "HALTED"),
        (ReviewRefusedError("not-halted", "x"), code_pb2.FAILED_PRECONDITION, "NOT_HALTED"),
        (LedgerUnavailableError("disk"), code_pb2.UNAVAILABLE, "UNAVAILABLE"),
        (UnavailableError("libvirt down"), code_pb2.UNAVAILABLE, "UNAVAILABLE"),
        (OverloadedError("full", 0.25), code_pb2.RESOURCE_EXHAUSTED, "OVERLOADED"),
        (DeadlineExceededError("late"), code_pb2.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
        (AdapterTimeoutError("slow"), code_pb2.DEADLINE_EXCEEDED, "RUNTIME_TIMEOUT"),
        (IdentityError("no cert"), code_pb2.UNAUTHENTICATED, "NO_IDENTITY"),
        (AccessDeniedError("id", "Approve", "not an approver"), code_pb2.PERMISSION_DENIED,
         "ACCESS_DENIED"),
        (ConflictError("running"), code_pb2.FAILED_PRECONDITION, "CONFLICTERROR"),
        (StoreError("locked"), code_pb2.FAILED_PRECONDITION, "STOREERROR"),
        (RuntimeError("a bug"), code_pb2.INTERNAL, "INTERNAL"),
    ],
)  # fmt: skip
def test_every_error_has_its_status_and_details(err: Exception, code: int, reason: str):
    status = status_of(err)
    assert status.code == code
    got = details(status)
    info = got["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == (reason, "govgate")
    if code == code_pb2.INTERNAL:
        assert status.message == "internal error"  # a bug's text never reaches callers
    else:
        assert status.message == str(err)
    assert ("BadRequest" in got) == isinstance(err, InvalidRequestError)
    assert ("RetryInfo" in got) == isinstance(err, OverloadedError)


def test_field_violations_retry_delays_and_decision_ids():
    bad = details(status_of(InvalidRequestError("not a verb", field="action.verb")))["BadRequest"]
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("action.verb", "not a verb")
    ]
    retry = details(status_of(OverloadedError("full", 0.25)))["RetryInfo"]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == 250
    refused = ReviewRefusedError("expired", "late")
    refused.decision_id = "d-123"
    info = details(status_of(refused))["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert dict(info.metadata) == {"decision_id": "d-123"}


async def test_a_failed_append_marks_not_serving_and_says_so_once():
    """The error mapper marks the gateway NOT_SERVING the moment an append fails; the
    change is said (logged) as the health watcher's changes are, and only when it is one."""
    said: list[str] = []
    health = Health(said.append)
    await health.set(True)
    health.down(StoreError("the ledger database cannot be written: disk I/O error"))
    health.down(StoreError("the ledger database cannot be written: again"))
    for _ in range(10):
        await asyncio.sleep(0)
    assert health.serving is False
    assert said == ["NOT_SERVING: the ledger database cannot be written: disk I/O error"]
