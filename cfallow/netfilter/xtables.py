"""Legacy x_tables as raw kernel blobs: read a table on the host, load it into a scratch netns.

``iptables-legacy-save`` prints a rule with a wrong interface mask exactly like
a correct one (docs/iptables.md, "the IPv6 interface-mask bug"), so a snapshot in
save text would not be the host's ruleset. The blob the kernel holds
(``IPT_SO_GET_ENTRIES``) is copied byte for byte into the scratch namespace
(``IPT_SO_SET_REPLACE``): the scratch kernel then matches exactly what the
host's matches, masks included.

Used by ``cfallow verify`` (:mod:`cfallow.verify.snapshot` reads, :mod:`cfallow.verify` loads)
and by the iptables backend's legacy mask check (``cfallow.backends.iptables.entries``).
Only tables the host already has are read (``/proc/net/ip_tables_names``):
asking for another would make the kernel create it on the host.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

SO_GET_INFO = 64  # IPT_SO_GET_INFO == IP6T_SO_GET_INFO
SO_GET_ENTRIES = 65
SO_SET_REPLACE = 64
LEVEL = {4: socket.IPPROTO_IP, 6: socket.IPPROTO_IPV6}
AF = {4: socket.AF_INET, 6: socket.AF_INET6}
NAMES_FILE = {4: "/proc/net/ip_tables_names", 6: "/proc/net/ip6_tables_names"}
INFO = struct.Struct("32sI5I5III")  # struct ipt_getinfo
ENTRIES_HEAD = 40  # struct ipt_get_entries: name[32], size, padding to the u64 entries
REPLACE_HEAD = struct.Struct("32sIII5I5IIP")  # struct ipt_replace up to entries[]


@dataclass(frozen=True)
class Blob:
    """One x_tables table as the kernel holds it."""

    version: int
    name: str
    valid_hooks: int
    hook_entry: tuple[int, ...]
    underflow: tuple[int, ...]
    num_entries: int
    entries: bytes

    def to_json(self) -> dict[str, object]:
        """A JSON-able form (entries in hex)."""
        return {
            "version": self.version,
            "name": self.name,
            "valid_hooks": self.valid_hooks,
            "hook_entry": list(self.hook_entry),
            "underflow": list(self.underflow),
            "num_entries": self.num_entries,
            "entries": self.entries.hex(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Blob:
        """The inverse of :meth:`to_json`."""
        return cls(
            version=int(doc["version"]),  # type: ignore[call-overload]
            name=str(doc["name"]),
            valid_hooks=int(doc["valid_hooks"]),  # type: ignore[call-overload]
            hook_entry=tuple(doc["hook_entry"]),  # type: ignore[arg-type]
            underflow=tuple(doc["underflow"]),  # type: ignore[arg-type]
            num_entries=int(doc["num_entries"]),  # type: ignore[call-overload]
            entries=bytes.fromhex(str(doc["entries"])),
        )


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)  # find_library runs ldconfig


def _getsockopt(
    sock: socket.socket, version: int, opt: int, buf: ctypes.Array[ctypes.c_char]
) -> None:
    size = ctypes.c_uint(len(buf))
    if _libc().getsockopt(sock.fileno(), LEVEL[version], opt, buf, ctypes.byref(size)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def table_names(version: int) -> list[str]:
    """The x_tables tables of this family that exist in this network namespace."""
    path = Path(NAMES_FILE[version])
    if not path.exists():
        return []
    return [n for n in path.read_text().split() if n]


def _info(sock: socket.socket, version: int, name: str) -> tuple[int, ...]:
    raw = INFO.pack(name.encode(), 0, *[0] * 5, *[0] * 5, 0, 0)
    buf = ctypes.create_string_buffer(raw, len(raw))  # exactly the struct: no NUL after it
    _getsockopt(sock, version, SO_GET_INFO, buf)
    return INFO.unpack(buf.raw)[1:]


def read_table(version: int, name: str) -> Blob:
    """The blob of one existing table (read-only)."""
    with socket.socket(AF[version], socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        valid, *rest = _info(sock, version, name)
        hook_entry, underflow = tuple(rest[0:5]), tuple(rest[5:10])
        num_entries, size = rest[10], rest[11]
        buf = ctypes.create_string_buffer(ENTRIES_HEAD + size)
        struct.pack_into("32sI", buf, 0, name.encode(), size)
        _getsockopt(sock, version, SO_GET_ENTRIES, buf)
        entries = buf.raw[ENTRIES_HEAD:]
    return Blob(version, name, valid, hook_entry, underflow, num_entries, entries)


def read_all() -> list[Blob]:
    """Every legacy table of both families that exists here."""
    return [read_table(v, n) for v in (4, 6) for n in table_names(v)]


def load_table(blob: Blob) -> None:
    """Replace the same table in this network namespace with ``blob`` (one commit)."""
    with socket.socket(AF[blob.version], socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        old_entries = _info(sock, blob.version, blob.name)[11]
        counters = ctypes.create_string_buffer(16 * max(old_entries, 1))
        head = REPLACE_HEAD.pack(
            blob.name.encode(),
            blob.valid_hooks,
            blob.num_entries,
            len(blob.entries),
            *blob.hook_entry,
            *blob.underflow,
            old_entries,
            ctypes.addressof(counters),
        )
        buf = ctypes.create_string_buffer(head + blob.entries, len(head) + len(blob.entries))
        rc = _libc().setsockopt(
            sock.fileno(), LEVEL[blob.version], SO_SET_REPLACE, buf, ctypes.c_uint(len(buf.raw))
        )
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{blob.name} (IPv{blob.version}): {os.strerror(err)}")
