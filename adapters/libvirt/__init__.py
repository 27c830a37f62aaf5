"""The libvirt runtime adapter (see :mod:`adapters.libvirt.adapter`)."""

from adapters.libvirt.adapter import LibvirtAdapter, LibvirtConfig

__all__ = ["LibvirtAdapter", "LibvirtConfig"]
