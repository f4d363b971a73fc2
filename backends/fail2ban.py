"""Backend ``fail2ban``: Cloudflare's ranges in every jail's ignore list, live and persisted.

Per jail, cfallow owns the ranges it listed in its drop-in
(``jail.d/zz-cfallow.local``) that the admin's own configuration does not list.
The admin's base list is read from ``fail2ban-client -d`` on a private copy of
the configuration without the drop-in, so a range the admin lists (in the jail
or in DEFAULT, whichever the jail uses) is never added, never removed, live or
persisted. The drop-in is checked with ``fail2ban-client -t`` on a copy of the
whole tree with the candidate in place before it is renamed into place; only
then do the live lists change, over one connection to the server's socket (one
``addignoreip`` per jail, one ``delignoreip`` per stale range). What cfallow
added live is also kept in its own record in the state directory, so entries a
stopped run left live are still found and removed (see ``fail2ban_record``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from netaddr import IPNetwork

from cfallow.backend import Backend, Context
from cfallow.config import Section
from cfallow.errors import BackendError, ConfigError
from cfallow.model import Networks, Plan
from cfallow.trust import check_executable

from . import fail2ban_cache as cache
from . import fail2ban_copy as copies
from . import fail2ban_dropin as dropin
from . import fail2ban_record as record
from .fail2ban_client import Client, ConfigDump, check_jail_name, cidr, entry_networks, strs
from .fail2ban_diff import Diff, LiveChange, RecordChange, usable

DEFAULT_SOCKET = "/var/run/fail2ban/fail2ban.sock"
DEFAULT_CONFIG_DIR = "/etc/fail2ban"


@dataclass(frozen=True)
class DropInChange:
    """Plan step: replace the drop-in's text ``old`` by ``new`` (None: no file)."""

    old: str | None
    new: str | None
    #: ``(jail, ranges)`` the new file must give each jail, checked on the candidate.
    expect: tuple[tuple[str, tuple[str, ...]], ...]


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
        self.record_path = record.path_in(ctx.state_dir)

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

    def _admin(self, notes: list[str]) -> ConfigDump:
        copies.sweep(copies.tmp_root(self.ctx.state_dir))
        key = cache.fingerprint(self.config_dir, dropin.NAME, self.client_cmd)
        path = self.ctx.state_dir / cache.NAME
        known = cache.load(path, key) if key else None
        if known is not None:
            return known
        with self._copy(None, notes) as copy:
            dump = self.client.dump(copy, self.config_dir)
        if key and key == cache.fingerprint(self.config_dir, dropin.NAME, self.client_cmd):
            cache.save(path, key, dump)
        return dump

    @contextlib.contextmanager
    def _copy(self, candidate: str | None, notes: list[str]) -> Iterator[Path]:
        root = copies.tmp_root(self.ctx.state_dir)
        with copies.config_copy(self.config_dir, root, dropin.NAME, candidate) as copy:
            if copy.skipped:
                shown = ", ".join(copy.skipped[:3])
                notes.append(f"{self.config_dir}: not copied for checks (not a file): {shown}")
            yield copy.path

    def _managed(self, admin: ConfigDump, notes: list[str]) -> list[str]:
        if not self.jails:
            for jail in admin.jails:
                if not usable(jail):
                    notes.append(
                        f"jail {jail!r}: name cannot be written safely in {dropin.NAME} "
                        "(use letters, digits and _.:@+-): skipped"
                    )
            return [j for j in admin.jails if usable(j)]
        missing = [j for j in self.jails if j not in admin.ignoreip]
        if missing:
            raise BackendError(
                f"jail {missing[0]} is not enabled in {self.config_dir} "
                "(or has errors: see fail2ban-client -d)"
            )
        return list(self.jails)

    def _running(self, admin: ConfigDump, managed: list[str], notes: list[str]) -> set[str]:
        jails, why = self.client.running_jails()
        if jails is None:
            notes.append(
                f"fail2ban server not answering ({why}): live ignore lists not updated "
                "(the drop-in takes effect when fail2ban starts or reloads)"
            )
            return set()
        running = set(jails)
        for jail in sorted(running - set(admin.jails)):
            notes.append(f"jail {jail} runs but is not in {self.config_dir}: skipped")
        for jail in managed:
            if jail not in running:
                notes.append(f"jail {jail} is not running: drop-in only")
        return running

    def _plan(self, desired: Networks | None) -> Plan[object]:
        old = dropin.read(self.path)
        owned, problems = dropin.parse(old) if old is not None else ({}, [])
        recorded, rec_problem = record.load(self.record_path)
        notes: list[str] = [rec_problem] if rec_problem else []
        drift = [f"{dropin.NAME}: {p}" for p in problems[:3]]
        admin = self._admin(notes)
        managed = self._managed(admin, notes) if desired is not None else []
        with self.client.session():
            running = self._running(admin, managed, notes)
            jails = sorted(j for j in set(managed) | set(owned) | set(recorded) if usable(j))
            diff = Diff(desired, managed, owned, recorded, running)
            lists = self.client.ignoreips([j for j in jails if j in running])
            for jail in jails:
                base = entry_networks(admin.ignoreip.get(jail, []))
                now = entry_networks(lists[jail]) if jail in lists else None
                diff.jail(jail, base, now, notes, drift)
        new = dropin.render(diff.new_owned, admin.defined)
        add, remove = _union(diff.adds), _union(diff.removes)
        steps: list[object] = []
        if new != old:
            if not (add or remove or drift):
                drift.append(f"{dropin.NAME} differs from what cfallow writes")
            expect = tuple((j, strs(n)) for j, n in sorted(diff.new_owned.items()) if n)
            steps.append(DropInChange(old, new, expect))
        steps.extend(diff.live)
        rec = diff.record_change(recorded)
        if rec.before != rec.after or dict(rec.after) != recorded:
            steps.append(rec)
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
        """Record widened, drop-in (checked, renamed into place), live adds and removals,
        record narrowed to what is live now."""
        rec = next((s for s in plan.steps if isinstance(s, RecordChange)), None)
        if rec is not None:
            record.save(self.record_path, dict(rec.before))
        for step in plan.steps:
            if isinstance(step, DropInChange):
                self._put(step)
        changes = [
            (s.jail, frozenset(map(cidr, s.add)), frozenset(map(cidr, s.remove)))
            for s in plan.steps
            if isinstance(s, LiveChange)
        ]
        with self.client.session():
            self.client.change(changes)
        if rec is not None:
            record.save(self.record_path, dict(rec.after))

    def _put(self, step: DropInChange) -> None:
        if dropin.read(self.path) != step.old:
            raise BackendError(f"{self.path} changed since it was read; run again")
        if step.new is None:
            dropin.remove(self.path)
            return
        with self._copy(step.new, []) as copy:
            message = self.client.test(copy, self.config_dir)
            if message is not None:
                raise BackendError(
                    f"fail2ban-client -t rejects the configuration with the new "
                    f"{dropin.NAME} ({self.path} left as it was): {message}"
                )
            effective = self.client.dump(copy, self.config_dir)
        for jail, cidrs in step.expect:
            got = entry_networks(effective.ignoreip.get(jail, []))
            if not {cidr(c) for c in cidrs} <= got:
                raise BackendError(
                    f"with {dropin.NAME} in place jail {jail} still lacks cfallow's "
                    f"ranges (does a file read after {dropin.NAME} set its ignoreip?)"
                )
        dropin.write_atomic(self.path, step.new)
