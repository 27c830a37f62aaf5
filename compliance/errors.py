"""Errors raised by the compliance package.

::

    ReportError                 a report cannot be built from what was given
    └── SourceError             the ledger source (data dir, export, key) is unusable

A ledger that does not verify is *not* an error: the report is still built and
says so in its integrity section (``integrity.verified: false``).
"""

from __future__ import annotations

__all__ = ["ReportError", "SourceError"]


class ReportError(Exception):
    """A report cannot be built: bad period, unknown framework or format."""


class SourceError(ReportError):
    """The ledger source cannot be read: missing file, bad key, unusable data directory."""
