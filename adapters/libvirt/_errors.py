"""Translate libvirt's errors into the adapter hierarchy, once, at the boundary."""

from __future__ import annotations

import libvirt

from adapters.errors import (
    AdapterError,
    AdapterTimeoutError,
    ConflictError,
    InvalidActionError,
    NotFoundError,
    UnavailableError,
    UnsupportedError,
)

__all__ = ["CONNECTION_LOST", "translate"]

_BY_CODE: dict[int, type[AdapterError]] = {
    libvirt.VIR_ERR_NO_DOMAIN: NotFoundError,
    libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT: NotFoundError,
    libvirt.VIR_ERR_OPERATION_INVALID: ConflictError,
    libvirt.VIR_ERR_OPERATION_FAILED: ConflictError,
    libvirt.VIR_ERR_NO_SUPPORT: UnsupportedError,
    libvirt.VIR_ERR_OPERATION_UNSUPPORTED: UnsupportedError,
    libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED: UnsupportedError,
    libvirt.VIR_ERR_INVALID_ARG: InvalidActionError,
    libvirt.VIR_ERR_XML_ERROR: InvalidActionError,
    libvirt.VIR_ERR_OPERATION_TIMEOUT: AdapterTimeoutError,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE: AdapterTimeoutError,
    libvirt.VIR_ERR_SYSTEM_ERROR: UnavailableError,
    libvirt.VIR_ERR_RPC: UnavailableError,
    libvirt.VIR_ERR_NO_CONNECT: UnavailableError,
    libvirt.VIR_ERR_INVALID_CONN: UnavailableError,
    libvirt.VIR_ERR_AUTH_FAILED: UnavailableError,
    libvirt.VIR_ERR_OPERATION_ABORTED: ConflictError,
}

# Codes after which the connection itself is suspect and is reopened.
CONNECTION_LOST = frozenset(
    {
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_INTERNAL_ERROR,
    }
)


def translate(err: libvirt.libvirtError, what: str) -> AdapterError:
    """The adapter error for a libvirt error; the caller raises it ``from err``."""
    code = err.get_error_code()
    kind = _BY_CODE.get(code, AdapterError)
    if code == libvirt.VIR_ERR_INVALID_ARG and "unsupported flags" in str(err):
        kind = UnsupportedError  # the driver lacks a feature; the request was fine
    message = f"{what}: {err.get_error_message() or err}"
    if kind is InvalidActionError:
        return InvalidActionError(message)
    return kind(message)
