"""``govgate serve``'s configuration: a TOML file, then flags, then embedded defaults.

Every setting has a default, so a data directory with a key and certificates
is enough to serve. The annotated example is ``examples/govgate.toml``;
``docs/serve.md`` is the reference. Relative paths in the file are read from
the data directory. Errors name the key and what is wrong
(:class:`ConfigError`).

Example::

    config = ServeConfig.load(Path("govgate.toml"), data=Path("/var/lib/govgate"))
    config = config.with_flags(listen="127.0.0.1:0", shadow=True)
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from adapters.kata import KataConfig
from adapters.libvirt import LibvirtConfig
from gateway.workers import worker_names
from ledger import LedgerConfig

__all__ = ["SAMPLE_DOMAINS", "ConfigError", "ServeConfig"]

MAX_CONFIG_BYTES = 1 << 20
MAX_WORKERS = 64
STREAM_WINDOW = 32  # messages of one ProposeStream decided at once (gateway.server)
MAX_STREAM_WINDOW = 1024
SAMPLE_DOMAINS = "samples"  # libvirt uri: the test driver with govgate's sample domains


class ConfigError(ValueError):
    """A configuration is malformed; the message names the key and what is wrong."""


@dataclass(frozen=True)
class ServeConfig:
    data: Path
    listen: str = "127.0.0.1:7443"
    shadow: bool = False  # decide and record, never execute
    ca: Path = Path("certs/ca.pem")  # clients must present a certificate issued by this CA
    cert: Path = Path("certs/server.pem")
    key: Path = Path("certs/server.key")
    policy: Path | None = None  # None: the bundled example policy
    roles: Path | None = None  # None: every authenticated identity may do everything
    model: str = ""  # a model id or prefix from DATA/models; "": the active one
    libvirt: LibvirtConfig | None = field(default_factory=lambda: LibvirtConfig(SAMPLE_DOMAINS))
    kata: KataConfig | None = None
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    ledger_url: str = ""  # postgresql://...: a ledger shared by replicas; "": DATA/ledger.db
    replica: str = ""  # this replica's stable name (required with ledger_url; shares ledger.db)
    expiry_interval: float = 1.0  # seconds between sweeps for overdue approvals
    grace: float = 10.0  # seconds in-flight calls get on shutdown
    reflection: bool = True  # gRPC server reflection (grpcurl, Postman, ...)
    max_inflight: int = 512  # proposals in flight before RESOURCE_EXHAUSTED
    stream_window: int = STREAM_WINDOW
    health_interval: float = 1.0  # seconds between checks that the ledger can write
    metrics_listen: str = ""  # HOST:PORT of a Prometheus scrape endpoint; "": none
    workers: int = 1  # gateway processes sharing the address (gateway.workers)
    reuse_port: bool = False  # share the address with other processes (workers do)

    def __post_init__(self) -> None:
        # A zero or negative interval would spin its loop; nan compares false with anything.
        for name in ("expiry_interval", "health_interval"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                raise ValueError(f"{name} must be more than 0 and at most 3600 seconds")
        if not 0 <= self.grace <= 86_400:
            raise ValueError("grace must be 0 to 86400 seconds")
        if self.max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        if not 1 <= self.stream_window <= MAX_STREAM_WINDOW:
            raise ValueError(f"stream_window must be 1 to {MAX_STREAM_WINDOW}")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers must be 1 to {MAX_WORKERS}")

    def path(self, p: Path) -> Path:
        """``p`` read from the data directory when relative."""
        return p if p.is_absolute() else self.data / p

    def with_flags(self, **flags: Any) -> ServeConfig:
        """This configuration with the flags that were given (``None``: not given)."""
        given = {k: v for k, v in flags.items() if v is not None}
        for key in ("listen", "metrics_listen"):
            address = given.get(key, getattr(self, key))
            if key == "metrics_listen" and not address:
                continue
            try:
                host, port = address.rsplit(":", 1)
                if not host or not 0 <= int(port) <= 65535:
                    raise ValueError
            except ValueError:
                raise ConfigError(f"{key}: {address!r} is not HOST:PORT") from None
        try:
            out = replace(self, **given)
        except (TypeError, ValueError) as err:  # the settings' own checks (__post_init__)
            raise ConfigError(str(err)) from None
        if out.ledger_url and not out.ledger_url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("ledger.url: must be a postgresql:// URL")
        if out.ledger_url and not out.replica:
            raise ConfigError(
                "replica: a gateway on a shared PostgreSQL ledger needs a stable replica name "
                "(--replica or [server] replica), the same after every restart"
            )
        if out.replica and not _REPLICA_RE.fullmatch(out.replica):
            raise ConfigError(f"replica: {out.replica!r} must match {_REPLICA_RE.pattern}")
        if out.workers > 1 and not all(map(_REPLICA_RE.fullmatch,
                                           worker_names(out.replica, out.workers))):  # fmt: skip
            raise ConfigError(
                f"replica: {out.replica!r} is too long to name {out.workers} workers "
                f"({worker_names(out.replica, out.workers)[-1]!r} must match "
                f"{_REPLICA_RE.pattern})"
            )
        if out.workers > 1 and out.metrics_listen:
            raise ConfigError(
                "metrics_listen: a scrape endpoint belongs to one process, and --workers "
                "starts several; push metrics over OTLP instead (OTEL_METRICS_EXPORTER=otlp)"
            )
        return out

    @classmethod
    def load(cls, path: Path | None, *, data: Path) -> ServeConfig:
        """The file's settings over the defaults; ``path=None``: the defaults alone."""
        if path is None:
            return cls(data=data)
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        try:
            doc = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"{path}: not valid TOML: {err}") from None
        return _parse(doc, data, str(path))


_SECTIONS = ("server", "tls", "gateway", "ledger", "runtimes")


_REPLICA_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _table(doc: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return value


def _check(table: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown setting (known: {', '.join(known)})")


def _get(table: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = table[key]
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{where}.{key}: must be a {kind.__name__}, not {value!r}")
    return value


def _parse(doc: Mapping[str, Any], data: Path, source: str) -> ServeConfig:
    _check(doc, _SECTIONS, source)
    out: dict[str, Any] = {}
    server = _table(doc, "server", source)
    kinds = {"listen": str, "shadow": bool, "grace": float, "reflection": bool,
             "max_inflight": int, "stream_window": int, "health_interval": float,
             "metrics_listen": str, "replica": str, "workers": int}  # fmt: skip
    _check(server, tuple(kinds), f"{source}: server")
    for key, kind in kinds.items():
        if key in server:
            out[key] = _get(server, key, kind, f"{source}: server")
    tls = _table(doc, "tls", source)
    _check(tls, ("ca", "cert", "key"), f"{source}: tls")
    for key in ("ca", "cert", "key"):
        if key in tls:
            out[key] = Path(_get(tls, key, str, f"{source}: tls"))
    gw = _table(doc, "gateway", source)
    _check(gw, ("policy", "roles", "model", "expiry_interval"), f"{source}: gateway")
    for key in ("policy", "roles"):
        if key in gw:
            out[key] = Path(_get(gw, key, str, f"{source}: gateway"))
    if "model" in gw:
        out["model"] = _get(gw, "model", str, f"{source}: gateway")
    if "expiry_interval" in gw:
        out["expiry_interval"] = _get(gw, "expiry_interval", float, f"{source}: gateway")
    ledger = dict(_table(doc, "ledger", source))
    if "url" in ledger:
        out["ledger_url"] = _get(ledger, "url", str, f"{source}: ledger")
        del ledger["url"]
    out["ledger"] = _ledger(ledger, f"{source}: ledger")
    runtimes = _table(doc, "runtimes", source)
    _check(runtimes, ("libvirt", "kata"), f"{source}: runtimes")
    if runtimes:  # naming runtimes replaces the default (libvirt with sample domains)
        out["libvirt"] = _runtime(runtimes, "libvirt", LibvirtConfig, f"{source}: runtimes")
        out["kata"] = _runtime(runtimes, "kata", KataConfig, f"{source}: runtimes")
    try:
        config = ServeConfig(data=data, **out)
        return config.with_flags()  # checks listen
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {err}") from None


def _ledger(table: Mapping[str, Any], where: str) -> LedgerConfig:
    kinds = {"checkpoint_every": int, "checkpoint_interval": float, "max_batch": int,
             "max_pending": int}  # fmt: skip
    _check(table, tuple(kinds), where)
    try:
        return LedgerConfig(**{k: _get(table, k, kinds[k], where) for k in table})
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def _runtime(tables: Mapping[str, Any], name: str, cls: type, where: str) -> Any:
    if name not in tables:
        return None
    table = tables[name]
    if not isinstance(table, dict):
        raise ConfigError(f"{where}.{name}: must be a table")
    _check(table, tuple(f.name for f in dataclasses.fields(cls)), f"{where}.{name}")
    try:
        return cls(**table)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}.{name}: {err}") from None
