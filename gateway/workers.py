"""``govgate serve --workers N``: N gateway processes on one listening address.

One gateway process is bound by its interpreter lock to about one core
(docs/serve.md, "Performance"). Workers spread the Python work over the host's
cores: each is a replica (docs/deploy.md) named ``<replica>-<i>`` (``worker-<i>``
without ``--replica``), with its own event loop and interpreter, sharing the
ledger (the SQLite file, or the PostgreSQL database) and the listening address
(``SO_REUSEPORT``: the kernel hands each new connection to one of them). Any
worker answers any call, as replicas do.

This process, the supervisor, opens no ledger and serves no call. It:

1. starts worker 1 and waits until it listens (it picks the port when the
   address has port 0), then the others on the same address, all at once;
2. writes ``--port-file`` once every worker listens;
3. on SIGTERM or SIGINT, passes the signal on to every worker (each drains as
   ``govgate serve`` does; a second signal forces them) and exits 0 when all of
   them did;
4. starts again, under the same name, a worker that exits while the others
   serve (it finishes what the crash cut short, as after any restart), after
   ``RESTART_DELAY_S``, twice as long after each start in a row that ended
   before it listened (``_MAX_FAILED_STARTS`` of those stop them all). A worker
   that exits before it first listened stops them all at once: that is a
   configuration error, not a crash.

Workers are ``govgate serve`` processes started with the supervisor's own
arguments and ``--workers 1 --replica NAME --reuse-port --supervised --listen
ADDRESS --port-file FILE`` added (a repeated option's last value counts).
``--supervised`` makes a worker drain and stop when its standard input, a pipe
from the supervisor, closes: no worker outlives a supervisor that was killed.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

__all__ = ["RESTART_DELAY_S", "Supervisor", "worker_names"]

RESTART_DELAY_S = 1.0  # at least this long between two starts of one worker ...
_MAX_RESTART_DELAY_S = 30.0  # ... doubling with each start that never listened, up to this
_MAX_FAILED_STARTS = 5  # starts in a row that never listened before the supervisor gives up
_STOPPED_BY_US = (-signal.SIGTERM, -signal.SIGINT)  # a worker stopped before its handlers
_START_TIMEOUT_S = 300.0  # a worker rebuilds its state from the ledger before it listens
_POLL_S = 0.05

Say = Callable[[str], None]


def worker_names(replica: str, workers: int) -> list[str]:
    """The workers' replica names: stable across restarts, as recovery needs."""
    return [f"{replica or 'worker'}-{i}" for i in range(1, workers + 1)]


@dataclass
class _Worker:
    name: str
    port_file: Path
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    listened: bool = False  # since its last start
    sent: int = 0  # stop signals passed on to this process
    failed: int = 0  # starts in a row that ended before it listened


class Supervisor:
    """Runs the workers until a signal stops them; :meth:`run` returns the exit status."""

    def __init__(
        self,
        argv: Sequence[str],  # the supervisor's own arguments, from "serve" on
        names: Sequence[str],
        host: str,
        port: int,
        *,
        say: Say,
        ready: Callable[[int], None] | None = None,
    ) -> None:
        self._argv = list(argv)
        self._host, self._port = host, port
        self._say = say
        self._ready = ready
        self._dir = Path(tempfile.mkdtemp(prefix="govgate-workers-"))
        self._workers = [_Worker(n, self._dir / f"{n}.port") for n in names]
        self._signals = 0
        self._signum: int = signal.SIGTERM

    def _command(self, w: _Worker) -> list[str]:
        return [
            sys.executable, "-m", "gateway.cli", *self._argv,
            "--workers", "1", "--replica", w.name, "--reuse-port", "--supervised",
            "--listen", f"{self._host}:{self._port}", "--port-file", str(w.port_file),
        ]  # fmt: skip

    def _start(self, w: _Worker) -> None:
        _close_stdin(w.proc)  # the last run's pipe: that process has exited
        w.port_file.unlink(missing_ok=True)
        w.listened, w.started, w.sent = False, time.monotonic(), 0
        # stdout and stderr are ours: the workers' lines name them (their replica). Each
        # worker is in a process group of its own, so that Ctrl-C reaches it once, from
        # here (twice would force it), and it stops when its standard input closes: when
        # this process is gone, even killed (--supervised).
        w.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            self._command(w), stdin=subprocess.PIPE, process_group=0
        )
        while w.sent < self._signals:  # a signal that came while it was being started
            self._send(w, self._signum)

    def _listening(self, w: _Worker) -> bool:
        if not w.listened:
            with contextlib.suppress(OSError, ValueError):
                port = int(w.port_file.read_text())
                w.listened, w.failed = True, 0
                self._port = self._port or port
        return w.listened

    def _send(self, w: _Worker, signum: int) -> None:
        w.sent += 1
        if w.proc is not None and w.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signum)

    def _signalled(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        self._signum = signum
        for w in self._workers:
            if w.proc is not None and w.sent < self._signals:
                self._send(w, signum)

    def run(self) -> int:
        previous = {s: signal.signal(s, self._signalled) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._run()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._stop_all()
            for w in self._workers:
                _close_stdin(w.proc)
                w.port_file.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self._dir.rmdir()

    def _run(self) -> int:
        first, *rest = self._workers
        self._start(first)
        if not self._await_listening([first]):
            return self._failed_start()
        for w in rest:
            self._start(w)
        if not self._await_listening(rest):
            return self._failed_start()
        self._say(f"{len(self._workers)} workers listening on {self._host}:{self._port} "
                  f"({', '.join(w.name for w in self._workers)})")  # fmt: skip
        if self._ready is not None:
            self._ready(self._port)
        while not self._signals:
            for w in self._workers:
                assert w.proc is not None
                if not w.listened and self._listening(w):
                    self._say(f"worker {w.name} listening again")
                code = w.proc.poll()
                if code is None or self._signals:
                    continue
                if not w.listened:
                    w.failed += 1
                    if w.failed >= _MAX_FAILED_STARTS:
                        self._say(f"worker {w.name} exited {w.failed} times in a row before "
                                  f"it listened (status {code}); stopping the others")  # fmt: skip
                        self._stop_all()
                        return 1
                delay = min(RESTART_DELAY_S * 2**w.failed, _MAX_RESTART_DELAY_S)
                wait = delay - (time.monotonic() - w.started)
                self._say(f"worker {w.name} exited with status {code}; starting it again"
                          + (f" in {wait:.1f}s" if wait > 0 else ""))  # fmt: skip
                self._sleep(wait)
                if not self._signals:
                    self._start(w)
            time.sleep(_POLL_S)
        codes = [self._wait(w) for w in self._workers]
        bad = [f"{w.name}: {c}" for w, c in zip(self._workers, codes, strict=True)
               if c and not (c in _STOPPED_BY_US and not w.listened)]  # fmt: skip
        if bad:
            self._say(f"workers that did not stop cleanly: {', '.join(bad)}")
            return 1
        self._say("all workers stopped")
        return 0

    def _await_listening(self, workers: list[_Worker]) -> bool:
        """Wait until each of ``workers`` listens; False when one exits first, the time
        runs out, or a signal comes."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not all(self._listening(w) for w in workers):
            if self._signals or time.monotonic() > deadline:
                return False
            if any(w.proc is not None and w.proc.poll() is not None for w in workers):
                return False
            time.sleep(_POLL_S)
        return True

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake for a signal (within ``_POLL_S``)."""
        end = time.monotonic() + seconds
        while not self._signals and time.monotonic() < end:
            time.sleep(min(_POLL_S, max(0.0, end - time.monotonic())))

    def _failed_start(self) -> int:
        if self._signals:  # the signal was passed on: wait for them (a second would force)
            codes = [self._wait(w) for w in self._workers if w.proc is not None]
            # One stopped by that signal before it could take it over had started nothing.
            return 0 if all(c == 0 or c in _STOPPED_BY_US for c in codes) else 1
        late = [w.name for w in self._workers if w.proc is not None and not w.listened]
        self._say(f"workers did not start ({', '.join(late)}); stopping the others")
        return 1

    def _wait(self, w: _Worker) -> int:
        if w.proc is None:
            return 0
        return w.proc.wait()

    def _stop_all(self) -> None:
        """SIGTERM to the workers still running, then wait; SIGKILL after a minute."""
        running = [w.proc for w in self._workers if w.proc is not None and w.proc.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in running:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _close_stdin(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
