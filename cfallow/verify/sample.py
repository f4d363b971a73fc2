"""Probe sources: both ends of every Cloudflare range, and public addresses outside them all.

Cloudflare's side covers every published range (its first and last address):
a firewall that blocks a subset of the ranges (intermittent 520s) fails the
probe that names that range. Outsiders are public addresses, never
documentation space (a host's bogon filter drops 198.51.100.0/24 and
2001:db8::/32, which would make a lockdown that is not there look in place):
the addresses just below and just above each block of ranges, and a few
well-known public ones.
"""

from __future__ import annotations

import ipaddress

from netaddr import IPAddress, IPNetwork, IPSet

from cfallow.model import Networks, family

#: Public, routable, outside every Cloudflare range (Quad9, Google DNS, a root server).
PUBLIC = {
    4: ("9.9.9.9", "8.8.4.4", "193.0.14.129"),
    6: ("2620:fe::9", "2001:4860:4860::8844", "2001:7fd::1"),
}


def cloudflare_sources(desired: Networks, version: int) -> list[tuple[str, IPNetwork]]:
    """The first and the last address of every range of ``version``, with its range."""
    out: list[tuple[str, IPNetwork]] = []
    for net in sorted(family(desired, version), key=lambda n: (n.value, n.prefixlen)):
        for value in dict.fromkeys((net.first, net.last)):
            out.append((str(IPAddress(value, version)), net))
    return out


def _public(value: int, version: int) -> bool:
    addr = ipaddress.ip_address(str(IPAddress(value, version)))
    return addr.is_global and not addr.is_multicast


def outsiders(desired: Networks, version: int, avoid: Networks = frozenset()) -> list[str]:
    """Public addresses no range (nor ``avoid``) covers: each block's neighbours, and PUBLIC."""
    covered = IPSet(desired) | IPSet(avoid)
    top = 2 ** (32 if version == 4 else 128) - 1
    values: list[int] = []
    for block in IPSet(family(desired, version)).iter_ipranges():
        values += [v for v in (block.first - 1, block.last + 1) if 0 <= v <= top]
    values += [int(IPAddress(a)) for a in PUBLIC[version]]
    out = []
    for value in dict.fromkeys(values):
        if IPAddress(value, version) not in covered and _public(value, version):
            out.append(str(IPAddress(value, version)))
    return out
