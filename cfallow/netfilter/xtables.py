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

:func:`digest` is legacy x_tables' stand-in for the ruleset generation they do
not have: a hash of the tables' blobs with every entry's counters zeroed (they
move with traffic), with the boot and the network namespace's cookie. The
kernel copies out only what a rule is (each match's and target's user-visible
part; the rest of its field zeroed), so equal digests are equal rules; a field
that moved on its own would only make a digest differ (a read, never a wrong
answer). Run as a module (``python -m cfallow.netfilter.xtables 4:filter ...``)
it prints the digest as JSON, for a runner that runs its commands in another
namespace (``4:filter:create``: read the table even where it does not exist yet).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import mmap
import os
import socket
import struct
import sys

TYPE_CHECKING = False  # typing is not imported at run time (mypy: true)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import TypeVar

    _R = TypeVar("_R", bound="_Record")

SO_GET_INFO = 64  # IPT_SO_GET_INFO == IP6T_SO_GET_INFO
SO_GET_ENTRIES = 65
SO_SET_REPLACE = 64
LEVEL = {4: socket.IPPROTO_IP, 6: socket.IPPROTO_IPV6}
AF = {4: socket.AF_INET, 6: socket.AF_INET6}
NAMES_FILE = {4: "/proc/net/ip_tables_names", 6: "/proc/net/ip6_tables_names"}
INFO = struct.Struct("32sI5I5III")  # struct ipt_getinfo
ENTRIES_HEAD = 40  # struct ipt_get_entries: name[32], size, padding to the u64 entries
REPLACE_HEAD = struct.Struct("32sIII5I5IIP")  # struct ipt_replace up to entries[]


class _Record:
    """A record compared by its fields (``dataclasses`` is not imported: a timer run said
    again asks the digest, and that import alone is a tenth of the run)."""

    __slots__: tuple[str, ...] = ()
    __hash__ = None  # type: ignore[assignment]  # mutable fields: unhashable, as before

    def replace(self: _R, **changes: object) -> _R:
        """A copy with ``changes`` (as :func:`dataclasses.replace`)."""
        fields = {f: changes.pop(f, getattr(self, f)) for f in self.__slots__}
        if changes:
            raise TypeError(f"{type(self).__name__} has no field {sorted(changes)[0]!r}")
        return type(self)(**fields)

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, f) for f in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Record) or type(other) is not type(self):
            return False
        return self._fields() == other._fields()

    def __repr__(self) -> str:
        args = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({args})"


class Blob(_Record):
    """One x_tables table as the kernel holds it."""

    __slots__ = (
        "entries",
        "hook_entry",
        "name",
        "num_entries",
        "underflow",
        "valid_hooks",
        "version",
    )

    def __init__(
        self,
        *,
        version: int,
        name: str,
        valid_hooks: int,
        hook_entry: tuple[int, ...],
        underflow: tuple[int, ...],
        num_entries: int,
        entries: bytes,
    ) -> None:
        self.version, self.name, self.valid_hooks = version, name, valid_hooks
        self.hook_entry, self.underflow = hook_entry, underflow
        self.num_entries, self.entries = num_entries, entries

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
def libc() -> ctypes.CDLL:
    """The C library, with ``errno`` kept for :func:`ctypes.get_errno`."""
    # The interpreter's own symbols hold libc's (no ``find_library``: it runs ldconfig).
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "getsockopt"):  # pragma: no cover - a static interpreter
        from ctypes.util import find_library

        libc = ctypes.CDLL(find_library("c"), use_errno=True)
    return libc


def getsockopt(
    sock: socket.socket, version: int, opt: int, buf: ctypes.Array[ctypes.c_char]
) -> None:
    """``getsockopt`` at the family's level (IPv4: ``SOL_IP``), into ``buf`` (which holds
    the request); raises OSError."""
    size = ctypes.c_uint(len(buf))
    if libc().getsockopt(sock.fileno(), LEVEL[version], opt, buf, ctypes.byref(size)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def table_names(version: int) -> list[str]:
    """The x_tables tables of this family that exist in this network namespace."""
    try:
        with open(NAMES_FILE[version], encoding="ascii", errors="replace") as fh:
            return [n for n in fh.read().split() if n]
    except FileNotFoundError:
        return []


def _info(sock: socket.socket, version: int, name: str) -> tuple[int, ...]:
    raw = INFO.pack(name.encode(), 0, *[0] * 5, *[0] * 5, 0, 0)
    buf = ctypes.create_string_buffer(raw, len(raw))  # exactly the struct: no NUL after it
    getsockopt(sock, version, SO_GET_INFO, buf)
    return INFO.unpack(buf.raw)[1:]


def read_table(version: int, name: str) -> Blob:
    """The blob of one existing table (read-only)."""
    with socket.socket(AF[version], socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        (valid, *rest), mem = _entries(sock, version, name)
    hook_entry, underflow = tuple(rest[0:5]), tuple(rest[5:10])
    num_entries, size = rest[10], rest[11]
    with mem:
        entries = mem[ENTRIES_HEAD : ENTRIES_HEAD + size]
    return Blob(
        version=version,
        name=name,
        valid_hooks=valid,
        hook_entry=hook_entry,
        underflow=underflow,
        num_entries=num_entries,
        entries=entries,
    )


#: (field, offset, size) of ``struct ipt_entry`` / ``struct ip6t_entry``, header only.
HEADER = {
    4: (
        ("src", 0, 4),
        ("dst", 4, 4),
        ("smsk", 8, 4),
        ("dmsk", 12, 4),
        ("iniface", 16, 16),
        ("outiface", 32, 16),
        ("iniface_mask", 48, 16),
        ("outiface_mask", 64, 16),
        ("proto", 80, 2),
        ("flags", 82, 1),
        ("invflags", 83, 1),
        ("nfcache", 84, 4),
        ("target_offset", 88, 2),
        ("next_offset", 90, 2),
        ("comefrom", 92, 4),
        ("counters", 96, 16),
    ),
    6: (
        ("src", 0, 16),
        ("dst", 16, 16),
        ("smsk", 32, 16),
        ("dmsk", 48, 16),
        ("iniface", 64, 16),
        ("outiface", 80, 16),
        ("iniface_mask", 96, 16),
        ("outiface_mask", 112, 16),
        ("proto", 128, 2),
        ("tos", 130, 1),
        ("flags", 131, 1),
        ("invflags", 132, 1),
        ("padding", 133, 3),
        ("nfcache", 136, 4),
        ("target_offset", 140, 2),
        ("next_offset", 142, 2),
        ("comefrom", 144, 4),
        ("padding", 148, 4),
        ("counters", 152, 16),
    ),
}
HEADER_SIZE = {4: 112, 6: 168}
#: Netfilter hook numbers of the built-in chains (``NF_INET_*``).
HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


def field_at(version: int, name: str) -> int:
    """Where the field ``name`` of an entry's header is (:data:`HEADER`)."""
    return next(offset for field, offset, _ in HEADER[version] if field == name)


NEXT_OFFSET_AT = {v: field_at(v, "next_offset") for v in HEADER}
COUNTERS_AT = {v: field_at(v, "counters") for v in HEADER}


class Digest(_Record):
    """What :func:`digest` found: the hash, and each built-in chain's policy counters
    (``(table, chain)`` -> ``(packets, bytes)``, as read with the hash)."""

    __slots__ = ("policies", "value")

    def __init__(self, value: str, policies: dict[tuple[str, str], tuple[int, int]]) -> None:
        self.value, self.policies = value, policies

    def to_json(self) -> str:
        """One line of JSON (the module's output)."""
        pol = [[t, c, p, b] for (t, c), (p, b) in sorted(self.policies.items())]
        return json.dumps({"digest": self.value, "policies": pol})

    @classmethod
    def from_json(cls, text: str) -> Digest:
        """The inverse of :meth:`to_json` (raises ValueError on anything else)."""
        try:
            doc = json.loads(text)
            pol = {(str(t), str(c)): (int(p), int(b)) for t, c, p, b in doc["policies"]}
            return cls(str(doc["digest"]), pol)
        except (TypeError, KeyError, ValueError) as exc:
            raise ValueError(f"not a digest: {text[:80]!r}") from exc


def _entries(sock: socket.socket, version: int, name: str) -> tuple[tuple[int, ...], mmap.mmap]:
    """GET_INFO, then the entries into a buffer of the size it said (again when the table
    grew in between: the kernel refuses a size that is no longer the table's).

    The buffer is a mapping of its own, unmapped when closed: a blob of tens of MB
    from ``malloc`` would, once freed, raise glibc's mmap threshold to its size, and
    the run's next big strings would then stay in the heap after they are freed.
    """
    for _ in range(8):
        info = _info(sock, version, name)
        size = ENTRIES_HEAD + info[12]
        mem = mmap.mmap(-1, size)
        buf = (ctypes.c_char * size).from_buffer(mem)
        struct.pack_into("32sI", buf, 0, name.encode(), info[12])
        try:
            getsockopt(sock, version, SO_GET_ENTRIES, buf)
        except OSError as exc:
            del buf
            mem.close()
            if exc.errno == errno.EAGAIN:
                continue
            raise
        del buf  # its export of ``mem`` ends here
        return info, mem
    raise OSError(errno.EAGAIN, f"{name} (IPv{version}) changed under every read")


def _zero_counters(view: memoryview, version: int, pos: int, end: int) -> None:
    """Zero every entry's counters, walking the entries by ``next_offset``, in place.

    Entries of one size in a row (nearly every rule of a big ruleset) are done
    at once: when the ``next_offset`` of an entry says ``step``, every entry
    ``step`` further on whose ``next_offset`` is ``step`` too starts where the
    one before it ends, so their counters are one strided slice.
    """
    at_next, at_counters = NEXT_OFFSET_AT[version], COUNTERS_AT[version]
    smallest = at_counters + 16
    with view.cast("Q") as words:  # entries are 8-byte aligned (XT_ALIGN), and so are counters
        while pos < end:
            step = struct.unpack_from("=H", view, pos + at_next)[0]
            if step < smallest or step % 8 or pos + step > end:
                raise OSError(errno.EINVAL, f"IPv{version}: an entry of size {step} at {pos}")
            first = pos + at_next
            lows = view[first:end:step].tobytes()
            highs = view[first + 1 : end : step].tobytes()
            run = min(
                len(lows) - len(lows.lstrip(bytes([step & 0xFF]))),
                len(highs) - len(highs.lstrip(bytes([step >> 8]))),
            )
            zeros = memoryview(bytes(8 * run)).cast("Q")
            word, stride = (pos + at_counters) // 8, step // 8
            words[word : word + run * stride : stride] = zeros  # packets
            words[word + 1 : word + 1 + run * stride : stride] = zeros  # bytes
            pos += run * step


def _hash_table(
    h: hashlib._Hash, version: int, name: str, policies: dict[tuple[str, str], tuple[int, int]]
) -> None:
    with socket.socket(AF[version], socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        info, mem = _entries(sock, version, name)
    with mem, memoryview(mem) as view:
        valid, size = info[0], info[12]
        h.update(struct.pack("=13I", *info))
        at_counters = COUNTERS_AT[version]
        for hook in range(5):
            if valid & (1 << hook):  # a built-in chain's policy: its underflow entry
                at = ENTRIES_HEAD + info[6 + hook] + at_counters
                policies[(name, HOOKS[hook])] = struct.unpack_from("=QQ", view, at)
        end = ENTRIES_HEAD + size
        _zero_counters(view, version, ENTRIES_HEAD, end)
        with view[ENTRIES_HEAD:end] as entries:
            h.update(entries)


def digest(tables: Iterable[tuple[int, str]], create: Iterable[str] = ()) -> Digest:
    """The digest of ``tables`` (``(version, name)``) in this process's network namespace.

    A table the namespace does not have is hashed as absent (and not created),
    except those named in ``create``: read (so created) as the caller's own
    read of them is about to do (``*-save -t filter`` creates the table).
    Raises OSError: no privilege (``CAP_NET_RAW``), no x_tables.
    """
    create = frozenset(create)
    h = hashlib.sha256()
    with open("/proc/sys/kernel/random/boot_id", "rb") as fh:
        h.update(fh.read().strip())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        from cfallow.netfilter.generation import namespace

        h.update(f"\0{namespace(sock)}".encode())
    policies: dict[tuple[str, str], tuple[int, int]] = {}
    names: dict[int, list[str]] = {}
    for version, name in tables:
        have = names.setdefault(version, table_names(version))
        h.update(f"\0{version}:{name}:".encode())
        if name not in have and name not in create:
            h.update(b"absent")
            continue
        _hash_table(h, version, name, policies)
    return Digest(h.hexdigest(), policies)


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
        rc = libc().setsockopt(
            sock.fileno(), LEVEL[blob.version], SO_SET_REPLACE, buf, ctypes.c_uint(len(buf.raw))
        )
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{blob.name} (IPv{blob.version}): {os.strerror(err)}")


if __name__ == "__main__":
    try:
        args = [arg.split(":") for arg in sys.argv[1:]]  # VERSION:TABLE[:create]
        wanted = [(int(a[0]), a[1]) for a in args]
        print(digest(wanted, {a[1] for a in args if a[2:] == ["create"]}).to_json())
    except (OSError, ValueError) as exc:
        print(f"cannot digest the x_tables: {exc}", file=sys.stderr)
        sys.exit(1)
