"""Runtime adapters (libvirt, Kata) and the value types they share with ``explain``.

This package imports no other govgate package.
"""

from adapters.action import (
    RUNTIMES,
    VERBS,
    Action,
    PowerState,
    Reversibility,
    RuntimeState,
    Target,
    Verb,
    VerbInfo,
)
from adapters.errors import AdapterError, InvalidActionError

__all__ = [
    "RUNTIMES",
    "VERBS",
    "Action",
    "AdapterError",
    "InvalidActionError",
    "PowerState",
    "Reversibility",
    "RuntimeState",
    "Target",
    "Verb",
    "VerbInfo",
]
