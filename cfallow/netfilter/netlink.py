"""Netlink attributes as nf_tables sends them: type-length-value records, 4-byte aligned."""

from __future__ import annotations

import struct

_ATTR = struct.Struct("=HH")
#: The type's high bits are flags (nested, network byte order), not the type.
TYPE_MASK = 0x3FFF


def attributes(buf: bytes, at: int = 0, end: int | None = None) -> dict[int, bytes]:
    """``type -> payload`` of each attribute in ``buf[at:end]`` (a malformed length ends it)."""
    out: dict[int, bytes] = {}
    end = len(buf) if end is None else min(end, len(buf))
    while at + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(buf, at)
        if length < _ATTR.size:
            break
        out[kind & TYPE_MASK] = buf[at + _ATTR.size : at + length]
        at += (length + 3) & ~3
    return out
