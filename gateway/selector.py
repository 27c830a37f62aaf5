"""Label selectors such as ``env=prod,criticality=high``: parsed once, matched against labels.

Every condition must hold. Values compare without regard to case, and ``env``
and ``environment`` are one label, as they are to the featurizer. Policies,
roles and halts all use this one reading.

Example::

    sel = parse_selector("env=prod,criticality=critical")
    assert selector_matches(sel, {"environment": "PROD", "criticality": "critical"})
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["Selector", "canonical", "label_value", "parse_selector", "selector_matches"]

Selector = tuple[tuple[str, str], ...]
_ALIASES = {"env": ("env", "environment"), "environment": ("environment", "env")}


def parse_selector(text: str, *, allowed: re.Pattern[str] | None = None) -> Selector:
    """The (key, lower-cased value) pairs; ValueError naming the part that is not key=value.

    ``allowed``, when given, is a pattern every key and value must match in full.
    """
    pairs = []
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip().lower()
        bad = not sep or not key or not value
        if not bad and allowed is not None:
            bad = not allowed.fullmatch(key) or not allowed.fullmatch(value)
        if bad:
            raise ValueError(f"{part.strip()!r} is not key=value")
        pairs.append((key, value))
    return tuple(pairs)


def label_value(labels: Mapping[str, str], key: str) -> str | None:
    """The label's value, lower-cased, under ``key`` or its alias; None if absent."""
    for name in _ALIASES.get(key, (key,)):
        if name in labels:
            return labels[name].strip().lower()
    return None


def selector_matches(selector: Selector, labels: Mapping[str, str]) -> bool:
    return all(label_value(labels, k) == v for k, v in selector)


def canonical(selector: Selector) -> Selector:
    """The same conditions in one spelling (``environment`` as ``env``, sorted, once each),
    so that two selectors that match the same labels compare equal."""
    return tuple(sorted({("env" if k == "environment" else k, v) for k, v in selector}))
