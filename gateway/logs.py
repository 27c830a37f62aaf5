"""The gateway's log: one line per event on standard error, as text for people or JSON for
log pipelines (``govgate serve --log-format json``).

Every line is an event name plus fields. What may appear is decided here, not at each
call: decisions are logged by id, verb, target, state, risk, policy, model and trace id;
never their parameters, justification, labels or anything read from a key file. Values
are passed through :func:`_safe`, which keeps only numbers, booleans and short strings
without control characters, so that a hostile string cannot forge a line.

Lines are formatted and written on a thread of their own (the standard library's
``QueueHandler`` and ``QueueListener``): a decision's log line costs the event loop a
record on a queue, not a format and a write. The thread writes what is queued before the
process exits normally.

Example::

    configure("json")
    event("decision", decision_id="d-1", verb="resize", state="EXECUTED")
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import logging.handlers
import queue
import sys
from typing import Any

import orjson

__all__ = ["LOG", "configure", "current_format", "event", "flush"]

LOG = logging.getLogger("govgate")
_MAX_VALUE = 256


def _printable(text: str) -> str:
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def _safe(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    return _printable(str(value)[:_MAX_VALUE])


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
            "level": record.levelname.lower(),
            "event": _printable(record.getMessage()),
            **({"replica": _tag} if _tag else {}),
            **getattr(record, "fields", {}),
        }
        if record.name != LOG.name:  # a library's message
            line["logger"] = record.name
        return orjson.dumps(line).decode()


def _logfmt(value: Any) -> str:
    """A field's value as logfmt writes it: quoted (JSON string escapes) when it holds a
    space, '=' or '"', so that a value an engine chose cannot forge fields of its own."""
    text = str(value)
    if text == "" or any(c in text for c in ' ="'):
        return orjson.dumps(text).decode()
    return text


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", {})
        tail = " ".join(f"{k}={_logfmt(v)}" for k, v in fields.items())
        who = "" if record.name == LOG.name else f"{record.name}: "
        tag = f"[{_tag}] " if _tag else ""
        return f"{tag}{who}{_printable(record.getMessage())} {tail}".rstrip()


class _Handoff(logging.handlers.QueueHandler):
    """Queues records for the writer thread unformatted (the standard ``prepare`` formats
    them here, in the caller's thread, which is the work this handler exists to move)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        if record.args:  # fix the message now: the arguments may change after the call
            record.msg, record.args = record.getMessage(), None
        return record


# One queue and one writer thread for the process's life; configure() changes only how the
# writer formats. A record queued just as the format changes is still written.
_records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
_writer: logging.handlers.QueueListener | None = None
_format = "text"
_tag = ""  # the replica named on every line (configure)


def _stop_writer() -> None:
    """Write what is queued, then stop the writer thread (at exit)."""
    global _writer
    if _writer is not None:
        _writer.stop()
        _writer = None


atexit.register(_stop_writer)


def flush() -> None:
    """Write every queued line now and stop the writer thread, as at a normal exit (for a
    process about to leave by ``os._exit``, which skips exit handlers)."""
    _stop_writer()


def configure(
    fmt: str = "text", level: str = "INFO", *, threaded: bool = True, tag: str = ""
) -> None:
    """Send govgate's events, and the warnings of the libraries it uses (OpenTelemetry's
    exporters, gRPC), to standard error in ``fmt`` ("text" or "json"): one format for
    every line, written by one thread. ``threaded=False`` writes each line in the caller's
    thread as it is logged, for a process whose parent may kill it (nothing is queued to
    lose) and that has no event loop to spare. ``tag``: a replica's name, on every line
    (``[tag]`` first in text, ``"replica"`` in JSON), where several write to one stream."""
    global _writer, _format, _tag
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, not {fmt!r}")
    _tag = tag
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(_Json() if fmt == "json" else _Text())
    handler: logging.Handler = stream
    if threaded:
        if _writer is None:
            _writer = logging.handlers.QueueListener(_records, stream)
            _writer.start()
        else:
            _writer.handlers = (stream,)
        handler = _Handoff(_records)
    _format = fmt
    LOG.handlers[:] = [handler]
    LOG.setLevel(level)
    LOG.propagate = False
    logging.root.handlers[:] = [handler]
    logging.root.setLevel(logging.WARNING)


def current_format() -> str:
    """The format :func:`configure` last set ("json" or "text"), for a child process's logs."""
    return _format


def event(name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``name`` with ``fields`` (made safe); cheap when the level is off."""
    if LOG.isEnabledFor(level):
        safe = {k: _safe(v) for k, v in fields.items()}
        LOG.log(level, _printable(name), extra={"fields": safe})
