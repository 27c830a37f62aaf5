"""``govgate certs init`` as an operator runs it."""

from __future__ import annotations

import stat
from pathlib import Path

from cli_harness import Govgate


def test_certs_init_creates_keys_0600_and_refuses_to_overwrite(gg: Govgate, tmp_path: Path):
    r = gg("certs", "init", "--data", tmp_path, "--identity", "engine-1", "--identity", "alice")
    assert r.code == 0, r
    certs = tmp_path / "certs"
    assert sorted(p.name for p in certs.iterdir()) == sorted(
        f"{n}.{ext}" for n in ("ca", "server", "engine-1", "alice") for ext in ("pem", "key")
    )
    for key in certs.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert key.read_text().strip().splitlines()[1] not in r.out + r.err
    assert "identity spiffe://govgate.local/alice" in r.msg
    again = gg("certs", "init", "--data", tmp_path, "--identity", "alice")
    assert again.code == 2
    assert "already exists" in again.msg
    added = gg("certs", "init", "--data", tmp_path, "--identity", "bob")  # same CA, new identity
    assert added.code == 0, added
    assert (certs / "bob.pem").exists()
    assert stat.S_IMODE((certs / "bob.key").stat().st_mode) == 0o600
    assert "identity spiffe://govgate.local/bob" in added.msg
