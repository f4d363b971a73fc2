"""All-or-nothing validation of a fetched list. One bad entry refuses the whole fetch."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from netaddr import IPNetwork, IPSet

from cfallow.errors import ValidationError
from cfallow.model import Networks, parse_cidr

MAX_ENTRIES = 1000
MIN_PREFIX = {4: 8, 6: 16}

# Special-purpose space (RFC 6890 and successors): never a CDN edge. A list
# entry that overlaps any of it is refused, so a /8 hiding 10.0.0.0/8 is too.
_SPECIAL_V4 = {
    "0.0.0.0/8": "'this network'",
    "10.0.0.0/8": "private",
    "100.64.0.0/10": "shared (CGNAT)",
    "127.0.0.0/8": "loopback",
    "169.254.0.0/16": "link-local",
    "172.16.0.0/12": "private",
    "192.0.0.0/24": "IETF protocol assignments",
    "192.0.2.0/24": "documentation",
    "192.88.99.0/24": "6to4 relay (deprecated)",
    "192.168.0.0/16": "private",
    "198.18.0.0/15": "benchmarking",
    "198.51.100.0/24": "documentation",
    "203.0.113.0/24": "documentation",
    "224.0.0.0/4": "multicast",
    "240.0.0.0/4": "reserved",
}
_SPECIAL_V6 = {
    "::/128": "unspecified",
    "::1/128": "loopback",
    "::ffff:0:0/96": "IPv4-mapped",
    # Transition space: addresses that stand for IPv4 hosts or tunnels, never a CDN edge.
    "64:ff9b::/96": "NAT64 (well-known prefix) transition",
    "64:ff9b:1::/48": "local-use NAT64 transition",
    "2001::/32": "Teredo transition",
    "2002::/16": "6to4 transition",
    "100::/64": "discard-only",
    "2001::/23": "IETF protocol assignments",
    "2001:db8::/32": "documentation",
    "3fff::/20": "documentation",
    "5f00::/16": "SRv6 SIDs",
    "fc00::/7": "unique local (private)",
    "fe80::/10": "link-local",
    "ff00::/8": "multicast",
}
_GLOBAL_V6 = IPNetwork("2000::/3")
_SPECIAL = [(IPNetwork(k), v) for k, v in {**_SPECIAL_V4, **_SPECIAL_V6}.items()]
#: Each special range as (version, first address, last address, range, what): the check
#: of every entry of every list compares integers, not netaddr objects.
_SPAN = [(n.version, n.first, n.last, n, what) for n, what in _SPECIAL]


def check_network(net: IPNetwork, text: str) -> None:
    """Refuse a default route, too-short prefixes and special-purpose space."""
    if net.prefixlen == 0:
        raise ValidationError(f"default route {text!r} in the list")
    version, first, last = net.version, net.first, net.last
    for v, lo, hi, special, what in _SPAN:
        if v == version and first <= hi and lo <= last:
            raise ValidationError(f"{text!r} overlaps {what} space {special}")
    if net.prefixlen < MIN_PREFIX[net.version]:
        raise ValidationError(
            f"{text!r} is shorter than /{MIN_PREFIX[net.version]}: too wide for a CDN range"
        )
    if net.version == 6 and net not in _GLOBAL_V6:
        raise ValidationError(f"{text!r} is outside global unicast 2000::/3")


def parse_family(entries: Sequence[object], version: int, where: str) -> Networks:
    """Validate one family's entries (strings) into canonical networks."""
    if not isinstance(entries, (list, tuple)):
        raise ValidationError(f"{where}: expected a list of CIDRs")
    nets: set[IPNetwork] = set()
    for entry in entries:
        if not isinstance(entry, str):
            raise ValidationError(f"{where}: entry {entry!r} is not a string")
        try:
            net = parse_cidr(entry, version)
            check_network(net, entry)
        except ValidationError as exc:
            raise ValidationError(f"{where}: {exc}") from None
        nets.add(net)
    return frozenset(nets)


def check_lists(ipv4: Networks, ipv6: Networks) -> None:
    """Both families present, bounded size."""
    if not ipv4:
        raise ValidationError("the IPv4 list is empty")
    if not ipv6:
        raise ValidationError("the IPv6 list is empty")
    total = len(ipv4) + len(ipv6)
    if total > MAX_ENTRIES:
        raise ValidationError(f"{total} entries: more than {MAX_ENTRIES}, not a Cloudflare list")


def parse_text_list(body: str, version: int, where: str) -> Networks:
    """One CIDR per line (a missing final newline is fine; blank lines are not entries)."""
    lines = [line.strip() for line in body.splitlines()]
    return parse_family([line for line in lines if line], version, where)


def coverage_lost(old: Iterable[IPNetwork], new: Iterable[IPNetwork]) -> list[IPNetwork]:
    """Entries of ``old`` whose addresses ``new`` no longer fully covers."""
    covered = IPSet(new)
    return [n for n in old if not IPSet([n]).issubset(covered)]
