"""What every ``govgate`` sub-command shares: the error console, ``--data``, JSON output,
progress bars."""

from __future__ import annotations

import importlib.util
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


def lazy_module(name: str) -> ModuleType:
    """The module ``name``, loaded when one of its attributes is first used (the module
    itself if it is loaded already). Commands that never talk to a gateway then start
    without loading gRPC and protobuf (about 65 ms)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ImportError(f"no module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
