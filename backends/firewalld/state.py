"""What the firewalld backend reads, and the rich rules and zone settings it wants (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cfallow.errors import CfallowError
from cfallow.model import Networks, parse_cidr
from cfallow.section import PortRange

OWNER = "cfallow"  # the short name of every ipset and zone cfallow creates
SETS = {4: "cloudflare-v4", 6: "cloudflare-v6"}
FAMILY = {4: "inet", 6: "inet6"}
RULE_FAMILY = {4: "ipv4", 6: "ipv6"}
SET_TYPE = "hash:net"
BRIDGE_PRIORITY = -32768


@dataclass(frozen=True)
class SetState:
    """One layer (runtime or permanent) of one ipset."""

    short: str
    type: str
    family: str
    entries: Networks
    unreadable: tuple[str, ...] = ()

    @property
    def ours(self) -> bool:
        return self.short == OWNER


@dataclass(frozen=True)
class ZoneState:
    """One layer (runtime or permanent) of one zone: what cfallow looks at."""

    short: str
    sources: frozenset[str] = frozenset()
    ports: frozenset[tuple[str, str]] = frozenset()
    services: frozenset[str] = frozenset()
    rules: frozenset[str] = frozenset()
    interfaces: frozenset[str] = frozenset()

    @property
    def ours(self) -> bool:
        return self.short == OWNER


@dataclass(frozen=True)
class Admin:
    """The admin's config as items, each layer; ``lost``/``applied``: what a reload changes."""

    runtime: frozenset[str] = field(default_factory=frozenset)
    permanent: frozenset[str] = field(default_factory=frozenset)

    @property
    def lost(self) -> list[str]:
        """Runtime-only items (a reload drops them)."""
        return sorted(self.runtime - self.permanent)

    @property
    def applied(self) -> list[str]:
        """Permanent-only items (a reload puts them in force)."""
        return sorted(self.permanent - self.runtime)

    @property
    def safe(self) -> bool:
        """A reload changes nothing of the admin's."""
        return self.runtime == self.permanent


@dataclass(frozen=True)
class Seen:
    """Everything a plan needs: firewalld's state, ipsets and zones, both layers.

    ``*_paths`` map permanent names to their D-Bus config object paths; ``admin``: the
    admin's own config, both layers (what a reload would change).
    """

    state: str
    default_zone: str
    run_sets: Mapping[str, SetState] = field(default_factory=dict)
    perm_sets: Mapping[str, SetState] = field(default_factory=dict)
    set_paths: Mapping[str, str] = field(default_factory=dict)
    run_zones: Mapping[str, ZoneState] = field(default_factory=dict)
    perm_zones: Mapping[str, ZoneState] = field(default_factory=dict)
    zone_paths: Mapping[str, str] = field(default_factory=dict)
    admin: Admin = field(default_factory=Admin)


def set_state(
    settings: tuple[str, str, str, str, dict[str, str], list[str]], version: int
) -> SetState:
    """An ipset's settings as read, entries parsed (``a.b.c.d`` counts as ``/32``)."""
    _, short, _, typ, options, raw = settings
    good: set[Any] = set()
    bad: list[str] = []
    for entry in raw:
        text = entry if "/" in entry else f"{entry}/{32 if version == 4 else 128}"
        try:
            good.add(parse_cidr(text, version))
        except CfallowError:
            bad.append(entry)
    return SetState(short, typ, options.get("family", "inet"), frozenset(good), tuple(bad))


def zone_state(settings: Mapping[str, Any]) -> ZoneState:
    """A zone's ``getSettings2`` dict (variants unwrapped) as a :class:`ZoneState`."""
    return ZoneState(
        short=str(settings.get("short", "")),
        sources=frozenset(str(s) for s in settings.get("sources", [])),
        ports=frozenset((str(p), str(q)) for p, q in settings.get("ports", [])),
        services=frozenset(str(s) for s in settings.get("services", [])),
        rules=frozenset(str(r) for r in settings.get("rules_str", [])),
        interfaces=frozenset(str(i) for i in settings.get("interfaces", [])),
    )


def element(ports: Iterable[PortRange], services: Iterable[str]) -> list[str]:
    """The rich-rule elements for the configured ports or services."""
    out = [f'port port="{p}" protocol="tcp"' for p in ports]
    return out + [f'service name="{s}"' for s in services]


def restrict_rules(elements: Iterable[str], versions: Iterable[int]) -> frozenset[str]:
    """Restrict mode: drop the ports from every source not in cfallow's ipset of that family."""
    return frozenset(
        f'rule family="{RULE_FAMILY[v]}" source NOT ipset="{SETS[v]}" {e} drop'
        for v in versions
        for e in elements
    )


def bridge_rule(net: str, version: int, elem: str) -> str:
    """A short-lived accept for ``net`` evaluated before every other rule of the zone."""
    return (
        f'rule priority="{BRIDGE_PRIORITY}" family="{RULE_FAMILY[version]}" '
        f'source address="{net}" {elem} accept'
    )


_BRIDGE = re.compile(
    rf'^rule priority="{BRIDGE_PRIORITY}" family="ipv[46]" source address="[0-9a-fA-F:./]+" '
    r'(port port="[0-9-]+" protocol="tcp"|service name="[\w-]+") accept$'
)


def is_our_rule(rule: str) -> bool:
    """A rich rule that references one of cfallow's ipsets, or a bridge left by a stopped run."""
    return any(f'ipset="{name}"' in rule for name in SETS.values()) or bool(_BRIDGE.match(rule))


def zone_settings(
    sources: Iterable[str], ports: Iterable[PortRange], services: Iterable[str]
) -> dict[str, tuple[str, Any]]:
    """``addZone2`` / ``update2`` settings of cfallow's zone (D-Bus variants)."""
    return {
        "version": ("s", ""),
        "short": ("s", OWNER),
        "description": ("s", "Cloudflare's published ranges (managed by cfallow; do not edit)"),
        "target": ("s", "default"),
        "sources": ("as", sorted(sources)),
        "ports": ("a(ss)", [(str(p), "tcp") for p in ports]),
        "services": ("as", sorted(services)),
    }
