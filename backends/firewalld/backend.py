"""firewalld backend (RHEL, Rocky, Alma, Fedora, openSUSE): Cloudflare ipsets bound to a zone.

``[backends.firewalld]``::

    mode = "zone"          # zone: cfallow's own zone, sources = its ipsets, allows only the ports
                           # restrict: drop the ports in the admin's zone for sources not in them
    zone = "cloudflare"    # zone mode: cfallow's zone; restrict mode: the admin's zone
                           # (default there: firewalld's default zone)
    ports = [80, 443]      # or services = ["http", "https"]
    ipv6 = true
    bus = ""               # D-Bus address of the system bus (default: DBUS_SYSTEM_BUS_ADDRESS
                           # from the Runner's env or the environment, else the system bus)
    config_dir = "/etc/firewalld"   # where firewalld keeps .old backups of cfallow's files

cfallow owns the ipsets ``cloudflare-v4`` / ``cloudflare-v6`` (hash:net, family
inet / inet6) and, in zone mode, its zone; each has the short name
``cfallow``. In restrict mode it owns the rich rules that reference its
ipsets. It talks to firewalld over D-Bus (jeepney), runtime and permanent,
never reloading for an entry change; after every change it requires
firewalld's state to be RUNNING.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from pathlib import Path

from cfallow.backend import Backend, Context, Promise, probe_ports
from cfallow.errors import BackendError, ConfigError, TargetMoved
from cfallow.model import Networks, Plan, by_family, make_plan
from cfallow.section import Section, parse_ports

from .admin import describe, read_admin, read_zones
from .builtin import restore_builtin
from .bus import Bus, bus_address
from .diff import emptied_zones, leftover_note, plan_calls, unrestricted
from .plan import Call, Defaults, Expect, Step, Tidy, Want
from .state import SETS, Seen, element, restrict_rules, set_state, zone_state

#: How long firewalld may take to come back from a reload before it counts as failed.
RELOAD_WAIT = 30.0
#: firewalld service names of the web ports (what verify probes for ``services``).
SERVICE_PORTS = {"http": (80,), "https": (443,), "http3": (443,)}
SAFE = "checked to lose nothing (the runtime holds nothing the permanent config lacks)"


class FirewalldBackend(Backend[Seen, Step]):
    """Keeps cfallow's firewalld ipsets (and zone or rules) in step, runtime and permanent."""

    name = "firewalld"

    def __init__(self, section: Section, ctx: Context) -> None:
        super().__init__(section, ctx)
        mode = section.get_choice("mode", "zone", ("zone", "restrict"))
        zone = section.get_str("zone", "cloudflare" if mode == "zone" else "")
        services = tuple(section.get_strings("services", ()))
        has_ports = "ports" in section.data
        if services and has_ports:
            raise ConfigError(f"[{section.where}] set ports or services, not both")
        ports = () if services else parse_ports(section, default=(80, 443))
        for svc in services:
            if not svc.replace("-", "").replace("_", "").isalnum():
                raise ConfigError(f"[{section.where}] services: bad service name {svc!r}")
        versions = (4, 6) if section.get_bool("ipv6", True) else (4,)
        elems = tuple(element(ports, services))
        self.want = Want(
            mode, zone, ports, services, elems, versions, restrict_rules(elems, versions)
        )
        self.address = bus_address(section.get_str("bus", ""), ctx.runner.env)
        self.config_dir = Path(section.get_str("config_dir", "/etc/firewalld"))

    def write_paths(self) -> tuple[Path, ...]:
        """firewalld's .old backups cfallow deletes (firewalld writes its files itself)."""
        return (self.config_dir / "ipsets", self.config_dir / "zones")

    def promise(self) -> Promise:
        """Restrict: only Cloudflare gets in (on the zone's ports); zone: Cloudflare does."""
        w = self.want
        ports = {*probe_ports(w.ports), *(p for s in w.services for p in SERVICE_PORTS.get(s, ()))}
        mode = "lockdown" if w.mode == "restrict" else "allow"
        return Promise(mode, "tcp", tuple(sorted(ports)), w.versions)

    def _bus(self) -> Bus:
        return Bus(self.address)

    def check(self) -> None:
        with self._bus() as bus:
            state = bus.state()
        if state != "RUNNING":
            raise BackendError(f"firewalld is in state {state}, not RUNNING: nothing changed")

    def read(self) -> Seen:
        with self._bus() as bus:
            return read_all(bus)

    def diff(self, observed: Seen, desired: Networks | None) -> Plan[Step]:
        calls = plan_calls(observed, self.want, desired)
        current = frozenset().union(
            *(
                s.entries
                for layer in (observed.run_sets, observed.perm_sets)
                for n, s in layer.items()
                if n in SETS.values()
            )
        )
        split = by_family(desired or frozenset())
        wanted = (
            frozenset().union(*(split[v] for v in self.want.versions)) if desired else frozenset()
        )
        drift = [c.what for c in calls if not c.entries]
        notes = []
        if self.want.mode == "restrict" and desired:
            notes = unrestricted(observed, self.want)
            if 6 not in self.want.versions:
                notes.append("ipv6 = false: IPv6 to the ports stays open to everyone")
        notes += [
            f"firewalld reloads once {c.what[len('reload firewalld ') :]}: {SAFE}"
            for c in calls
            if c.method == "reload"
        ]
        left = leftover_note(observed, self.want, desired)
        notes += [left] if left else []
        plan: Plan[Step] = make_plan(self.name, wanted, current, drift=drift, notes=notes)
        if calls and not plan.changed:
            plan = replace(plan, drift=("runtime and permanent entries differ",))
        if not plan.changed:
            return plan
        return replace(plan, steps=self._steps(observed, calls, desired))

    def _steps(self, seen: Seen, calls: list[Call], desired: Networks | None) -> tuple[Step, ...]:
        """Expect, the calls, built-in zones back to their defaults, the reload, the tidy-up."""
        backups = tuple(
            str(
                self.config_dir
                / ("zones" if c.iface.endswith("zone") else "ipsets")
                / f"{n}.xml.old"
            )
            for c in calls
            if c.method == "remove"
            for n in [_object_name(seen, c.path)]
        )
        tidy = (Tidy(backups),) if backups else ()
        defaults = [Defaults(z, p) for z, p in emptied_zones(seen, self.want, desired)]
        body = [c for c in calls if c.method != "reload"]
        reload = [c for c in calls if c.method == "reload"]
        return (Expect(seen), *body, *defaults, *reload, *tidy)

    def apply(self, plan: Plan[Step]) -> None:
        if not plan.steps:
            return
        with self._bus() as bus:
            created: list[tuple[str, str]] = []
            for step in plan.steps:
                if isinstance(step, Tidy):
                    for path in step.paths:
                        with contextlib.suppress(FileNotFoundError):
                            Path(path).unlink()
                    continue
                if isinstance(step, Defaults):
                    restore_builtin(bus, step.path)
                    continue
                if isinstance(step, Expect):
                    if read_all(bus) != step.seen:
                        raise TargetMoved("firewalld: the config changed since it was read")
                    continue
                try:
                    self._call(bus, step)
                except BackendError as exc:
                    if created:
                        undo(bus, created, self.config_dir)
                    raise BackendError(f"firewalld: {step.what}: {exc}") from exc
                created += step.creates

    def _call(self, bus: Bus, step: Call) -> None:
        if step.method == "reload":
            admin = read_admin(bus)  # again: the admin may have changed something since the read
            if not admin.safe:
                if step.optional:
                    return
                raise BackendError(f"a reload would now {describe(admin)}")
        bus.write(step.path, step.iface, step.method, step.sig, step.args)
        state = wait_state(bus) if step.method == "reload" else bus.state()
        if state != "RUNNING":
            raise BackendError(f"firewalld is {state} after {step.method}")


def _object_name(seen: Seen, path: str) -> str:
    for mapping in (seen.set_paths, seen.zone_paths):
        for name, p in mapping.items():
            if p == path:
                return name
    raise BackendError(f"firewalld: no object at {path}")  # pragma: no cover - paths come from seen


def wait_state(bus: Bus, limit: float = RELOAD_WAIT) -> str:
    """firewalld's state once a reload has settled (``INIT`` while it runs)."""
    deadline = time.monotonic() + limit
    state = bus.state()
    while state == "INIT" and time.monotonic() < deadline:
        time.sleep(0.05)
        state = bus.state()
    return state


def undo(bus: Bus, created: list[tuple[str, str]], config_dir: Path) -> None:
    """Delete the permanent objects this apply created (zones before ipsets), reload if needed.

    Leaves the previous permanent config in place after a refused change.
    """
    for kind in ("zone", "ipset"):
        for k, name in created:
            if k != kind:
                continue
            path = bus.config_zone_path(name) if kind == "zone" else bus.config_ipset_path(name)
            if path:
                bus.config_remove(path, kind)
            with contextlib.suppress(FileNotFoundError):
                (config_dir / f"{kind}s" / f"{name}.xml.old").unlink()
    if bus.state() != "RUNNING":
        bus.reload()
        wait_state(bus)


def read_all(bus: Bus) -> Seen:
    """firewalld's state, cfallow's ipsets, and every zone (runtime and permanent)."""
    state = bus.state()
    run_names = set(bus.runtime_ipsets())
    perm_names = set(bus.config_names("getIPSetNames"))
    run_sets, perm_sets, set_paths = {}, {}, {}
    for version, name in SETS.items():
        if name in run_names:
            run_sets[name] = set_state(bus.runtime_ipset(name), version)
        if name in perm_names:
            set_paths[name] = path = bus.config_path("getIPSetByName", name)
            perm_sets[name] = set_state(bus.config_ipset(path), version)
    run_raw, perm_raw, zone_paths = read_zones(bus)  # once: for cfallow's view and the admin's
    run_zones = {z: zone_state(s) for z, s in run_raw.items()}
    perm_zones = {z: zone_state(s) for z, s in perm_raw.items()}
    return Seen(
        state,
        bus.default_zone(),
        run_sets,
        perm_sets,
        set_paths,
        run_zones,
        perm_zones,
        zone_paths,
        read_admin(bus, (run_raw, perm_raw)),
    )
