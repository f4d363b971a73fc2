"""Probe sources: addresses inside Cloudflare's ranges, and one outside every range."""

from __future__ import annotations

from netaddr import IPAddress, IPSet

from cfallow.model import Networks, family

OUTSIDERS = {4: ("198.51.100.7", "203.0.113.7", "100.64.0.7"), 6: ("2001:db8::7", "fd00:dead::7")}


def cloudflare_sources(desired: Networks, version: int, count: int = 3) -> list[str]:
    """Both ends of the largest range, and the middle of up to ``count - 1`` others."""
    nets = sorted(family(desired, version), key=lambda n: (n.prefixlen, n.value))
    if not nets:
        return []
    first = nets[0]
    out = [str(IPAddress(first.first, version)), str(IPAddress(first.last, version))]
    rest = nets[1:]
    step = max(1, len(rest) // max(1, count - 1))
    for n in rest[::step][: count - 1]:
        out.append(str(IPAddress(n.first + n.size // 2, version)))
    return out


def outsider(desired: Networks, version: int, avoid: Networks = frozenset()) -> str:
    """An address no Cloudflare range (nor ``avoid``) covers."""
    covered = IPSet(desired) | IPSet(avoid)
    for candidate in OUTSIDERS[version]:
        if IPAddress(candidate) not in covered:
            return candidate
    raise ValueError(f"no IPv{version} outsider address is free")  # pragma: no cover
