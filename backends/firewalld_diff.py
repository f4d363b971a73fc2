"""The ordered calls of one firewalld plan (pure); see firewalld_plan for the rules."""

from __future__ import annotations

from cfallow.errors import BackendError
from cfallow.model import Networks, as_strings

from .firewalld_bus import CONFIG, NAME, ROOT
from .firewalld_plan import (
    IPSET,
    ZONE,
    Call,
    Want,
    bridge_for,
    check_owned,
    create_calls,
    our_rules,
    runtime_entries,
    sources_of,
    wanted_sets,
)
from .firewalld_state import SETS, Seen, ZoneState, zone_settings

CONFIG_ZONE = NAME + ".config.zone"


def target_zone(seen: Seen, want: Want) -> str:
    """Restrict mode: the admin's zone that gets the rules (configured, else the default)."""
    return want.zone or seen.default_zone


def _rt(what: str, iface: str, method: str, sig: str, *args: object) -> Call:
    return Call(what, ROOT, iface, method, sig, tuple(args))


def _shape(z: ZoneState) -> tuple[frozenset[str], frozenset[tuple[str, str]], frozenset[str]]:
    return z.sources, z.ports, z.services


def _want_shape(want: Want) -> tuple[frozenset[str], frozenset[tuple[str, str]], frozenset[str]]:
    ports = frozenset((str(p), "tcp") for p in want.ports)
    return sources_of(want), ports, frozenset(want.services)


def _rules_wanted(want: Want, zone: str, target: str, keep: bool) -> frozenset[str]:
    return (
        want.restrict_rules if keep and want.mode == "restrict" and zone == target else frozenset()
    )


def permanent_calls(seen: Seen, want: Want, sets: dict[str, tuple[int, Networks]]) -> list[Call]:
    """Creations, entry and zone updates, rule changes, then deletions (references first)."""
    calls = create_calls(seen, want, sets)
    for name, (_, nets) in sets.items():
        s = seen.perm_sets.get(name)
        if s is not None and (s.entries != nets or s.unreadable):
            path = seen.set_paths[name]
            args = (as_strings(nets),)
            calls.append(
                Call(
                    f"permanent {name}",
                    path,
                    NAME + ".config.ipset",
                    "setEntries",
                    "as",
                    args,
                    entries=True,
                )
            )
    our_zone = want.zone if want.mode == "zone" and sets else ""
    z = seen.perm_zones.get(our_zone) if our_zone else None
    if z is not None and _shape(z) != _want_shape(want):
        settings = zone_settings(sources_of(want), want.ports, want.services)
        calls.append(
            Call(
                f"zone {our_zone}: sources and ports",
                seen.zone_paths[our_zone],
                CONFIG_ZONE,
                "update2",
                "a{sv}",
                (settings,),
            )
        )
    target = target_zone(seen, want)
    removals: list[Call] = []
    for zname, zone in sorted(seen.perm_zones.items()):
        mine = our_rules(zone.rules)
        wanted = _rules_wanted(want, zname, target, bool(sets))
        path = seen.zone_paths[zname]
        for rule in sorted(wanted - mine):
            calls.append(Call(f"{zname}: add rule", path, CONFIG_ZONE, "addRichRule", "s", (rule,)))
        for rule in sorted(mine - wanted):
            removals.append(
                Call(f"{zname}: remove rule", path, CONFIG_ZONE, "removeRichRule", "s", (rule,))
            )
        if zone.ours and zname != our_zone:
            removals.append(Call(f"delete zone {zname}", path, CONFIG_ZONE, "remove"))
    for name in SETS.values():
        if name in seen.perm_sets and name not in sets:
            removals.append(
                Call(f"delete ipset {name}", seen.set_paths[name], NAME + ".config.ipset", "remove")
            )
    return calls + removals


def runtime_calls(seen: Seen, want: Want, sets: dict[str, tuple[int, Networks]]) -> list[Call]:
    """Additions, gapless entry changes, restrict rules, then what goes away."""
    target = target_zone(seen, want)
    our_zone = want.zone if want.mode == "zone" and sets else ""
    first: list[Call] = []
    last: list[Call] = []
    if our_zone:
        have = seen.run_zones[our_zone]
        srcs, ports, svcs = _want_shape(want)
        first += [
            _rt(f"{our_zone}: +{s}", ZONE, "addSource", "ss", our_zone, s)
            for s in sorted(srcs - have.sources)
        ]
        first += [
            _rt(f"{our_zone}: +{p}/{q}", ZONE, "addPort", "sssi", our_zone, p, q, 0)
            for p, q in sorted(ports - have.ports)
        ]
        first += [
            _rt(f"{our_zone}: +{s}", ZONE, "addService", "ssi", our_zone, s, 0)
            for s in sorted(svcs - have.services)
        ]
        last += [
            _rt(f"{our_zone}: -{p}/{q}", ZONE, "removePort", "sss", our_zone, p, q)
            for p, q in sorted(have.ports - ports)
        ]
        last += [
            _rt(f"{our_zone}: -{s}", ZONE, "removeService", "ss", our_zone, s)
            for s in sorted(have.services - svcs)
        ]
        last += [
            _rt(f"{our_zone}: -{s}", ZONE, "removeSource", "ss", our_zone, s)
            for s in sorted(have.sources - srcs)
        ]
    bridge = bridge_for(want, target)
    for name, (version, nets) in sets.items():
        first += runtime_entries(name, version, seen.run_sets[name], nets, bridge)
    removals: list[Call] = []
    for zname, zone in sorted(seen.run_zones.items()):
        mine = our_rules(zone.rules)
        wanted = _rules_wanted(want, zname, target, bool(sets))
        first += [
            _rt(f"{zname}: add rule", ZONE, "addRichRule", "ssi", zname, r, 0)
            for r in sorted(wanted - mine)
        ]
        removals += [
            _rt(f"{zname}: remove rule", ZONE, "removeRichRule", "ss", zname, r)
            for r in sorted(mine - wanted)
        ]
        if zone.ours and zname != our_zone:
            removals += [
                _rt(f"{zname}: -{s}", ZONE, "removeSource", "ss", zname, s)
                for s in sorted(zone.sources)
            ]
    for name in SETS.values():
        s = seen.run_sets.get(name)
        if s is not None and name not in sets and (s.entries or s.unreadable):
            removals.append(_rt(f"empty {name}", IPSET, "setEntries", "sas", name, []))
    return first + last + removals


def plan_calls(seen: Seen, want: Want, desired: Networks | None) -> list[Call]:
    """Every call of the plan, in order; empty when the target already matches."""
    if seen.state != "RUNNING":
        raise BackendError(
            f"firewalld is in state {seen.state}, not RUNNING: nothing changed "
            "(see its log; firewall-cmd --check-config)"
        )
    check_owned(seen, want)
    sets = wanted_sets(want, desired)
    target = target_zone(seen, want)
    if (
        want.mode == "restrict"
        and sets
        and (target not in seen.run_zones or target not in seen.perm_zones)
    ):
        raise BackendError(f"firewalld: zone {target} (to restrict) does not exist")
    missing = [n for n in sets if n not in seen.run_sets]
    if want.mode == "zone" and sets and want.zone not in seen.run_zones:
        missing.append(want.zone)
    perm = permanent_calls(seen, want, sets)
    if missing:
        return [
            *perm,
            Call(f"reload firewalld (to load {', '.join(missing)})", ROOT, NAME, "reload"),
        ]
    return runtime_calls(seen, want, sets) + perm


__all__ = ["CONFIG", "plan_calls", "target_zone"]
