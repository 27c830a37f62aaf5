"""The bits of libvirt XML the adapter reads and writes: labels, disks, new domains, snapshots.

Labels (environment, criticality, dependents, ...) live in the domain's
``<metadata>`` under govgate's own namespace, so they travel with the domain
definition and other tools leave them alone::

    <metadata>
      <govgate:labels xmlns:govgate="https://govgate.dev/xmlns/labels/1">
        <label key="environment">production</label>
        <label key="criticality">high</label>
      </govgate:labels>
    </metadata>
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from xml.sax.saxutils import escape, quoteattr

__all__ = [
    "LABELS_NS",
    "count_disks",
    "domain_xml",
    "labels_xml",
    "parse_labels",
    "read_domain",
    "snapshot_xml",
]

LABELS_NS = "https://govgate.dev/xmlns/labels/1"
LABELS_PREFIX = "govgate"


def parse_labels(text: str) -> dict[str, str]:
    """Labels from the metadata element libvirt returns (``<labels><label key=..>``)."""
    root = ET.fromstring(text)  # noqa: S314 - libvirt's own XML
    return {
        str(el.get("key")): (el.text or "").strip()
        for el in root.iter()
        if el.tag.rsplit("}", 1)[-1] == "label" and el.get("key")
    }


def labels_xml(labels: Mapping[str, str]) -> str:
    items = "".join(
        f"<label key={quoteattr(k)}>{escape(v)}</label>" for k, v in sorted(labels.items())
    )
    return f"<labels>{items}</labels>"


def count_disks(domain_xml_text: str) -> int:
    return read_domain(domain_xml_text)[1]


def read_domain(domain_xml_text: str) -> tuple[dict[str, str], int]:
    """(labels, disks) from a domain's XML, in one parse: the govgate labels in its
    ``<metadata>``, and its disk devices (not CD-ROMs or floppies)."""
    labels, disks = _read_domain(domain_xml_text)
    return dict(labels), disks


@functools.lru_cache(maxsize=256)
def _read_domain(domain_xml_text: str) -> tuple[tuple[tuple[str, str], ...], int]:
    """:func:`read_domain`, remembered by the text: a domain's XML seldom changes between
    two reads, and parsing it costs about 40 µs, with the interpreter lock held."""
    root = ET.fromstring(domain_xml_text)  # noqa: S314 - libvirt's own XML
    labels: dict[str, str] = {}
    for block in root.iterfind(f"metadata/{{{LABELS_NS}}}labels"):
        for el in block:
            if el.tag.rsplit("}", 1)[-1] == "label" and el.get("key"):
                labels[str(el.get("key"))] = (el.text or "").strip()
    disks = sum(1 for d in root.iterfind("devices/disk") if d.get("device", "disk") == "disk")
    return tuple(labels.items()), disks


def domain_xml(
    name: str,
    *,
    domain_type: str,
    vcpus: int,
    memory_mib: int,
    image: str | None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """A minimal persistent domain: ``vcpus``, ``memory_mib``, one qcow2 disk if ``image``."""
    disk = ""
    if image:
        disk = (
            "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file={quoteattr(image)}/><target dev='vda' bus='virtio'/></disk>"
        )
    metadata = ""
    if labels:
        metadata = (
            f"<metadata><{LABELS_PREFIX}:labels xmlns:{LABELS_PREFIX}={quoteattr(LABELS_NS)}>"
            + labels_xml(labels)[len("<labels>") : -len("</labels>")]
            + f"</{LABELS_PREFIX}:labels></metadata>"
        )
    return (
        f"<domain type={quoteattr(domain_type)}><name>{escape(name)}</name>"
        f"<memory unit='MiB'>{memory_mib}</memory><vcpu>{vcpus}</vcpu>"
        "<os><type arch='x86_64'>hvm</type></os>"
        f"{metadata}<devices>{disk}</devices></domain>"
    )


def snapshot_xml(name: str, description: str = "") -> str:
    desc = f"<description>{escape(description)}</description>" if description else ""
    return f"<domainsnapshot><name>{escape(name)}</name>{desc}</domainsnapshot>"
