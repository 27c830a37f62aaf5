"""Worker processes started with nothing but their task's module imported.

Fast verification scans byte ranges of an export in them (:func:`ledger._scan.scan_byte_range`,
the default task); the compliance report reads parts of an export in them
(:func:`compliance.report.read_part`).

``multiprocessing``'s ``spawn`` start method runs the parent's ``__main__``
again in every worker; under the ``govgate`` command that imports the whole
CLI (about 1.5 s a process, more than scanning a million records takes on
two cores). These workers are plain ``python -c`` processes on the parent's
``sys.path`` that import the task's module only, take argument tuples for the
task on stdin and answer, in order, on stdout.
The peer of each pipe is this package's own process, so pickle is safe.

Task ``k`` goes to worker ``k % n`` and each worker answers in the order it
was asked, so results come back in submission order without any bookkeeping.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import select
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = ["ScanPool", "serve"]

_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from ledger._workers import serve; serve(sys.argv[2])"
)
SCAN = "ledger._scan:scan_byte_range"


def _path() -> list[str]:
    """The worker's ``sys.path``: this process's, after the directory holding this package
    (a test run may have put a directory with a ``ledger`` folder of its own first)."""
    root = str(Path(__file__).resolve().parents[1])
    return [root, *(p for p in sys.path if p != root)]


class ScanPool:
    """``n`` worker processes running ``task`` (``module:function``); :meth:`submit` and
    :meth:`result` pair up first in, first out."""

    def __init__(self, n: int, task: str = SCAN) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._sent = self._received = 0
        try:
            for _ in range(n):
                self._procs.append(
                    subprocess.Popen(  # noqa: S603 (this interpreter, fixed code)
                        [sys.executable, "-c", _BOOT, json.dumps(_path()), task],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                    )
                )
        except BaseException:
            self.close(kill=True)
            raise

    def submit(self, args: tuple[Any, ...]) -> None:
        pipe = self._procs[self._sent % len(self._procs)].stdin
        assert pipe is not None
        pickle.dump(args, pipe, protocol=pickle.HIGHEST_PROTOCOL)
        pipe.flush()
        self._sent += 1

    def map(self, tasks: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        """The answers to ``tasks``, in order, with at most ``2 n + 1`` asked and not yet
        read (a few ahead keep every worker busy; memory stays flat)."""
        pending = 0
        for args in tasks:
            self.submit(args)
            pending += 1
            if pending > 2 * len(self._procs):
                yield self.result()
                pending -= 1
        while pending:
            yield self.result()
            pending -= 1

    def result(self) -> Any:
        """The answer to the oldest submission not yet answered; its exception if it raised."""
        pipe = self._procs[self._received % len(self._procs)].stdout
        assert pipe is not None
        self._received += 1
        try:
            ok, value = pickle.load(pipe)  # noqa: S301 (our own worker's answer)
        except EOFError:
            raise RuntimeError("a worker process ended unexpectedly") from None
        if not ok:
            raise value
        return value

    def answered(self) -> bool:
        """Whether the answer :meth:`result` would read next is waiting in its pipe, at
        least in part (from any thread: it reads nothing)."""
        if self._received >= self._sent:
            return False
        pipe = self._procs[self._received % len(self._procs)].stdout
        try:
            return pipe is not None and bool(select.select([pipe], [], [], 0)[0])
        except (OSError, ValueError):  # closed meanwhile
            return False

    def kill(self) -> None:
        """Stop the workers now (from any thread): calls blocked on their pipes fail."""
        for proc in self._procs:
            proc.kill()

    def close(self, *, kill: bool = False) -> None:
        """Let the workers finish and exit (``kill``: stop them now)."""
        for proc in self._procs:
            if kill:
                proc.kill()
            elif proc.stdin is not None:
                proc.stdin.close()
        for proc in self._procs:
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()

    def __enter__(self) -> ScanPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(kill=exc is not None or self._received != self._sent)


def serve(task: str = SCAN) -> None:
    """Worker loop: run ``task`` on each argument tuple read from stdin, answer on stdout."""
    # Ctrl-C reaches the whole process group: the parent decides when this worker stops
    # (it closes stdin), so the worker does not die with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    module, _, name = task.partition(":")
    run = getattr(importlib.import_module(module), name)
    out: IO[bytes] = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print must not corrupt the answers
    source = sys.stdin.buffer
    while True:
        try:
            args = pickle.load(source)  # noqa: S301 (sent by the process that started us)
        except EOFError:
            return
        try:
            reply: tuple[bool, Any] = (True, run(*args))
        except Exception as e:
            reply = (False, e)
        try:
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # an exception that does not pickle
            data = pickle.dumps((False, RuntimeError(f"{task} failed: {e!r}")))
        out.write(data)
        out.flush()
