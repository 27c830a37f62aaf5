"""Errors raised by the runtime adapters and by the action/state value types.

One root, so the gateway can map every adapter failure from a single table::

    AdapterError                the adapter refuses or cannot do what was asked
    ├── InvalidActionError      the action or state is malformed or impossible
    │                           (bad verb, bad parameter, more vCPUs than max, ...)
    ├── NotFoundError           the target does not exist on its runtime
    ├── ConflictError           the target is in a state that forbids the action
    ├── UnsupportedError        the runtime cannot perform this verb
    ├── UnavailableError        the runtime cannot be reached (daemon down, ...)
    └── AdapterTimeoutError     the call did not finish within its deadline

Adapters wrap the runtime's own errors with ``raise ... from err`` so the
original cause stays on ``__cause__`` for logs, never in caller-facing text.
"""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "AdapterTimeoutError",
    "ConflictError",
    "EffectUnknownError",
    "InvalidActionError",
    "NotFoundError",
    "UnavailableError",
    "UnsupportedError",
]


class AdapterError(Exception):
    """Root of everything the adapters raise on purpose."""

    # Its text may echo what a caller sent: traces carry only its type (gateway.spans).
    echoes_input = True


class InvalidActionError(AdapterError, ValueError):
    """An action or runtime state is malformed or asks for the impossible.

    ``field`` names the offending field in dotted form (``action.parameters.vcpus``)
    so that callers can report it as a field violation.
    """

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


class NotFoundError(AdapterError):
    """The target resource does not exist on its runtime."""


class ConflictError(AdapterError):
    """The target's current state forbids the action."""


class UnsupportedError(AdapterError):
    """The runtime cannot perform this verb at all."""


class UnavailableError(AdapterError):
    """The runtime cannot be reached; retrying later may work."""


class EffectUnknownError(AdapterError):
    """A call was cut off after it may have reached the runtime: whether it took effect
    is unknown until the target is read again (reconciled)."""


class AdapterTimeoutError(EffectUnknownError):
    """A runtime call did not finish within its deadline."""
