"""An independent statement of the validation rules, for the property tests.

Written against the standard library's :mod:`ipaddress` and IANA's
special-purpose registries, not against ``cfallow.fetch.validate``, so a property
test compares two implementations instead of one with itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Union

Net = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

MAX_ENTRIES = 1000
MIN_PREFIX = {4: 8, 6: 16}
GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")


def _nets(*cidrs: str) -> tuple[Net, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


#: Must be refused: private, shared, loopback, link-local, multicast, reserved,
#: documentation, benchmarking, "this network", protocol assignments (IANA),
#: and the IPv6 transition prefixes (NAT64, Teredo inside 2001::/23, 6to4).
FORBIDDEN = _nets(
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "::ffff:0:0/96",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/23",
    "2002::/16",
    "2001:db8::/32",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
)

#: Special in some registry but globally reachable or deprecated: a validator
#: may go either way, so the "valid lists are accepted" direction avoids them.
GREY = _nets(
    "192.31.196.0/24",
    "192.52.193.0/24",
    "192.88.99.0/24",
    "192.175.48.0/24",
    "3fff::/20",
    "5f00::/16",
)


def _special_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return bool(
        not addr.is_global
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
        or addr.is_loopback
        or addr.is_link_local
    )


def parse_entry(text: object, version: int) -> Net | None:
    """The network ``text`` names if it is an acceptable entry of ``version``, else None."""
    if not isinstance(text, str) or "/" not in text or "%" in text:
        return None  # an entry is addr/prefix: no bare address, no zone index
    plen = text.partition("/")[2]
    if not (plen.isascii() and plen.isdigit()):
        return None
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        return None
    if net.version != version or net.prefixlen < MIN_PREFIX[version]:
        return None
    if version == 6 and not net.subnet_of(GLOBAL_UNICAST_V6):  # type: ignore[arg-type]
        return None
    if any(net.overlaps(s) for s in FORBIDDEN if s.version == version):
        return None
    if _special_address(net.network_address) or _special_address(net.broadcast_address):
        return None
    return net


def is_grey(net: Net) -> bool:
    """Overlaps a block where either answer is defensible."""
    return any(net.overlaps(g) for g in GREY if g.version == net.version)


def same(accepted: Iterable[object], expected: Iterable[Net]) -> bool:
    """``accepted`` (netaddr networks) names exactly the networks in ``expected``."""
    got = {(n.version, int(n.first), n.prefixlen) for n in accepted}  # type: ignore[attr-defined]
    want = {(n.version, int(n.network_address), n.prefixlen) for n in expected}
    return got == want


def lists_ok(ipv4: set[Net], ipv6: set[Net]) -> bool:
    """Both families non-empty, at most :data:`MAX_ENTRIES` in all."""
    return bool(ipv4) and bool(ipv6) and len(ipv4) + len(ipv6) <= MAX_ENTRIES
