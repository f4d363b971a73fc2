"""The firewalld backend's pure diff: from what was read to an ordered list of D-Bus calls.

Order of a sync without structural change (no reload): runtime first (zone
sources/ports added, entries changed gaplessly, restrict rules added, then
what goes away), permanent after, so a refused runtime change leaves the
permanent config as it was. When an ipset or zone cfallow needs is missing at
runtime (first run), firewalld can only create it through a reload: the
permanent objects are written with their entries, then one reload.

Runtime ``setEntries`` flushes the set and refills it in two nftables
transactions (firewalld 1.3 ``fw_ipset.set_entries``); measured here it
refused 283 of 702 connections over 50 calls. So a runtime change of a
non-empty set is made entry by entry (each one transaction), new before old;
where a new entry overlaps an old one (104.16.0.0/12 -> /13 + /14), firewalld
refuses the overlap, so the new range is bridged by a short-lived source (zone
mode) or a priority accept rule (restrict mode) while the old one is swapped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Union

from netaddr import IPNetwork

from cfallow.errors import BackendError
from cfallow.model import Networks, as_strings, by_family

from .bus import NAME, ROOT
from .state import (
    FAMILY,
    SET_TYPE,
    SETS,
    Seen,
    SetState,
    bridge_rule,
    is_our_rule,
    zone_settings,
)

ZONE = NAME + ".zone"
IPSET = NAME + ".ipset"


@dataclass(frozen=True)
class Call:
    """One D-Bus call ``apply`` makes; ``creates`` names permanent objects it adds."""

    what: str
    path: str
    iface: str
    method: str
    sig: str = ""
    args: tuple[Any, ...] = ()
    creates: tuple[tuple[str, str], ...] = ()
    entries: bool = False  # an entry change (not drift)
    optional: bool = False  # a reload that is skipped if it would change the admin's config


@dataclass(frozen=True)
class Expect:
    """``apply`` first checks the target still is what the plan was made from."""

    seen: Seen


@dataclass(frozen=True)
class Tidy:
    """Delete firewalld's ``.old`` backups of the files of objects cfallow deleted."""

    paths: tuple[str, ...]


@dataclass(frozen=True)
class Defaults:
    """Put a built-in zone back to firewalld's defaults if its /etc copy equals them."""

    zone: str
    path: str


Step = Union[Expect, Call, Defaults, Tidy]


@dataclass(frozen=True)
class Want:
    """The configured shape: mode, zone, the rule elements (ports or services), families."""

    mode: str
    zone: str
    ports: tuple[Any, ...]
    services: tuple[str, ...]
    elements: tuple[str, ...]
    versions: tuple[int, ...]
    restrict_rules: frozenset[str] = field(default_factory=frozenset)


def _rt(what: str, iface: str, method: str, sig: str, *args: Any, entries: bool = False) -> Call:
    return Call(what, ROOT, iface, method, sig, tuple(args), entries=entries)


def _overlaps(a: IPNetwork, b: IPNetwork) -> bool:
    return bool(a.first <= b.last and b.first <= a.last)


def check_owned(seen: Seen, want: Want) -> None:
    """Refuse objects with cfallow's names that are not cfallow's, or of the wrong kind."""
    for version, name in SETS.items():
        for layer in (seen.run_sets, seen.perm_sets):
            s = layer.get(name)
            if s is None:
                continue
            if not s.ours:
                raise BackendError(
                    f"firewalld: ipset {name} exists and is not cfallow's; rename it"
                )
            if s.type != SET_TYPE or s.family != FAMILY[version]:
                raise BackendError(
                    f"firewalld: ipset {name} is {s.type} family {s.family}, not {SET_TYPE} "
                    f"{FAMILY[version]}; delete it (firewall-cmd --permanent --delete-ipset={name})"
                )
    if want.mode == "zone":
        for zones in (seen.run_zones, seen.perm_zones):
            z = zones.get(want.zone)
            if z is not None and not z.ours:
                raise BackendError(f"firewalld: zone {want.zone} exists and is not cfallow's")


def runtime_entries(
    name: str, version: int, now: SetState, want: Networks, bridge: Any
) -> list[Call]:
    """Gapless runtime change of one ipset (see the module docstring)."""
    if any(n.version != version for n in want):
        raise BackendError(f"firewalld: refusing an entry of the wrong family for {name}")
    if now.entries == want and not now.unreadable:
        return []
    if not now.entries or not want or now.unreadable:
        return [
            _rt(f"set {name}", IPSET, "setEntries", "sas", name, as_strings(want), entries=True)
        ]
    add, rem = want - now.entries, now.entries - want
    over = {a for a in add if any(_overlaps(a, r) for r in rem)}
    calls: list[Call] = []
    for net in sorted(over):
        calls += bridge(str(net), version, True)
    for net in as_strings(add - over):
        calls.append(_rt(f"+{net}", IPSET, "addEntry", "ss", name, net, entries=True))
    for net in as_strings(rem):
        calls.append(_rt(f"-{net}", IPSET, "removeEntry", "ss", name, net, entries=True))
    for net in as_strings(over):
        calls.append(_rt(f"+{net}", IPSET, "addEntry", "ss", name, net, entries=True))
    for net in sorted(over):
        calls += bridge(str(net), version, False)
    return calls


def bridge_for(want: Want, target: str, present: frozenset[str] = frozenset()) -> Any:
    """The bridge factory of the mode: a zone source, or priority accept rules.

    ``present``: the runtime sources of cfallow's zone (zone mode) or rules of the
    target zone (restrict mode). A bridge already there was left by a run that
    was stopped mid-change: it is taken as this plan's own (not added twice,
    which firewalld refuses with ZONE_ALREADY_SET / ALREADY_ENABLED), and removed.
    """

    def zone(net: str, version: int, on: bool) -> list[Call]:
        if on and net in present:
            return []
        method = "addSource" if on else "removeSource"
        return [_rt(f"bridge {net}", ZONE, method, "ss", want.zone, net, entries=True)]

    def rules(net: str, version: int, on: bool) -> list[Call]:
        out = []
        for elem in want.elements:
            rule = bridge_rule(net, version, elem)
            if on and rule in present:
                continue
            if on:
                out.append(_rt(f"bridge {net}", ZONE, "addRichRule", "ssi", target, rule, 0))
            else:
                out.append(_rt(f"bridge {net}", ZONE, "removeRichRule", "ss", target, rule))
        return [Call(c.what, c.path, c.iface, c.method, c.sig, c.args, entries=True) for c in out]

    return zone if want.mode == "zone" else rules


def wanted_sets(want: Want, desired: Networks | None) -> dict[str, tuple[int, Networks]]:
    """cfallow's ipsets this plan keeps, with their wanted entries."""
    if desired is None:
        return {}
    split = by_family(desired)
    return {SETS[v]: (v, split[v]) for v in want.versions}


def sources_of(want: Want) -> frozenset[str]:
    return frozenset(f"ipset:{SETS[v]}" for v in want.versions)


def create_calls(seen: Seen, want: Want, sets: dict[str, tuple[int, Networks]]) -> list[Call]:
    """Permanent creation of the ipsets and the zone that do not exist yet."""
    calls: list[Call] = []
    for name, (version, nets) in sets.items():
        if name not in seen.perm_sets:
            settings = (
                "",
                "cfallow",
                f"Cloudflare's IPv{version} ranges (managed by cfallow; do not edit)",
                SET_TYPE,
                {"family": FAMILY[version]},
                as_strings(nets),
            )
            calls.append(
                Call(
                    f"create ipset {name}",
                    ROOT + "/config",
                    NAME + ".config",
                    "addIPSet",
                    "s(ssssa{ss}as)",
                    (name, settings),
                    creates=(("ipset", name),),
                )
            )
    if want.mode == "zone" and sets and want.zone not in seen.perm_zones:
        settings2 = zone_settings(sources_of(want), want.ports, want.services)
        calls.append(
            Call(
                f"create zone {want.zone}",
                ROOT + "/config",
                NAME + ".config",
                "addZone2",
                "sa{sv}",
                (want.zone, settings2),
                creates=(("zone", want.zone),),
            )
        )
    return calls


def our_rules(rules: Iterable[str]) -> frozenset[str]:
    return frozenset(r for r in rules if is_our_rule(r))
