"""The ordered calls of one firewalld plan (pure); see firewalld_plan for the rules."""

from __future__ import annotations

from cfallow.errors import BackendError
from cfallow.model import Networks, as_strings

from .admin import describe
from .bus import CONFIG, NAME, ROOT
from .plan import (
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
from .state import SETS, Admin, Seen, ZoneState, zone_settings

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


def _permanent_updates(seen: Seen, want: Want, sets: dict[str, tuple[int, Networks]]) -> list[Call]:
    """One ``setEntries`` per changed ipset; one ``update2`` when cfallow's zone changed shape."""
    calls = []
    for name, (_, nets) in sets.items():
        s = seen.perm_sets.get(name)
        if s is not None and (s.entries != nets or s.unreadable):
            path, args = seen.set_paths[name], (as_strings(nets),)
            ipset = NAME + ".config.ipset"
            calls.append(
                Call(f"permanent {name}", path, ipset, "setEntries", "as", args, entries=True)
            )
    our_zone = want.zone if want.mode == "zone" and sets else ""
    z = seen.perm_zones.get(our_zone) if our_zone else None
    if z is not None and _shape(z) != _want_shape(want):
        settings = (zone_settings(sources_of(want), want.ports, want.services),)
        path = seen.zone_paths[our_zone]
        what = f"zone {our_zone}: sources and ports"
        calls.append(Call(what, path, CONFIG_ZONE, "update2", "a{sv}", settings))
    return calls


def permanent_calls(seen: Seen, want: Want, sets: dict[str, tuple[int, Networks]]) -> list[Call]:
    """Creations, entry and zone updates, rule changes, then deletions (references first)."""
    calls = create_calls(seen, want, sets) + _permanent_updates(seen, want, sets)
    our_zone = want.zone if want.mode == "zone" and sets else ""
    target = target_zone(seen, want)
    removals: list[Call] = []
    for zname, zone in sorted(seen.perm_zones.items()):
        mine = our_rules(zone.rules)
        wanted = _rules_wanted(want, zname, target, bool(sets))
        path = seen.zone_paths[zname]
        for rule in sorted(wanted - mine):
            calls.append(Call(f"{zname}: add rule", path, CONFIG_ZONE, "addRichRule", "s", (rule,)))
        for rule in sorted(mine - wanted):
            what = f"{zname}: remove rule"
            removals.append(Call(what, path, CONFIG_ZONE, "removeRichRule", "s", (rule,)))
        if zone.ours and zname != our_zone:
            removals.append(Call(f"delete zone {zname}", path, CONFIG_ZONE, "remove"))
    for name in SETS.values():
        if name in seen.perm_sets and name not in sets:
            path = seen.set_paths[name]
            removals.append(Call(f"delete ipset {name}", path, NAME + ".config.ipset", "remove"))
    return calls + removals


def _our_zone_runtime(seen: Seen, want: Want, zone: str) -> tuple[list[Call], list[Call]]:
    """cfallow's zone at runtime: what to add first, what to take away last."""
    have = seen.run_zones[zone]
    srcs, ports, svcs = _want_shape(want)
    first = [
        _rt(f"{zone}: +{s}", ZONE, "addSource", "ss", zone, s) for s in sorted(srcs - have.sources)
    ]
    first += [
        _rt(f"{zone}: +{p}/{q}", ZONE, "addPort", "sssi", zone, p, q, 0)
        for p, q in sorted(ports - have.ports)
    ]
    first += [
        _rt(f"{zone}: +{s}", ZONE, "addService", "ssi", zone, s, 0)
        for s in sorted(svcs - have.services)
    ]
    last = [
        _rt(f"{zone}: -{p}/{q}", ZONE, "removePort", "sss", zone, p, q)
        for p, q in sorted(have.ports - ports)
    ]
    last += [
        _rt(f"{zone}: -{s}", ZONE, "removeService", "ss", zone, s)
        for s in sorted(have.services - svcs)
    ]
    last += [
        _rt(f"{zone}: -{s}", ZONE, "removeSource", "ss", zone, s)
        for s in sorted(have.sources - srcs)
    ]
    return first, last


def runtime_calls(seen: Seen, want: Want, sets: dict[str, tuple[int, Networks]]) -> list[Call]:
    """Additions, gapless entry changes, restrict rules, then what goes away."""
    target = target_zone(seen, want)
    our_zone = want.zone if want.mode == "zone" and sets else ""
    first, last = _our_zone_runtime(seen, want, our_zone) if our_zone else ([], [])
    bridge = bridge_for(want, target, _present(seen, want, target, our_zone))
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
    # a leftover bridge is removed by its own bridge-off call above: not a second time
    undo = ("removeSource", "removeRichRule")
    done = {(c.method, c.args) for c in first if c.method in undo}
    return first + [
        c for c in last + removals if c.method not in undo or (c.method, c.args) not in done
    ]


def _present(seen: Seen, want: Want, target: str, our_zone: str) -> frozenset[str]:
    """What a bridge may already be: our zone's runtime sources, or the target's rules."""
    zone = seen.run_zones.get(our_zone if want.mode == "zone" else target)
    if zone is None:
        return frozenset()
    return zone.sources if want.mode == "zone" else zone.rules


def check_target(seen: Seen, target: str) -> None:
    """Restrict mode: the zone must exist and take traffic, else its rules restrict nothing."""
    if target not in seen.run_zones or target not in seen.perm_zones:
        raise BackendError(f"firewalld: zone {target} (to restrict) does not exist")
    zone = seen.run_zones[target]
    if target != seen.default_zone and not zone.interfaces and not zone.sources:
        raise BackendError(
            f"firewalld: zone {target} has no interface or source and is not the default zone: "
            "restricting it would change nothing (set zone to the zone of the public interface)"
        )


_SERVICE_PORT = {"https": "443", "http": "80"}


def unrestricted(seen: Seen, want: Want) -> list[str]:
    """Restrict mode: other zones taking traffic that open a configured port to everyone."""
    target = target_zone(seen, want)
    ports = {str(p) for p in want.ports}
    notes = []
    for name, zone in sorted(seen.run_zones.items()):
        active = zone.interfaces or zone.sources or name == seen.default_zone
        if name == target or zone.ours or not active:
            continue
        opened = {p for p, q in zone.ports if q == "tcp"} | {
            _SERVICE_PORT.get(s, "") for s in zone.services
        }
        if ports & opened or set(want.services) & zone.services:
            notes.append(f"zone {name} also opens a configured port to everyone (not restricted)")
    return notes


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
    if want.mode == "restrict" and sets:
        check_target(seen, target)
    missing = [n for n in sets if n not in seen.run_sets]
    if want.mode == "zone" and sets and want.zone not in seen.run_zones:
        missing.append(want.zone)
    perm = permanent_calls(seen, want, sets)
    if missing:
        if not seen.admin.safe:
            raise BackendError(refusal(seen.admin, missing))
        return [*perm, reload_call(f"to load {', '.join(missing)}")]
    calls = runtime_calls(seen, want, sets) + perm
    left = leftovers(seen, want, sets)
    if left and seen.admin.safe:
        calls.append(reload_call(f"to drop the emptied {', '.join(left)}", optional=True))
    return calls


def reload_call(why: str, optional: bool = False) -> Call:
    """One reload of firewalld; ``apply`` checks again right before it that it loses nothing."""
    return Call(f"reload firewalld ({why})", ROOT, NAME, "reload", optional=optional)


def refusal(admin: Admin, missing: list[str]) -> str:
    """The one line of a first run that would need a reload that changes the admin's config."""
    return (
        f"firewalld: creating {', '.join(missing)} needs a reload, and a reload would "
        f"{describe(admin)}: nothing changed; keep runtime changes with "
        "firewall-cmd --runtime-to-permanent, or reload yourself (firewall-cmd --reload), "
        "then run cfallow again"
    )


def leftovers(seen: Seen, want: Want, sets: dict[str, tuple[int, Networks]]) -> list[str]:
    """cfallow's objects this plan deletes that firewalld keeps, emptied, in the runtime."""
    our_zone = want.zone if want.mode == "zone" and sets else ""
    zones = [
        f"zone {z}"
        for z, s in sorted(seen.run_zones.items())
        if s.ours and z != our_zone and z in seen.perm_zones
    ]
    ipsets = [
        f"ipset {n}"
        for n, s in sorted(seen.run_sets.items())
        if s.ours and n not in sets and n in seen.perm_sets
    ]
    return zones + ipsets


def leftover_note(seen: Seen, want: Want, desired: Networks | None) -> str:
    """The note of a plan that leaves emptied objects in the runtime (a reload not safe)."""
    sets = wanted_sets(want, desired)
    left = leftovers(seen, want, sets)
    if not left or seen.admin.safe:
        return ""
    return (
        f"not reloading (it would {describe(seen.admin)}): the emptied {', '.join(left)} "
        "stay in the runtime, matching nothing, until the next firewall-cmd --reload"
    )


def emptied_zones(seen: Seen, want: Want, desired: Networks | None) -> list[tuple[str, str]]:
    """The admin's zones (name, config path) this plan takes all of cfallow's rules out of."""
    sets = wanted_sets(want, desired)
    target = target_zone(seen, want)
    return [
        (name, seen.zone_paths[name])
        for name, zone in sorted(seen.perm_zones.items())
        if not zone.ours
        and our_rules(zone.rules)
        and not _rules_wanted(want, name, target, bool(sets))
    ]


__all__ = ["CONFIG", "emptied_zones", "leftover_note", "plan_calls", "target_zone", "unrestricted"]
