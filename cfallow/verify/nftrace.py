"""The kernel's nftables trace events, read from netlink (``NFNLGRP_NFTRACE``) by this process.

What ``nft monitor trace`` reads, without the monitor: joining the group is one
``setsockopt`` (no process to start and wait for), and decoding the events here
is much cheaper than ``nft`` formatting and printing them (tens of thousands of
lines for a firewalld-sized ruleset). Each event becomes the line ``nft monitor
trace`` prints for it (its rule's text from ``nft -a list ruleset``, see
:func:`rule_texts`), so :func:`cfallow.verify.trace.parse` reads them as before.
A socket that overflowed says so (``ENOBUFS``): the batch is marked lost.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
import struct
from dataclasses import dataclass

from cfallow.netfilter.netlink import attributes

NETLINK_NETFILTER = 12
NFNLGRP_NFTRACE = 9
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33
#: Room for every event of a batch (nft itself asks for 16 MB).
RCVBUF = 64 << 20
TRACE_MSG = (10 << 8) | 17  # NFNL_SUBSYS_NFTABLES, NFT_MSG_TRACE
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
VERDICTS = {0: "drop", 1: "accept", 2: "stolen", 3: "queue", 4: "repeat", 5: "stop"}
NFT_VERDICTS = {-1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}
POLICY, RETURN, RULE = 1, 2, 3  # enum nft_trace_types
_HDR = struct.Struct("=IHHII")


@dataclass(frozen=True)
class Event:
    """One trace event: where (family, table, chain), what, and the packet it is about."""

    tid: int
    family: str
    table: str
    chain: str
    kind: int  # POLICY, RETURN or RULE
    handle: int = 0
    verdict: str = ""
    policy: str = ""
    source: str = ""  # with the first event of each chain the packet enters
    port: int = 0

    def line(self, rules: dict[tuple[str, str, str, int], str]) -> list[str]:
        """The lines ``nft monitor trace`` prints for this event."""
        head = f"trace id {self.tid:08x} {self.family} {self.table} {self.chain} "
        out = []
        if self.source:
            ip = "ip6" if ":" in self.source else "ip"
            out.append(f"{head}packet: {ip} saddr {self.source} tcp dport {self.port}")
        if self.kind == RULE:
            key = (self.family, self.table, self.chain, self.handle)
            text = rules.get(key, f"unknown rule handle {self.handle}")
            out.append(f"{head}rule {text} (verdict {self.verdict})")
        elif self.kind == POLICY:
            out.append(f"{head}policy {self.policy} ")
        elif self.kind == RETURN:
            out.append(f"{head}verdict {self.verdict}")
        return out


def open_socket() -> socket.socket:
    """A non-blocking netlink socket in the trace group of the calling thread's namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:  # no CAP_NET_ADMIN: as much as net.core.rmem_max allows
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTRACE)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def read(sock: socket.socket) -> tuple[list[Event], bool]:
    """Every event queued on ``sock`` now, and whether some were lost (``ENOBUFS``)."""
    events: list[Event] = []
    lost = False
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return events, lost
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            lost = True
            continue
        at = 0
        while at + _HDR.size <= len(data):
            length, kind = _HDR.unpack_from(data, at)[:2]
            if length < _HDR.size:
                break
            event = _event(data[at + _HDR.size : at + length]) if kind == TRACE_MSG else None
            if event is not None:
                events.append(event)
            at += (length + 3) & ~3


def _event(body: bytes) -> Event | None:
    """One NFT_MSG_TRACE message (after its netlink header: nfgenmsg, then attributes).

    ``None`` for a rule that neither accepted nor dropped (continue, jump, goto, return)
    and carries no packet headers: it decides nothing, and there are many.
    """
    found = attributes(body, 4)
    kind = _u32(found.get(4))
    verdict = _verdict(found[5]) if 5 in found else ""
    if kind == RULE and 8 not in found and verdict not in ("accept", "drop"):
        return None
    source, port = _packet(found.get(8), found.get(9))
    return Event(
        tid=_u32(found.get(6)),
        family=FAMILIES.get(body[0], str(body[0])),
        table=_str(found.get(1, b"")),
        chain=_str(found.get(2, b"")),
        kind=kind,
        handle=int.from_bytes(found[3][:8], "big") if 3 in found else 0,
        verdict=verdict,
        policy=VERDICTS.get(_u32(found.get(16)), "") if 16 in found else "",
        source=source,
        port=port,
    )


def _verdict(nested: bytes) -> str:
    found = attributes(nested)
    code = int.from_bytes(found.get(1, b"")[:4], "big", signed=True)
    chain = " " + _str(found[2]) if 2 in found else ""
    return (NFT_VERDICTS.get(code) or VERDICTS.get(code & 0xFF, str(code))) + chain


def _str(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _u32(raw: bytes | None) -> int:
    return int.from_bytes(raw[:4], "big") if raw else 0


def _packet(net: bytes | None, transport: bytes | None) -> tuple[str, int]:
    """(source, TCP destination port) of a TCP packet's headers, else ("", 0)."""
    if not net or not transport or len(transport) < 4:
        return "", 0
    if net[0] >> 4 == 4 and len(net) >= 20 and net[9] == socket.IPPROTO_TCP:
        source = str(ipaddress.IPv4Address(net[12:16]))
    elif net[0] >> 4 == 6 and len(net) >= 40 and net[6] == socket.IPPROTO_TCP:
        source = str(ipaddress.IPv6Address(net[8:24]))
    else:
        return "", 0
    return source, struct.unpack(">H", transport[2:4])[0]


_TABLE = re.compile(r"^table (\S+) (.+?) \{")
_CHAIN = re.compile(r"^\tchain (.+?) \{")
_RULE = re.compile(r"^\t\t(.*) # handle (\d+)$")


def rule_texts(listing: str) -> dict[tuple[str, str, str, int], str]:
    """(family, table, chain, handle) -> the rule as nft prints it, from ``nft -a list
    ruleset`` (the text ``nft monitor trace`` prints for a rule, handle left out)."""
    out: dict[tuple[str, str, str, int], str] = {}
    family = table = chain = ""
    for line in listing.splitlines():
        if m := _TABLE.match(line):
            family, table, chain = m.group(1), m.group(2).strip('"'), ""
        elif m := _CHAIN.match(line):
            chain = m.group(1).strip('"')
        elif line.startswith("\t}"):
            chain = ""
        elif chain and (m := _RULE.match(line)):
            out[(family, table, chain, int(m.group(2)))] = m.group(1)
    return out
