"""The real-PostgreSQL test helper: it answers, is durable as configured, survives a crash."""

from __future__ import annotations

import subprocess

from postgres_server import PostgresServer


def test_answers_select_1_through_psql(postgres_server: PostgresServer, postgres_url: str) -> None:
    psql = postgres_server.bin_dir / "psql"
    r = subprocess.run(
        [str(psql), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", postgres_url],
        input="SELECT 1;\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert r.stdout.strip() == "1"
    assert postgres_url.startswith(f"postgresql://postgres@127.0.0.1:{postgres_server.port}/t_")


def test_commits_are_durable(postgres_server: PostgresServer) -> None:
    assert postgres_server.psql("SHOW synchronous_commit").strip() == "on"
    assert postgres_server.psql("SHOW fsync").strip() == "on"
    assert postgres_server.psql("SHOW max_connections").strip() == "200"


def test_kill_then_restart_keeps_committed_data() -> None:
    with PostgresServer() as server:
        port, pid = server.port, server.pid
        server.create_database("crash")
        server.psql("CREATE TABLE t (v text); INSERT INTO t VALUES ('before')", "crash")
        server.kill()
        assert not server.running
        server.restart()
        assert server.port == port
        assert server.pid != pid
        assert server.psql("SELECT v FROM t", "crash").strip() == "before"
        server.stop()
        server.stop()  # idempotent
        assert not server.running
    assert not server.base_dir.exists()
