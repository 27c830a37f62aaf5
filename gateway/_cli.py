"""What every ``govgate`` sub-command shares: the error console, ``--data``, JSON output,
progress bars."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ledger.datadir import default_data_dir

__all__ = ["DataOpt", "UrlOpt", "err", "lazy_module", "print_json", "progress"]

err = Console(stderr=True)  # messages and progress; results go to standard output

UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--ledger-url",
        envvar="GOVGATE_LEDGER_URL",
        help="A postgresql:// ledger database instead of the data directory's SQLite file "
        "(keys still come from --data).",
        show_default=False,
    ),
]

DataOpt = Annotated[
    Path,
    typer.Option(
        "--data",
        envvar="GOVGATE_DATA_DIR",
        help="Data directory (default: $GOVGATE_DATA_DIR or ~/.local/share/govgate).",
        default_factory=default_data_dir,
        show_default=False,
    ),
]


def print_json(value: Any) -> None:
    """One JSON value on one line of standard output (NumPy numbers allowed)."""
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    sys.stdout.flush()


def progress(label: str, unit: str = "records") -> tuple[Progress, Callable[[int, int], None]]:
    """A progress bar on standard error (use as ``with bar:``) and its ``update(done, total)``."""
    bar = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    task = bar.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


class _Deferred:
    """Stands for a module until one of its attributes is first used, then imports it
    with the ordinary import statement's machinery. Nothing is put in ``sys.modules``
    before that, so code elsewhere that imports the module meets only the real one."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<deferred module {self._name!r}>"


def lazy_module(name: str) -> Any:
    """The module ``name``, imported when one of its attributes is first used. Commands
    that never talk to a gateway then start without loading gRPC and protobuf (about
    65 ms)."""
    return _Deferred(name)
