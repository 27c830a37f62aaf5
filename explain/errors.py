"""Errors raised by the risk model package.

::

    ExplainError                 anything explain refuses or cannot do
    ├── ModelUnavailableError    no score can be given: the gateway applies its
    │   │                        safe fallback (never a made-up score)
    │   ├── ModelNotFoundError   no model with that id (or prefix) is registered
    │   ├── ModelCorruptError    the file's SHA-256 is not its id, or XGBoost
    │   │                        cannot read it
    │   ├── SchemaMismatchError  trained on another feature schema than this build's
    │   ├── ScoringTimeoutError  scoring did not finish within its deadline
    │   ├── ScorerOverloadedError too many scores are already waiting
    │   └── ScoringFailedError   XGBoost failed or returned non-finite output
    └── TrainingDataError        a history file, ledger join or training request
                                 is unusable (names the line or the reason)
"""

from __future__ import annotations

__all__ = [
    "ExplainError",
    "ModelCorruptError",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "SchemaMismatchError",
    "ScorerOverloadedError",
    "ScoringFailedError",
    "ScoringTimeoutError",
    "TrainingDataError",
]


class ExplainError(Exception):
    """Root of everything explain raises on purpose."""


class ModelUnavailableError(ExplainError):
    """The model cannot score; callers fall back to their safe default."""


class ModelNotFoundError(ModelUnavailableError):
    """No registered model has that id."""


class ModelCorruptError(ModelUnavailableError):
    """A model file does not match its id or cannot be read."""


class SchemaMismatchError(ModelUnavailableError):
    """A model was trained on a different feature schema."""


class ScoringTimeoutError(ModelUnavailableError):
    """Scoring did not finish in time."""


class ScorerOverloadedError(ModelUnavailableError):
    """Too many scores are waiting; the caller should shed load or retry later."""


class ScoringFailedError(ModelUnavailableError):
    """XGBoost raised, or produced NaN or infinite output."""


class TrainingDataError(ExplainError):
    """Training input is malformed, empty or one-sided."""
