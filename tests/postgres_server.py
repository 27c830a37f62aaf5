"""A real, throwaway PostgreSQL server for tests and benchmarks.

``PostgresServer`` runs ``initdb`` and then ``postgres -D ...`` directly (no ``pg_ctl``), so
the postmaster's PID is known and a test can stop it (SIGINT, PostgreSQL's fast shutdown),
kill it (SIGKILL, a crash) and start it again on the same data directory and port.

The binaries come from Debian's ``postgresql`` package (``/usr/lib/postgresql/<ver>/bin``, not
on PATH there), else from PATH. PostgreSQL refuses to run as root, so under root ``initdb`` and
``postgres`` run as the ``postgres`` system user that package creates. That user must be able
to reach the data directory, and pytest's ``tmp_path`` (under ``/tmp/pytest-of-root``, mode
0700) is not reachable, so by default the server lives in a fresh ``/tmp/govgate-pg-*``
directory owned by whoever runs the server; ``cleanup()`` removes it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

__all__ = ["PostgresServer", "find_bin_dir"]

_DEB_ROOT = Path("/usr/lib/postgresql")
_MISSING = (
    "PostgreSQL server binaries (initdb, postgres) not found in /usr/lib/postgresql/*/bin "
    "or on PATH; install the Debian package `postgresql` (apt-get install postgresql)"
)
_IDENT_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def find_bin_dir() -> Path:
    """The highest-version ``/usr/lib/postgresql/*/bin`` holding ``initdb``, else PATH's."""

    def version(d: Path) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in d.parent.name.split("."))
        except ValueError:
            return (-1,)

    candidates = [d for d in _DEB_ROOT.glob("*/bin") if (d / "initdb").is_file()]
    if candidates:
        return max(candidates, key=version)
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError(_MISSING)
    return Path(initdb).resolve().parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _check_name(name: str) -> str:
    if not name or name[0].isdigit() or not set(name) <= _IDENT_CHARS:
        raise ValueError(f"database name must match [a-z_][a-z0-9_]*: {name!r}")
    return name


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is still in process group ``pgid`` (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After "(comm)": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


class PostgresServer:
    """One PostgreSQL cluster in ``base_dir`` (``pgdata/``, ``postgres.log``, the socket).

    ``base_dir`` defaults to a fresh ``tempfile.mkdtemp(prefix="govgate-pg-")``; a given one is
    created if missing, and must be reachable by the ``postgres`` user when running as root.
    Either way ``cleanup()`` deletes it. As a context manager it starts on entry and cleans up
    on exit. The superuser is ``postgres`` with ``trust`` auth on 127.0.0.1.
    """

    host = "127.0.0.1"

    def __init__(self, base_dir: Path | None = None) -> None:
        self.bin_dir = find_bin_dir()
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "running as root, and PostgreSQL refuses to run as root, but there is no "
                    "`postgres` system user; install the Debian package `postgresql`"
                ) from None
            self._run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        # Last, so that nothing above can fail after a temporary directory was made.
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="govgate-pg-")).absolute()
        self.data_dir = self.base_dir / "pgdata"
        self.log_path = self.base_dir / "postgres.log"

    # -- properties ---------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The postmaster's PID (the server must be running)."""
        if self._proc is None:
            raise RuntimeError("the PostgreSQL server is not running")
        return self._proc.pid

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1, fixed at the first ``start()`` and kept across restarts."""
        if self._port is None:
            raise RuntimeError("the PostgreSQL server has not been started")
        return self._port

    @property
    def running(self) -> bool:
        """Whether the postmaster this object launched is still alive."""
        return self._proc is not None and self._proc.poll() is None

    def url(self, database: str = "postgres") -> str:
        """``postgresql://postgres@127.0.0.1:PORT/DATABASE``."""
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> None:
        """Create the cluster on first use, launch the postmaster, wait until it accepts."""
        if self.running:
            raise RuntimeError("the PostgreSQL server is already running; stop() it first")
        self._reap()  # a postmaster that died on its own
        if not self.data_dir.exists():
            self._initdb()
        if self._port is None:
            self._port = _free_port()
        self._launch(timeout)

    def restart(self, timeout: float = 30) -> None:
        """Start again on the same data directory and port, after ``stop()``/``kill()``.

        A running server is stopped first. A ``postmaster.pid`` left by ``kill()`` is stale
        (its PID is gone) and PostgreSQL replaces it itself; startup then runs crash recovery.
        """
        self.stop()
        self.start(timeout)

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown (SIGINT), SIGKILL after ``timeout`` s. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._reap()

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and its backends at once, and wait.

        The whole process group dies, as in a power cut; killing only the postmaster would
        leave backends running for a while, and those block a restart ("pre-existing shared
        memory block is still in use"). No-op when not running.
        """
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._reap()

    def cleanup(self) -> None:
        """Stop the server and delete ``base_dir`` with everything in it."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # -- SQL ----------------------------------------------------------------------------------

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` through ``psql`` (ON_ERROR_STOP, unaligned, tuples only); its stdout."""
        psql = self.bin_dir / "psql"
        exe = str(psql) if psql.is_file() else (shutil.which("psql") or "psql")
        cmd = [exe, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        cmd += ["-h", self.host, "-p", str(self.port), "-U", "postgres", "-d", database]
        r = subprocess.run(
            [*cmd, "-c", sql], capture_output=True, text=True, env=self._env(), timeout=60
        )
        if r.returncode != 0:
            raise RuntimeError(f"psql failed ({r.returncode}) on {sql!r}: {r.stderr.strip()}")
        return r.stdout

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name``; returns its URL. ``name`` must match [a-z_][a-z0-9_]*."""
        self.psql(f'CREATE DATABASE "{_check_name(name)}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE IF EXISTS name WITH (FORCE)``: open connections are terminated."""
        self.psql(f'DROP DATABASE IF EXISTS "{_check_name(name)}" WITH (FORCE)')

    # -- internals ----------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        # PG* variables (PGOPTIONS, PGSERVICE, ...) could redirect or alter our commands.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _prepare_dir(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if not self._run_as:
            return
        uid, gid = self._run_as["user"], self._run_as["group"]
        os.chown(self.base_dir, uid, gid)
        self.base_dir.chmod(0o755)
        for d in self.base_dir.parents:
            st = d.stat()
            if st.st_mode & stat.S_IXOTH or (st.st_uid == uid and st.st_mode & stat.S_IXUSR):
                continue
            if st.st_gid == gid and st.st_mode & stat.S_IXGRP:
                continue
            raise RuntimeError(
                f"{d} is not traversable by the postgres user, so it cannot reach "
                f"{self.base_dir}; leave base_dir out to get a /tmp/govgate-pg-* directory"
            )

    def _initdb(self) -> None:
        self._prepare_dir()
        cmd = [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-A", "trust"]
        cmd += ["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"]
        r = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            cwd=self.base_dir,
            env=self._env(),
            timeout=120,
            **self._run_as,
        )
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")

    def _launch(self, timeout: float) -> None:
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.base_dir),
            "fsync": "on",
            "synchronous_commit": "on",
            "max_connections": "200",
            "shared_buffers": "128MB",
            "logging_collector": "off",
        }
        cmd = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            cwd=self.base_dir,
            env=self._env(),
            start_new_session=True,  # own process group: kill() reaches every backend
            **self._run_as,
        )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, timeout: float) -> None:
        isready = [str(self.bin_dir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)]
        isready += ["-U", "postgres", "-d", "postgres", "-t", "2"]
        deadline = time.monotonic() + timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {self._proc.returncode} during startup; "
                    f"log tail:\n{self._log_tail()}"
                )
            if subprocess.run(isready, env=self._env(), timeout=10).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"postgres not accepting connections on port {self.port} after "
                    f"{timeout} s; log tail:\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
