"""Sample libvirt domains for the demo and ``govgate serve``'s embedded default.

Five domains on libvirt's test driver, labelled as a small estate: two staging
web servers, a production API server and database (the database shut off),
and a development box. The labels are govgate's (``environment``,
``criticality``, ``dependents``) in the domain metadata, where the libvirt
adapter reads them (docs/adapters.md).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["NODE", "domain_xml", "write_node"]


def domain_xml(name: str, env: str, crit: str, vcpus: int, max_vcpus: int, mib: int,
               dependents: int, running: bool = True) -> str:  # fmt: skip
    """One test-driver domain with govgate's labels (environment, criticality, dependents)."""
    state = "" if running else "<test:runstate>5</test:runstate>"
    return (
        "<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
        f"<name>{name}</name><memory unit='MiB'>{mib * 2}</memory>"
        f"<currentMemory unit='MiB'>{mib}</currentMemory>"
        f"<vcpu current='{vcpus}'>{max_vcpus}</vcpu><os><type arch='x86_64'>hvm</type></os>"
        "<metadata><govgate:labels xmlns:govgate='https://govgate.dev/xmlns/labels/1'>"
        f"<label key='environment'>{env}</label><label key='criticality'>{crit}</label>"
        f"<label key='dependents'>{dependents}</label></govgate:labels></metadata>"
        f"<devices/>{state}</domain>"
    )


NODE = (
    "<node>"
    + domain_xml("web-1", "staging", "low", 2, 8, 4096, 1)
    + domain_xml("web-2", "staging", "medium", 2, 8, 4096, 2)
    + domain_xml("api-1", "prod", "high", 4, 16, 8192, 6)
    + domain_xml("db-1", "prod", "critical", 8, 16, 32768, 12, running=False)
    + domain_xml("dev-1", "dev", "low", 1, 4, 2048, 0)
    + "</node>"
)


def write_node(path: Path) -> Path:
    """Write the sample domains for libvirt's test driver; returns ``path``.

    Left as it is when it already holds them, and otherwise replaced whole (written beside
    it, then renamed): workers starting together (``govgate serve --workers``) each write
    it, and one must never read it half written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        if path.read_text() == NODE:
            return path
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(NODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
