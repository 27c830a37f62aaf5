"""Strict base64: one spelling per byte string, so no byte of an export changes unseen."""

from __future__ import annotations

import binascii

__all__ = ["b64decode_strict", "b64encode"]


def b64encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def b64decode_strict(text: str | bytes, what: str) -> bytes:
    """Decode standard base64, refusing anything but its one canonical spelling.

    ``strict_mode`` refuses foreign characters and bad padding; what it allows
    and canonical base64 does not is non-zero unused bits in the last
    quantum, so only that quantum is re-encoded and compared.
    """
    try:
        raw = text.encode("ascii") if isinstance(text, str) else text
        data = binascii.a2b_base64(raw, strict_mode=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"{what} is not valid base64: {e}") from e
    tail = len(data) % 3 or 3
    if data and binascii.b2a_base64(data[-tail:], newline=False) != raw[-4:]:
        raise ValueError(f"{what} is not canonical base64")
    return data
