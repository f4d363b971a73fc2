"""Property: the firewalld backend's pure diff, applied to a model of firewalld, reaches the
desired entries in both layers, never leaves an address that stays allowed uncovered for a
moment (new before old within a family, overlaps bridged), and a second diff is empty."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from cfallow.backends.firewalld.bus import ROOT
from cfallow.backends.firewalld.diff import plan_calls
from cfallow.backends.firewalld.plan import Call
from cfallow.backends.firewalld.state import Seen, SetState, ZoneState, bridge_rule
from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import IPNetwork, IPSet
from support.cfdata import CURRENT, OLD

from cfallow.backend import Context, build
from cfallow.model import canonical, family

EXTRA = {IPNetwork("198.18.0.0/24"), IPNetwork("2001:db8::/48")}
NAMES = {4: "cloudflare-v4", 6: "cloudflare-v6"}
PATHS = {"/p/ipset/4": 4, "/p/ipset/6": 6}
BRIDGE = re.compile(r'source address="([^"]+)"')


def _seen(mode: str, run: frozenset[IPNetwork], perm: frozenset[IPNetwork]) -> Seen:
    def sets(nets: frozenset[IPNetwork]) -> dict[str, SetState]:
        return {
            NAMES[v]: SetState(
                "cfallow", "hash:net", "inet" if v == 4 else "inet6", family(nets, v)
            )
            for v in (4, 6)
        }

    ours = ZoneState(
        "cfallow",
        frozenset({"ipset:cloudflare-v4", "ipset:cloudflare-v6"}),
        frozenset({("443", "tcp")}),
    )
    zones = {"public": ZoneState("Public", services=frozenset({"https"}))}
    if mode == "zone":
        zones["cloudflare"] = ours
    return Seen(
        "RUNNING",
        "public",
        sets(run),
        sets(perm),
        {n: f"/p/ipset/{v}" for v, n in NAMES.items()},
        zones,
        zones,
        {z: f"/p/zone/{z}" for z in zones},
    )


class Model:
    """cfallow's ipsets in both layers, and the bridges (zone sources, priority rules)."""

    def __init__(self, seen: Seen, bridges: frozenset[IPNetwork] = frozenset()) -> None:
        self.run = {v: set(seen.run_sets[n].entries) for v, n in NAMES.items()}
        self.perm = {v: set(seen.perm_sets[n].entries) for v, n in NAMES.items()}
        self.bridges: set[IPNetwork] = set(bridges)

    def covered(self, version: int) -> IPSet:
        nets = self.run[version] | {b for b in self.bridges if b.version == version}
        return IPSet(nets)

    def call(self, c: Call) -> None:
        if c.path != ROOT:
            if c.method == "setEntries":
                self.perm[PATHS[c.path]] = {IPNetwork(e) for e in c.args[0]}
            return
        if c.method in ("addEntry", "removeEntry", "setEntries"):
            version = 4 if c.args[0] == NAMES[4] else 6
            entries = self.run[version]
            if c.method == "setEntries":
                assert not entries or not c.args[1], "a runtime flush of a non-empty set"
                self.run[version] = {IPNetwork(e) for e in c.args[1]}
                return
            net = IPNetwork(c.args[1])
            if c.method == "addEntry":
                assert not any(net.first <= e.last and e.first <= net.last for e in entries), (
                    f"firewalld refuses {net}: it overlaps an entry"
                )
                entries.add(net)
            else:
                entries.remove(net)
            return
        net_text = c.args[1] if c.method.endswith("Source") else _bridge(str(c.args[1]))
        if net_text:
            net = IPNetwork(net_text)
            if c.method.startswith("add"):
                assert net not in self.bridges, f"{c.what}: ZONE_ALREADY_SET / ALREADY_ENABLED"
                self.bridges.add(net)
            else:
                assert net in self.bridges, f"{c.what}: ZONE_NOT_SET / NOT_ENABLED"
                self.bridges.discard(net)


def _bridge(rule: str) -> str:
    m = BRIDGE.search(rule)
    return m.group(1) if m and 'priority="-32768"' in rule else ""


def _with_bridges(seen: Seen, mode: str, bridges: frozenset[IPNetwork]) -> Seen:
    """``seen`` with ``bridges`` left bound in the runtime by a stopped run."""
    if not bridges:
        return seen
    name = "cloudflare" if mode == "zone" else "public"
    zone = seen.run_zones[name]
    if mode == "zone":
        zone = replace(zone, sources=zone.sources | {str(b) for b in bridges})
    else:
        rules = {bridge_rule(str(b), b.version, 'port port="443" protocol="tcp"') for b in bridges}
        zone = replace(zone, rules=zone.rules | rules)
    return replace(seen, run_zones={**seen.run_zones, name: zone})


era = st.sampled_from([CURRENT, OLD])
#: What a run killed inside the 2021 change can leave bound (its bridges for the new ranges).
LEFTOVER = st.frozensets(st.sampled_from(sorted(CURRENT - OLD, key=str)))
subset = st.frozensets(st.sampled_from(sorted(CURRENT | OLD | EXTRA, key=str)))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["zone", "restrict"]), era, subset, era, subset, subset, LEFTOVER)
def test_the_calls_reach_the_desired_entries_and_keep_what_stays_allowed_covered(
    mode: str,
    run_era: frozenset[IPNetwork],
    run_keep: frozenset[IPNetwork],
    perm_era: frozenset[IPNetwork],
    perm_keep: frozenset[IPNetwork],
    wanted: frozenset[IPNetwork],
    leftover: frozenset[IPNetwork],
) -> None:
    backend: Any = build(
        "firewalld", {"bus": "unix:path=/x", "mode": mode, "ports": [443]}, Context()
    )
    run = (run_era | EXTRA) & run_keep  # one era: a hash:net set holds no overlaps
    perm = (perm_era | EXTRA) & perm_keep
    seen = _seen(mode, run, perm)
    if mode == "restrict":  # restrict rules in place already (their own diff is not the point)
        zone = replace(seen.run_zones["public"], rules=backend.want.restrict_rules)
        seen = replace(seen, run_zones={"public": zone}, perm_zones={"public": zone})
    base, seen = seen, _with_bridges(seen, mode, leftover)
    desired = canonical(wanted)
    calls = plan_calls(seen, backend.want, desired)
    assert plan_calls(seen, backend.want, desired) == calls  # pure
    model = Model(seen, leftover)
    stays = {v: IPSet(family(desired, v)) & IPSet(family(run, v)) for v in (4, 6)}
    for c in calls:
        model.call(c)
        for v in (4, 6):
            assert stays[v].issubset(model.covered(v)), f"{c.what}: a kept address uncovered"
    for v in (4, 6):
        assert model.run[v] == set(family(desired, v)), "runtime"
        assert model.perm[v] == set(family(desired, v)), "permanent"
    assert not model.bridges, "a bridge left behind"
    after = _seen(
        mode, frozenset().union(*model.run.values()), frozenset().union(*model.perm.values())
    )
    if mode == "restrict":
        after = replace(after, run_zones=base.run_zones, perm_zones=base.perm_zones)
    assert plan_calls(after, backend.want, desired) == []
