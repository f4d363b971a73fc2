"""What a firewalld reload would change of the admin's own config: read, flattened, compared.

A reload rebuilds the runtime from the permanent config (``FlushAllOnReload``,
the default): a runtime-only change of the admin's (a port added without
``--permanent``, a runtime ipset entry, a direct rule) is lost, and a
permanent change not yet in force takes effect. cfallow reloads only when
neither exists. Both layers are flattened to sets of one-line items (``zone
public ports 8443/tcp``), cfallow's own objects left out: its ipsets, its
zone, its rich rules. With ``FlushAllOnReload=no`` firewalld keeps interface
bindings, direct rules and ipsets over a reload; with NetworkManager on the
bus, firewalld asks it for the interfaces again: those items are left out too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .bus import CONFIG, NAME, PROPS, ROOT, Bus
from .state import OWNER, SETS, Admin, is_our_rule

#: Settings a reload would change without changing what the firewall lets through.
COSMETIC = frozenset({"version", "short", "description"})
_DEFAULTS: tuple[object, ...] = ("", False, "default")
NETWORK_MANAGER = "org.freedesktop.NetworkManager"


def _text(item: Any) -> str:
    if isinstance(item, (list, tuple)):
        return "/".join(_text(i) for i in item)
    return str(item)


def settings_items(kind: str, name: str, settings: Mapping[str, Any]) -> set[str]:
    """One zone's or policy's ``getSettings2``-style dict (variants unwrapped) as items."""
    out: set[str] = set()
    for key, value in settings.items():
        if key in COSMETIC:
            continue
        if isinstance(value, (list, tuple)):
            out.update(
                f"{kind} {name} {key} {_text(v)}"
                for v in value
                if not (key in ("rules_str", "rich_rules") and is_our_rule(str(v)))
            )
        elif value not in _DEFAULTS:
            out.add(f"{kind} {name} {key}={value}")
    return out


def ipset_items(name: str, settings: Iterable[Any]) -> set[str]:
    """One ipset's settings tuple (version, short, description, type, options, entries)."""
    _, _, _, typ, options, entries = settings
    out = {f"ipset {name}", f"ipset {name} type {typ}"}
    out.update(f"ipset {name} option {k}={v}" for k, v in dict(options).items())
    return out | {f"ipset {name} entry {e}" for e in entries}


def direct_items(chains: Iterable[Any], rules: Iterable[Any], passes: Iterable[Any]) -> set[str]:
    """The direct interface's chains, rules and passthroughs."""
    out = {f"direct chain {_text(c)}" for c in chains}
    out |= {f"direct rule {_text(r[:4])} {' '.join(map(str, r[4]))}" for r in rules}
    return out | {f"direct passthrough {p[0]} {' '.join(map(str, p[1]))}" for p in passes}


def keep_over_reload(items: set[str], flush_all: bool, network_manager: bool) -> frozenset[str]:
    """Leave out what firewalld restores by itself after a reload."""
    out = set(items)
    if not flush_all:
        out = {
            i for i in out if not i.startswith(("ipset ", "direct ")) and " interfaces " not in i
        }
    if network_manager:
        out = {i for i in out if not (i.startswith("zone ") and " interfaces " in i)}
    return frozenset(out)


def _unwrap(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v[1] for k, v in raw.items()}


Zones = Mapping[str, Mapping[str, Any]]


def read_zones(bus: Bus) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Every zone's settings, runtime and permanent, and the permanent ones' object paths."""
    run = {z: bus.runtime_zone(z) for z in bus.runtime_zones()}
    paths = {z: bus.config_path("getZoneByName", z) for z in bus.config_names("getZoneNames")}
    return run, {z: bus.config_zone(p) for z, p in paths.items()}, paths


def _zones(run_zones: Zones, perm_zones: Zones) -> tuple[set[str], set[str]]:
    layers = []
    for zones in (run_zones, perm_zones):
        items: set[str] = set()
        for zone, settings in zones.items():
            if settings.get("short") != OWNER:
                items |= settings_items("zone", zone, settings)
        layers.append(items)
    return layers[0], layers[1]


def _policies(bus: Bus) -> tuple[set[str], set[str]]:
    run: set[str] = set()
    for pol in bus.call(ROOT, NAME + ".policy", "getPolicies")[0]:
        (raw,) = bus.call(ROOT, NAME + ".policy", "getPolicySettings", "s", (pol,))
        run |= settings_items("policy", str(pol), _unwrap(raw))
    perm: set[str] = set()
    for pol in bus.config_names("getPolicyNames"):
        path = bus.config_path("getPolicyByName", pol)
        (raw,) = bus.call(path, NAME + ".config.policy", "getSettings")
        perm |= settings_items("policy", pol, _unwrap(raw))
    return run, perm


def _ipsets(bus: Bus) -> tuple[set[str], set[str]]:
    ours = set(SETS.values())
    run: set[str] = set()
    for name in bus.runtime_ipsets():
        settings = bus.runtime_ipset(name)
        if not (name in ours and settings[1] == OWNER):
            run |= ipset_items(name, settings)
    perm: set[str] = set()
    for name in bus.config_names("getIPSetNames"):
        settings = bus.config_ipset(bus.config_path("getIPSetByName", name))
        if not (name in ours and settings[1] == OWNER):
            perm |= ipset_items(name, settings)
    return run, perm


def _direct(bus: Bus) -> tuple[set[str], set[str]]:
    iface = NAME + ".direct"
    chains, rules, passes = (
        bus.call(ROOT, iface, m)[0] for m in ("getAllChains", "getAllRules", "getAllPassthroughs")
    )
    (perm,) = bus.call(CONFIG, NAME + ".config.direct", "getSettings")
    return direct_items(chains, rules, passes), direct_items(*perm)


def read_admin(bus: Bus, zones: tuple[Zones, Zones] | None = None) -> Admin:
    """Both layers of the admin's zones, policies, ipsets and direct rules.

    ``zones``: the runtime and permanent zone settings when the caller has just read them.
    """
    run_zones, perm_zones = zones if zones is not None else read_zones(bus)[:2]
    run, perm = _zones(run_zones, perm_zones)
    for part in (_policies, _ipsets, _direct):
        r, p = part(bus)
        run |= r
        perm |= p
    (flush,) = bus.call(CONFIG, PROPS, "Get", "ss", (NAME + ".config", "FlushAllOnReload"))
    flush_all = str(flush[1]).lower() not in ("no", "false")
    nm = bus.name_has_owner(NETWORK_MANAGER)
    return Admin(keep_over_reload(run, flush_all, nm), keep_over_reload(perm, flush_all, nm))


def describe(admin: Admin, limit: int = 3) -> str:
    """What a reload would change, in a few words (empty when nothing)."""
    parts = []
    for what, items in (("drop runtime-only", admin.lost), ("apply permanent-only", admin.applied)):
        if items:
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            parts.append(f"{what} {', '.join(items[:limit])}{more}")
    return " and ".join(parts)
