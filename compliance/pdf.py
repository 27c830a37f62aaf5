"""The compliance report as PDF: the HTML rendering laid out by weasyprint.

:func:`render_pdf` renders :func:`compliance.html.render_html` and hands it to
weasyprint, imported only here and only when called, so JSON and HTML reports
need neither weasyprint nor Pango (Debian: ``libpango-1.0-0``,
``libpangoft2-1.0-0``, ``libharfbuzz-subset0``; ``scripts/setup.sh``). The
HTML has no external resources, so weasyprint fetches nothing. The PDF carries
the same text as the HTML: integrity statement first (on page 1), the report's
digest in every page footer.

Example::

    Path("report.pdf").write_bytes(render_pdf(report))
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from compliance.errors import ReportError
from compliance.html import render_html

__all__ = ["render_pdf"]


def _refuse_fetch(url: str, *args: Any, **kwargs: Any) -> Any:
    # The page is self-contained; any fetch would be a template bug or injected content.
    raise ValueError(f"the report may not load external resources ({url!r})")


def render_pdf(report: Mapping[str, Any]) -> bytes:
    """The report as PDF bytes; :class:`ReportError` if weasyprint cannot be loaded."""
    html = render_html(report)
    try:
        weasyprint: Any = importlib.import_module("weasyprint")
    except (ImportError, OSError) as err:  # OSError: Pango's shared libraries are missing
        raise ReportError(
            f"PDF output needs weasyprint and Pango (see scripts/setup.sh): {err}"
        ) from err
    pdf = weasyprint.HTML(string=html, url_fetcher=_refuse_fetch).write_pdf()
    if not isinstance(pdf, bytes):
        raise RuntimeError("weasyprint returned no PDF bytes")
    return pdf
