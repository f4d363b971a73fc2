"""Has the host's ruleset changed since the last analysis? The kernel's answer, and a memo.

nf_tables numbers its ruleset: every committed transaction bumps a generation
id (netlink ``NFT_MSG_GETGEN``), iptables-nft's tables included. With the boot
and the network namespace it names one ruleset, so an analysis stored under it
stays true while the id stays; asking costs one netlink round trip instead of
listing (and parsing) every rule. One change is no transaction: a table with
``flags owner`` goes with the process that owns it, and the id stays (measured,
kernel 6.18). The tables that can go that way are named in the answer too (a
second round trip: the table heads, no rule), so their going is a new ruleset.
Nor does the id outlive nf_tables itself: a module unloaded and loaded again starts
every namespace's id from 1, so the load is named too (:func:`module`).
Legacy x_tables have no such number: what a backend reads from them goes into
its key itself.

Run as a module (``python -m cfallow.netfilter.generation``) it prints the
generation, for a :class:`~cfallow.runner.Runner` that runs its commands in
another namespace.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import socket
import struct
import sys

from cfallow.errors import BackendError
from cfallow.netfilter.netlink import attributes

# Only annotations need these: the in-step record asks for the generation on the way
# to a run said again, and typing, logging, pathlib and the runner would double that
# run's cost (mypy takes any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import NamedTuple

    from cfallow.runner import Runner

NETLINK_NETFILTER = 12
GETGEN = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN
GETTABLE = (10 << 8) | 1  # NFT_MSG_GETTABLE
GETCHAIN = (10 << 8) | 4  # NFT_MSG_GETCHAIN
NFTA_GEN_ID = 1
NFTA_TABLE_NAME, NFTA_TABLE_FLAGS, NFTA_TABLE_HANDLE = 1, 2, 4
NFT_TABLE_F_DORMANT, NFT_TABLE_F_OWNER = 0x1, 0x2
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK = 1, 3, 4
NFTA_CHAIN_POLICY, NFTA_CHAIN_USE = 5, 6
NF_ACCEPT = 1
#: nf_tables' family numbers (NFPROTO_*) as nft names them.
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
SO_NETNS_COOKIE = 71
#: nf_tables built as a module: the kernel makes this directory at each load.
MODULE = "/sys/module/nf_tables"


def _ask(sock: socket.socket) -> int:
    sock.settimeout(2.0)
    sock.bind((0, 0))
    sock.send(struct.pack("=IHHIIBBH", 20, GETGEN, 1, 1, 0, socket.AF_UNSPEC, 0, 0))
    data = sock.recv(65536)
    length, kind = struct.unpack_from("=IH", data)
    if kind == NLMSG_ERROR:
        (err,) = struct.unpack_from("=i", data, 16)
        raise OSError(-err, os.strerror(-err))
    gen = attributes(data, 20, length).get(NFTA_GEN_ID, b"")  # after nlmsghdr + nfgenmsg
    if len(gen) < 4:
        raise OSError("no generation id in the kernel's answer")
    return int.from_bytes(gen[:4], "big")


def _dump(sock: socket.socket, kind: int, seq: int) -> Iterator[tuple[int, dict[int, bytes]]]:
    """Each object of one netlink dump (every family): its family number and attributes."""
    sock.send(struct.pack("=IHHIIBBH", 20, kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0, 0, 0, 0))
    while True:
        data, at = sock.recv(1 << 16), 0
        while at + 16 <= len(data):
            length, got = struct.unpack_from("=IH", data, at)
            if length < 16:
                raise OSError("a malformed netlink message")
            if got == NLMSG_DONE:
                return
            if got == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", data, at + 16)
                raise OSError(-err, os.strerror(-err))
            yield data[at + 16], attributes(data, at + 20, at + length)  # after the headers
            at += (length + 3) & ~3


def _name(attrs: dict[int, bytes], kind: int) -> str:
    return attrs.get(kind, b"").split(b"\0")[0].decode(errors="replace")


def _number(attrs: dict[int, bytes], kind: int, size: int = 4) -> int:
    return int.from_bytes(attrs.get(kind, b"")[:size] or b"\0", "big")


def _tables(sock: socket.socket) -> list[tuple[int, str, int, int]]:
    """Every table's family number, name, handle and flags (one netlink dump, no rule)."""
    return [
        (
            family,
            _name(a, NFTA_TABLE_NAME),
            _number(a, NFTA_TABLE_HANDLE, 8),
            _number(a, NFTA_TABLE_FLAGS),
        )
        for family, a in _dump(sock, GETTABLE, 2)
    ]


if TYPE_CHECKING:

    class Chain(NamedTuple):
        """One chain as the kernel counts it (no rule read)."""

        family: int  # NFPROTO_* (2: ip, 10: ip6)
        table: str
        name: str
        #: its rules plus every jump and goto into it (a rule's, a verdict map element's)
        use: int
        #: a base chain's policy (``ACCEPT``/``DROP``); None: not a base chain
        policy: str | None

else:  # the same, without importing typing at run time
    Chain = collections.namedtuple("Chain", "family table name use policy")


def _chains(sock: socket.socket) -> list[Chain]:
    out = []
    for family, a in _dump(sock, GETCHAIN, 3):
        if NFTA_CHAIN_USE not in a:
            raise OSError("no use count in the kernel's answer")
        policy = "ACCEPT" if _number(a, NFTA_CHAIN_POLICY) == NF_ACCEPT else "DROP"
        table, name = _name(a, NFTA_CHAIN_TABLE), _name(a, NFTA_CHAIN_NAME)
        base = NFTA_CHAIN_HOOK in a
        out.append(Chain(family, table, name, _number(a, NFTA_CHAIN_USE), policy if base else None))
    return out


def _sleeping(tables: list[tuple[int, str, int, int]]) -> list[tuple[str, str]]:
    """The dormant ones of ``tables``, as ``(family, name)``, sorted."""
    dormant = (t for t in tables if t[3] & NFT_TABLE_F_DORMANT)
    return sorted((FAMILIES.get(f, str(f)), n) for f, n, _, _ in dormant)


def _asleep(tables: list[tuple[int, str, int, int]]) -> str:
    """The dormant tables as ``!FAMILY:NAME,...`` ("" when there are none, the common case)."""
    names = ",".join(f"{f}:{n}" for f, n in _sleeping(tables))
    return f"!{names}" if names else ""


def asleep(generation: str | None) -> frozenset[tuple[str, str]]:
    """The dormant tables a generation from :func:`current` names, as ``(family, name)``."""
    where = (generation or "").rsplit("/", 1)[0]
    _, mark, names = where.partition("!")
    found = (n.split(":", 1) for n in names.split(",") if mark and ":" in n)
    return frozenset((family, name) for family, name in found)


def _owned(tables: list[tuple[int, str, int, int]]) -> str:
    """The tables that go with their owner's process, without a new generation: each
    family, name and handle ("" when there are none, the common case)."""
    owned = (f"{f}:{n}:{h}" for f, n, h, flags in tables if flags & NFT_TABLE_F_OWNER)
    return ",".join(sorted(owned))


def _dormant() -> list[tuple[str, str]]:
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(2.0)
        sock.bind((0, 0))
        return _sleeping(_tables(sock))


def dormant(runner: Runner) -> frozenset[tuple[str, str]] | None:
    """The tables with ``flags dormant`` where ``runner`` runs its commands, as
    ``(family, name)``: their chains are on no hook (None: cannot tell). ``nft -j``
    1.0.6 prints a table's one flag as garbage, so the kernel is asked."""
    try:
        if not runner.prefix:
            return frozenset(_dormant())
        out = runner.run_module("cfallow.netfilter.generation", "--dormant").stdout
        return frozenset((str(f), str(n)) for f, n in json.loads(out))
    except (OSError, BackendError, ValueError, TypeError):
        return None


def namespace(sock: socket.socket) -> str:
    """The network namespace's cookie (never reused while the kernel runs).

    Kernels before 5.14 have no cookie, and the namespace's inode number is reused
    as soon as the namespace is gone, while its generation starts again from 1: a
    container restarted on the same boot could find the number and the generation
    of its last life, and a memo of another ruleset. There the inode names this
    namespace only with the start of the process 1 that shares it (the host's
    init, or the container's: a restart is a new one); else raises OSError (no memo).
    """
    try:
        return str(struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0])
    except OSError:
        pass
    mine = os.readlink("/proc/self/ns/net")
    try:
        if os.readlink("/proc/1/ns/net") == mine:
            with open("/proc/1/stat", encoding="ascii", errors="replace") as fh:
                start = fh.read().rsplit(")", 1)[1].split()[19]
            return f"{mine}@{start}"
    except (OSError, IndexError):
        pass
    raise OSError("this network namespace has no lasting name (a kernel before 5.14)")


def module(path: str | os.PathLike[str] = MODULE) -> str:
    """Which load of nf_tables answers: ``~nftINODE`` ("" where it is built in).

    Unloaded and loaded again (``modprobe -r``, possible once no table is left), it
    starts every namespace's generation from 1, so an id of the last load could come
    back naming another ruleset. Each load makes the module's sysfs directory anew,
    and kernfs numbers its nodes cyclically (64-bit kernels: with a generation in the
    high bits), so the directory's inode number names the load; it is the same in
    every mount of sysfs (``ip netns exec`` mounts its own). No directory: nf_tables
    is built into the kernel and cannot go (no ``/sys/module`` at all, no sysfs: OSError,
    no generation).
    """
    try:
        return f"~nft{os.stat(path).st_ino}"
    except FileNotFoundError:
        parent = os.path.dirname(os.fspath(path))
        if not os.path.isdir(parent):  # no sysfs here: a reload could not be seen
            raise OSError(f"no {parent}: which load of nf_tables answers is unknown") from None
        return ""


def current() -> str:
    """``BOOT/NAMESPACE/GENERATION`` of this process's network namespace, with the
    load of nf_tables (:func:`module`), ``+OWNED`` after the namespace while tables
    owned by a process exist and ``!DORMANT`` while tables sleep (:func:`asleep`; a
    table put to sleep or woken is a commit anyway) (raises OSError: no nf_tables, or
    no privilege to ask)."""
    return _current(with_chains=False)[0]


def snapshot() -> tuple[str, list[Chain]]:
    """:func:`current`, and every chain as the kernel counts it at that generation (asked
    in the same round: a commit between moves the generation a later ask returns)."""
    return _current(with_chains=True)


def _current(*, with_chains: bool) -> tuple[str, list[Chain]]:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
        boot = fh.read().strip()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        load = module()
        gen = _ask(sock)
        tables = _tables(sock)
        owned = _owned(tables)  # one gone after this: the key is not seen again
        chains = _chains(sock) if with_chains else []
        if module() != load:  # (re)loaded meanwhile (the ask loads it if it was not)
            raise OSError("nf_tables was loaded while asked: which load the id is of is unknown")
        where = namespace(sock) + load + (f"+{owned}" if owned else "") + _asleep(tables)
        return f"{boot}/{where}/{gen}", chains


def chains(runner: Runner) -> tuple[str, list[Chain]] | None:
    """:func:`snapshot` where ``runner`` runs its commands (None: cannot tell)."""
    try:
        if not runner.prefix:
            return snapshot()
        out = runner.run_module("cfallow.netfilter.generation", "--chains").stdout
        doc = json.loads(out)
        found = [Chain(int(f), str(t), str(n), int(u), p) for f, t, n, u, p in doc["chains"]]
        return str(doc["generation"]), found
    except (OSError, BackendError, ValueError, TypeError, KeyError):
        return None


def generation(runner: Runner) -> str | None:
    """The ruleset's generation where ``runner`` runs its commands (None: cannot tell)."""
    if not runner.prefix:
        try:
            return current()
        except OSError:
            return None
    try:
        out = runner.run_module("cfallow.netfilter.generation").stdout.strip()
    except BackendError:
        return None
    return out or None


def advanced(before: str | None, after: str | None) -> int | None:
    """How many generations the ruleset moved from ``before`` to ``after`` (same boot and
    namespace); None: cannot tell.

    Measured here (kernel 6.18): every transaction that changes something is one
    generation; a batch that changes nothing, or fails, is none; ``iptables-nft-restore``
    commits each table's part on its own (two parts: two).
    """
    if before is None or after is None:
        return None
    where, _, old = before.rpartition("/")
    there, _, new = after.rpartition("/")
    if where != there or not old.isdigit() or not new.isdigit():
        return None
    return int(new) - int(old)


def key(generation: str | None, *parts: object) -> str | None:
    """One memo key from a generation and what else the analysis depends on (None: none)."""
    if generation is None:
        return None
    blob = json.dumps([generation, *parts], sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()


class Memo:
    """One analysis result kept in a small JSON file under the key it was computed for.

    A file that cannot be read or written is no memo: the analysis runs again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def sibling(self, name: str) -> Memo:
        """Another memo in the same directory."""
        return Memo(self.path.with_name(name))

    def get(self, key: str | None) -> object | None:
        """The value stored under ``key`` (None: a miss)."""
        if key is None:
            return None
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(doc, dict) or doc.get("key") != key:
            return None
        return doc.get("value")

    def put(self, key: str | None, value: object) -> None:
        """Keep ``value`` under ``key`` (replacing what was there)."""
        if key is None:
            return
        with contextlib.suppress(OSError):  # a state dir that cannot take it: no memo
            from cfallow.fs import write_atomic

            write_atomic(self.path, json.dumps({"key": key, "value": value}), 0o600)


if __name__ == "__main__":
    try:
        if sys.argv[1:] == ["--chains"]:
            gen, found = snapshot()
            print(json.dumps({"generation": gen, "chains": found}))
        else:
            print(json.dumps(_dormant()) if sys.argv[1:] == ["--dormant"] else current())
    except OSError as exc:
        print(f"cannot read the ruleset generation: {exc}", file=sys.stderr)
        sys.exit(1)
