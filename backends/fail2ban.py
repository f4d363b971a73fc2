"""Backend ``fail2ban``: Cloudflare's ranges in every jail's ignore list, live and persisted.

Per jail, cfallow owns the ranges it listed in its drop-in
(``jail.d/zz-cfallow.local``) that the admin's own configuration does not list.
The admin's base list is read from ``fail2ban-client -d`` on a private copy of
the configuration without the drop-in, so a range the admin lists (in the jail
or in DEFAULT, whichever the jail uses) is never added, never removed, live or
persisted. The drop-in is checked with ``fail2ban-client -t`` on a copy of the
whole tree with the candidate in place before it is renamed into place; only
then do the live lists change (one ``addignoreip`` per jail, one
``delignoreip`` per stale range).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from netaddr import IPNetwork

from cfallow.backend import Backend, Context
from cfallow.config import Section
from cfallow.errors import BackendError, ConfigError
from cfallow.model import Networks, Plan, as_strings, parse_cidr
from cfallow.trust import check_executable

from . import fail2ban_dropin as dropin
from .fail2ban_client import Client, ConfigDump, check_jail_name, entry_networks

DEFAULT_SOCKET = "/var/run/fail2ban/fail2ban.sock"
DEFAULT_CONFIG_DIR = "/etc/fail2ban"


@dataclass(frozen=True)
class DropInChange:
    """Plan step: replace the drop-in's text ``old`` by ``new`` (None: no file)."""

    old: str | None
    new: str | None
    #: ``(jail, ranges)`` the new file must give each jail, checked on the candidate.
    expect: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class LiveChange:
    """Plan step: one jail's live ignore list (validated CIDR strings)."""

    jail: str
    add: tuple[str, ...]
    remove: tuple[str, ...]


def _strs(nets: Networks) -> tuple[str, ...]:
    return tuple(str(parse_cidr(c)) for c in as_strings(nets))


def _union(sets: list[Networks]) -> Networks:
    out: frozenset[IPNetwork] = frozenset()
    for s in sets:
        out |= s
    return out


class Fail2banBackend(Backend[None, object]):
    """Keeps Cloudflare's ranges in Fail2Ban jails' ``ignoreip`` (see module docstring)."""

    name = "fail2ban"

    def __init__(self, section: Section, ctx: Context) -> None:
        """Read ``[backends.fail2ban]``: jails, socket, config_dir, jail_dir, client."""
        super().__init__(section, ctx)
        where = section.where
        jails = section.get_strings("jails", [])
        for jail in jails:
            try:
                check_jail_name(jail)
            except BackendError:
                raise ConfigError(f"[{where}] jails: not a usable jail name: {jail!r}") from None
        self.jails = list(dict.fromkeys(jails))
        self.socket = Path(section.get_str("socket", DEFAULT_SOCKET))
        self.config_dir = Path(section.get_str("config_dir", DEFAULT_CONFIG_DIR))
        default_jail_dir = str(self.config_dir / "jail.d")
        jail_dir = Path(section.get_str("jail_dir", default_jail_dir))
        if os.path.abspath(jail_dir) != os.path.abspath(default_jail_dir):
            raise ConfigError(
                f"[{where}] jail_dir: Fail2Ban reads drop-ins only from "
                f"{default_jail_dir} (config_dir/jail.d), got {str(jail_dir)!r}"
            )
        self.jail_dir = jail_dir
        self.client_cmd = section.get_str("client", "fail2ban-client")
        check_executable(self.client_cmd, f"[{where}] client")
        self.client = Client(ctx.runner, self.client_cmd, self.config_dir, self.socket)

    @property
    def path(self) -> Path:
        """cfallow's drop-in."""
        return self.jail_dir / dropin.NAME

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """fail2ban-client on PATH?"""
        if shutil.which("fail2ban-client"):
            return True, "ok"
        return False, "fail2ban-client not found"

    def write_paths(self) -> tuple[Path, ...]:
        """The drop-in directory and the server's socket directory."""
        return (self.jail_dir, self.socket.parent)

    def check(self) -> None:
        """The client runs, the configuration is readable, jail.d is writable."""
        if not (shutil.which(self.client_cmd) or os.access(self.client_cmd, os.X_OK)):
            raise BackendError(f"{self.client_cmd} not found")
        if not self.config_dir.is_dir():
            raise BackendError(f"configuration directory {self.config_dir} not found")
        if not self.jail_dir.is_dir():
            raise BackendError(f"{self.jail_dir} not found")
        if not os.access(self.jail_dir, os.W_OK | os.X_OK):
            raise BackendError(f"{self.jail_dir} is not writable")

    def read(self) -> None:
        """Transitional: the reads still happen in :meth:`diff` (see ``_plan``)."""
        return None

    def diff(self, observed: None, desired: Networks | None) -> Plan[object]:
        """Per jail: desired minus the admin's base list, against drop-in and live list."""
        return self._plan(desired)

    def _admin(self) -> ConfigDump:
        with dropin.config_copy(self.config_dir, None) as copy:
            return self.client.dump(copy, self.config_dir)

    def _managed(self, admin: ConfigDump) -> list[str]:
        if not self.jails:
            return admin.jails
        missing = [j for j in self.jails if j not in admin.ignoreip]
        if missing:
            raise BackendError(
                f"jail {missing[0]} is not enabled in {self.config_dir} "
                "(or has errors: see fail2ban-client -d)"
            )
        return list(self.jails)

    def _plan(self, desired: Networks | None) -> Plan[object]:
        old = dropin.read(self.path)
        owned, problems = dropin.parse(old) if old is not None else ({}, [])
        admin = self._admin()
        managed = self._managed(admin) if desired is not None else []
        jails, why = self.client.running_jails()
        up = jails is not None
        running = set(jails or ())
        notes: list[str] = []
        drift = [f"{dropin.NAME}: {p}" for p in problems[:3]]
        if not up:
            notes.append(
                f"fail2ban server not answering ({why}): live ignore lists not updated "
                "(the drop-in takes effect when fail2ban starts or reloads)"
            )
        else:
            for jail in sorted(running - set(admin.jails)):
                notes.append(f"jail {jail} runs but is not in {self.config_dir}: skipped")
            for jail in managed:
                if jail not in running:
                    notes.append(f"jail {jail} is not running: drop-in only")

        new_owned: dict[str, Networks] = {}
        adds: list[Networks] = []
        removes: list[Networks] = []
        live: list[LiveChange] = []
        for jail in sorted(set(managed) | set(owned)):
            check_jail_name(jail)
            base = entry_networks(admin.ignoreip.get(jail, []))
            want = desired - base if desired is not None and jail in managed else frozenset()
            mine = owned.get(jail, frozenset())
            new_owned[jail] = want
            adds.append(want - mine)
            removes.append(mine - want)
            if want != mine:
                notes.append(f"jail {jail}: +{len(want - mine)} -{len(mine - want)}")
            if jail in running:
                now = entry_networks(self.client.ignoreip(jail))
                live_add = want - now
                live_del = (mine - want - base) & now
                lacking = live_add & mine
                if lacking:
                    drift.append(f"jail {jail}: live list lacks {len(lacking)} owned range(s)")
                if live_add or live_del:
                    live.append(LiveChange(jail, _strs(live_add), _strs(live_del)))

        new = dropin.render(new_owned, admin.defined)
        add, remove = _union(adds), _union(removes)
        steps: list[object] = []
        if new != old:
            if not (add or remove or drift):
                drift.append(f"{dropin.NAME} differs from what cfallow writes")
            expect = tuple((j, _strs(n)) for j, n in sorted(new_owned.items()) if n)
            steps.append(DropInChange(old, new, expect))
        steps.extend(live)
        return Plan(
            self.name,
            current=_union(list(owned.values())),
            add=add,
            remove=remove,
            drift=tuple(drift),
            notes=tuple(notes),
            steps=tuple(steps),
        )

    def apply(self, plan: Plan[object]) -> None:
        """Drop-in first (checked, renamed into place), then live: adds, then removals."""
        for step in plan.steps:
            if isinstance(step, DropInChange):
                self._put(step)
        changes = [s for s in plan.steps if isinstance(s, LiveChange)]
        for change in changes:
            self.client.add_ignore(change.jail, [parse_cidr(c) for c in change.add])
        for change in changes:
            for cidr in change.remove:
                self.client.del_ignore(change.jail, parse_cidr(cidr))

    def _put(self, step: DropInChange) -> None:
        if dropin.read(self.path) != step.old:
            raise BackendError(f"{self.path} changed since it was read; run again")
        if step.new is None:
            dropin.remove(self.path)
            return
        with dropin.config_copy(self.config_dir, step.new) as copy:
            message = self.client.test(copy, self.config_dir)
            if message is not None:
                raise BackendError(
                    f"fail2ban-client -t rejects the configuration with the new "
                    f"{dropin.NAME} ({self.path} left as it was): {message}"
                )
            effective = self.client.dump(copy, self.config_dir)
        for jail, cidrs in step.expect:
            got = entry_networks(effective.ignoreip.get(jail, []))
            if not {parse_cidr(c) for c in cidrs} <= got:
                raise BackendError(
                    f"with {dropin.NAME} in place jail {jail} still lacks cfallow's "
                    f"ranges (does a file read after {dropin.NAME} set its ignoreip?)"
                )
        dropin.write_atomic(self.path, step.new)
