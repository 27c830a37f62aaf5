"""Fixtures shared by every test directory: a real PostgreSQL server (see postgres_server)."""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_server import PostgresServer

# To import this file pytest (rootdir/prepend import mode) put tests/ first on sys.path. Left
# there, tests/ledger, tests/gateway, ... (no __init__.py) shadow the editable-installed
# packages of the same names as empty namespace packages, since the editable finder comes after
# the path finder. So take it off again; `import postgres_server` still works from sys.modules.
if sys.path and sys.path[0] == str(Path(__file__).parent):
    del sys.path[0]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One started server for the whole session; stopped and its directory removed at the end."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session server (dropped afterwards); its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = postgres_server.create_database(name)
    yield url
    # Failing to drop (e.g. a test stopped the server) is fine: the session cleanup removes all.
    with contextlib.suppress(RuntimeError, OSError):
        postgres_server.drop_database(name)
