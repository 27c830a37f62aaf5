"""How the end-to-end tests run the ``govgate`` command line, as an operator or auditor does.

Two ways of running a command, with the same result type:

* ``gg(...)`` runs it in this process through ``gateway.cli.main``, the console
  entry point itself (so domain errors become exit 1 exactly as installed),
  with standard streams captured by typer's ``CliRunner`` isolation. Fast:
  used for the many small cases.
* ``gg.sub(...)`` runs the installed ``govgate`` script in a subprocess. Used
  for the key-file mode checks, ``verify``'s exit codes, rotation and the demo.

Every output of every command is kept, and when a test ends the fixture fails
it if any private key or HMAC salt found under its ``tmp_path`` appears in
any of them. Records that a test needs but does not exercise are appended
with the library directly (quicker than one process per record).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from typer.testing import CliRunner

from gateway import cli
from ledger import LedgerConfig

GOVGATE = Path(sys.executable).with_name("govgate")
ORIGIN = "example.com/log"
# Library appends for set-up: no checkpoints unless a test signs one.
QUIET = LedgerConfig(checkpoint_every=0, checkpoint_interval=0, checkpoint_on_close=False)
# Wide enough that rich does not wrap messages; tests still compare with whitespace folded.
ENV = {"COLUMNS": "200", "GOVGATE_DATA_DIR": None}


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    @property
    def msg(self) -> str:
        """Standard error with runs of white space (rich's line wrapping) folded."""
        return " ".join(self.err.split())

    def json(self) -> Any:
        return orjson.loads(self.out)

    def json_lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.out.splitlines()]

    def __str__(self) -> str:
        cmd = " ".join(self.args)
        return f"govgate {cmd} -> {self.code}\n--stdout--\n{self.out}--stderr--\n{self.err}"


class Govgate:
    """Runs ``govgate`` commands and keeps every output for the secrets check."""

    def __init__(self) -> None:
        self.runs: list[Run] = []

    def __call__(self, *args: str | Path, env: dict[str, str | None] | None = None) -> Run:
        """In process, through the console entry point ``gateway.cli.main``."""
        argv = [str(a) for a in args]
        saved = sys.argv
        with CliRunner().isolation(env={**ENV, **(env or {})}) as (out, err, _):
            sys.argv = ["govgate", *argv]
            try:
                cli.main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            finally:
                sys.argv = saved
                sys.stdout.flush()
                sys.stderr.flush()
            run = Run(tuple(argv), code, out.getvalue().decode(), err.getvalue().decode())
        self.runs.append(run)
        return run

    def sub(self, *args: str | Path, timeout: float = 60, cwd: Path | None = None) -> Run:
        """The installed ``govgate`` script in a subprocess (in ``cwd``, if given)."""
        argv = [str(a) for a in args]
        env = {k: v for k, v in os.environ.items() if k != "GOVGATE_DATA_DIR"}
        env["COLUMNS"] = "200"
        proc = subprocess.run(
            [str(GOVGATE), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
            cwd=cwd,
        )
        run = Run(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
        self.runs.append(run)
        return run


def secrets_under(root: Path) -> set[str]:
    """Every private key (and its seed) and HMAC salt under ``root``, in the
    spellings a leak could take."""
    found: set[str] = set()
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if path.name == "hmac.salt":
            salt = path.read_bytes()
            found |= {salt.hex(), base64.b64encode(salt).decode()}
        elif path.parent.name in ("keys", "retired") and ".key" in path.name:
            text = path.read_text().strip()
            material = text.removeprefix("PRIVATE+KEY+").split("+", 2)[2]  # base64 has '+'
            seed = base64.b64decode(material)[1:]
            found |= {text, material, seed.hex(), base64.b64encode(seed).decode().rstrip("=")}
    return found
