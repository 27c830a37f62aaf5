"""Errors the gateway's core raises; the gRPC layer maps each root to one status code.

::

    GatewayError
    ├── InvalidRequestError   a field is malformed (INVALID_ARGUMENT, with its path)
    ├── RequestConflictError  a request id reused for another action (ALREADY_EXISTS)
    ├── DecisionNotFoundError no such decision (NOT_FOUND)
    ├── ReviewRefusedError    an approval rule refused a review (PERMISSION_DENIED or
    │                         FAILED_PRECONDITION by its code)
    ├── LedgerUnavailableError the decision could not be recorded: nothing ran (UNAVAILABLE)
    ├── DeadlineExceededError the caller's deadline passed before the decision was recorded
    │                         (DEADLINE_EXCEEDED): nothing was recorded or run
    └── OverloadedError       too much in flight; retry later (RESOURCE_EXHAUSTED, RetryInfo)
"""

from __future__ import annotations

__all__ = [
    "DeadlineExceededError",
    "DecisionNotFoundError",
    "GatewayError",
    "InvalidRequestError",
    "LedgerUnavailableError",
    "OverloadedError",
    "RequestConflictError",
    "ReviewRefusedError",
]


class GatewayError(Exception):
    """Root of what the gateway core refuses or cannot do."""

    # Its text may echo what a caller sent: traces carry only its type (gateway.spans).
    echoes_input = True

    decision_id: str = ""  # the decision it concerns, when there is one (for ErrorInfo)


class InvalidRequestError(GatewayError):
    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class RequestConflictError(GatewayError):
    pass


class DecisionNotFoundError(GatewayError):
    pass


class ReviewRefusedError(GatewayError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class LedgerUnavailableError(GatewayError):
    pass


class OverloadedError(GatewayError):
    """Refused before anything was recorded, because the gateway is full; retry later."""

    def __init__(self, message: str, retry_after: float = 0.1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceededError(GatewayError):
    """The caller's deadline passed before the decision was recorded; nothing was."""
