"""``govgate serve``'s configuration file: the annotated example, flags, and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.libvirt import LibvirtConfig
from gateway.config import SAMPLE_DOMAINS, ConfigError, ServeConfig
from gateway.samples import NODE, write_node
from ledger import LedgerConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "govgate.toml"


def test_the_annotated_example_states_the_defaults(tmp_path: Path):
    loaded = ServeConfig.load(EXAMPLE, data=tmp_path)
    defaults = ServeConfig(data=tmp_path)
    assert loaded.policy == Path("policy.toml")
    assert loaded.roles == Path("roles.toml")
    same = ("listen", "shadow", "grace", "ca", "cert", "key", "model", "expiry_interval",
            "ledger", "libvirt", "kata", "workers", "max_inflight", "stream_window")  # fmt: skip
    for name in same:
        assert getattr(loaded, name) == getattr(defaults, name), name
    assert defaults.libvirt == LibvirtConfig(SAMPLE_DOMAINS)
    assert defaults.ledger == LedgerConfig()


def test_relative_paths_are_read_from_the_data_directory(tmp_path: Path):
    config = ServeConfig(data=tmp_path)
    assert config.path(config.ca) == tmp_path / "certs" / "ca.pem"
    assert config.path(Path("/etc/govgate/ca.pem")) == Path("/etc/govgate/ca.pem")


def test_flags_override_and_are_checked(tmp_path: Path):
    config = ServeConfig(data=tmp_path).with_flags(listen="0.0.0.0:9000", shadow=True, roles=None)
    assert (config.listen, config.shadow, config.roles) == ("0.0.0.0:9000", True, None)
    with pytest.raises(ConfigError, match="'9000' is not HOST:PORT"):
        config.with_flags(listen="9000")
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        config.with_flags(listen="host:70000")
    with pytest.raises(ConfigError, match="grace must be 0 to 86400"):  # a flag's value too
        config.with_flags(grace=100_000.0)


def test_a_replica_names_its_shared_ledger(tmp_path: Path):
    path = tmp_path / "govgate.toml"
    path.write_text('[server]\nreplica = "gw-1"\n[ledger]\nurl = "postgresql://g@db/g"\n'
                    "checkpoint_every = 10\n")  # fmt: skip
    config = ServeConfig.load(path, data=tmp_path)
    assert (config.replica, config.ledger_url) == ("gw-1", "postgresql://g@db/g")
    assert config.ledger.checkpoint_every == 10
    assert config.with_flags(replica="gw-2").replica == "gw-2"


def test_a_kata_only_site_has_no_libvirt(tmp_path: Path):
    path = tmp_path / "govgate.toml"
    path.write_text('[runtimes.kata]\naddress = "/run/k.sock"\nruntime = "io.containerd.runc.v2"\n')
    config = ServeConfig.load(path, data=tmp_path)
    assert config.libvirt is None
    assert config.kata is not None
    assert (config.kata.address, config.kata.namespace) == ("/run/k.sock", "govgate")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nshadow = 'yes'\n", "server.shadow: must be a bool"),
        ("[server]\ngrace = true\n", "server.grace: must be a float"),
        ("[tls]\nca = 1\n", "tls.ca: must be a str"),
        ("[serverr]\n", "serverr: unknown setting"),
        ("server = 1\n", "[server] must be a table"),
        ("[ledger]\ncheckpoint_every = -1\n", "checkpoint triggers must be >= 0"),
        ("[runtimes.kata]\naddress = ''\n", "address, namespace and runtime are required"),
        ("[runtimes]\nlibvirt = 1\n", "runtimes.libvirt: must be a table"),
        ("[runtimes.libvirt]\ndomain_type = 7\n", "domain_type must be a string"),
        ("[runtimes.libvirt]\ncache_ttl = '1'\n", "cache_ttl must be a number"),
        ("[runtimes.libvirt]\nimage_dirs = 'x'\n", "image_dirs must be a list"),
        ("[runtimes.libvirt]\nimage_dirs = ['images']\n", "image_dirs must be absolute"),
        ("[gateway]\nexpiry_interval = 0.0\n", "expiry_interval must be more than 0"),
        ("[server]\nhealth_interval = -1.0\n", "health_interval must be more than 0"),
        ("[server]\ngrace = -5.0\n", "grace must be 0 to 86400"),
        ("[server]\ngrace = nan\n", "grace must be 0 to 86400"),
        ("[server]\nmax_inflight = 0\n", "max_inflight must be at least 1"),
        ("[server]\nstream_window = 0\n", "stream_window must be 1 to 1024"),
        ("[server]\nstream_window = 1025\n", "stream_window must be 1 to 1024"),
        ("[server]\nreplica = 'a'\n[ledger]\nurl = 'mysql://db/g'\n", "a postgresql:// URL"),
        ("[ledger]\nurl = 'postgresql://db/g'\n", "needs a stable replica name"),
        ("[server]\nreplica = 'a b'\n", "replica: 'a b' must match"),
        ("[server]\nworkers = 0\n", "workers must be 1 to 64"),
        ("[server]\nworkers = 65\n", "workers must be 1 to 64"),
        ("[server]\nworkers = 10\nreplica = '" + "g" * 61 + "'\n", "too long to name 10 workers"),
        (
            "[server]\nworkers = 2\nmetrics_listen = '127.0.0.1:9464'\n",
            "a scrape endpoint belongs to one process",
        ),
    ],
)
def test_errors_name_the_setting(tmp_path: Path, text: str, message: str):
    path = tmp_path / "govgate.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        ServeConfig.load(path, data=tmp_path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_unreadable_or_huge_files_are_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read"):
        ServeConfig.load(tmp_path / "missing.toml", data=tmp_path)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        ServeConfig.load(big, data=tmp_path)


def test_the_sample_node_file_is_written_whole_and_once(tmp_path: Path):
    path = write_node(tmp_path / "node.xml")
    assert path.read_text() == NODE
    first = path.stat().st_mtime_ns
    path.chmod(0o400)  # left alone when it holds the samples already: not even opened to write
    write_node(path)
    assert path.stat().st_mtime_ns == first
    path.chmod(0o600)
    path.write_text("<node/>")
    write_node(path)  # replaced whole, by a rename
    assert path.read_text() == NODE
    assert [p.name for p in tmp_path.iterdir()] == ["node.xml"]
