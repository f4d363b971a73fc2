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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cfallow.backend import Backend, Context
from cfallow.errors import BackendError, ConfigError, Unavailable
from cfallow.files import ManagedFile
from cfallow.model import Networks, Plan, combine
from cfallow.section import Section
from cfallow.trust import check_executable

from . import cache, dropin, record
from . import copy as copies
from .client import Client, ConfigDump, check_jail_name, cidr, entry_networks, strs
from .diff import Diff, LiveChange, RecordChange, usable

DEFAULT_SOCKET = "/var/run/fail2ban/fail2ban.sock"
DEFAULT_CONFIG_DIR = "/etc/fail2ban"


@dataclass(frozen=True)
class DropInChange:
    """Replace the drop-in's text ``old`` by ``new`` (None: no file)."""

    old: str | None
    new: str | None
    #: ``(jail, ranges)`` the new file must give each jail, checked on the candidate.
    expect: tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class Seen:
    """One read: the drop-in, cfallow's record, the admin's configuration, the live lists."""

    dropin: str | None
    recorded: Mapping[str, Networks]
    admin: ConfigDump
    running: frozenset[str] | None  # None: the server did not answer (``why``)
    why: str
    lists: Mapping[str, tuple[str, ...]]  # live ignore lists of the running jails read
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Step:
    """One apply: record widened, drop-in, live changes, record narrowed."""

    dropin: DropInChange | None
    live: tuple[LiveChange, ...]
    record: RecordChange | None


Work = Step  # 0.1's name (deprecated)


class Fail2banBackend(Backend[Seen, Step]):
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

    def write_paths(self) -> tuple[Path, ...]:
        """The drop-in directory and the server's socket directory."""
        return (self.jail_dir, self.socket.parent)

    def check(self) -> None:
        """The client is installed, the configuration is there, jail.d is writable."""
        if not (shutil.which(self.client_cmd) or os.access(self.client_cmd, os.X_OK)):
            raise Unavailable(f"{self.client_cmd} not found (install fail2ban)")
        if not self.config_dir.is_dir():
            raise Unavailable(f"configuration directory {self.config_dir} not found")
        if not self.jail_dir.is_dir():
            raise BackendError(f"{self.jail_dir} not found")
        if not os.access(self.jail_dir, os.W_OK | os.X_OK):
            raise BackendError(f"{self.jail_dir} is not writable")

    # -- read ------------------------------------------------------------------------
    def read(self) -> Seen:
        """The drop-in, the record, the admin's configuration (without the drop-in, from a
        private copy, cached while the tree is unchanged), and the running jails' lists."""
        notes: list[str] = []
        recorded, problem = record.load(self.record_path)
        if problem:
            notes.append(problem)
        admin = self._admin(notes)
        old = self._dropin_text()
        owned = dropin.parse(old)[0] if old is not None else {}
        with self.client.session():
            jails, why = self.client.running_jails()
            running = frozenset(jails) if jails is not None else None
            wanted = set(admin.jails) | set(self.jails) | set(owned) | set(recorded)
            live = sorted(j for j in wanted if usable(j) and running and j in running)
            lists = self.client.ignoreips(live) if live else {}
        return Seen(
            old,
            recorded,
            admin,
            running,
            why,
            {j: tuple(v) for j, v in lists.items()},
            tuple(notes),
        )

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

    # -- diff (pure) ------------------------------------------------------------------
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

    def _running(self, seen: Seen, managed: list[str], notes: list[str]) -> set[str]:
        if seen.running is None:
            notes.append(
                f"fail2ban server not answering ({seen.why}): live ignore lists not updated "
                "(the drop-in takes effect when fail2ban starts or reloads)"
            )
            return set()
        for jail in sorted(seen.running - set(seen.admin.jails)):
            notes.append(f"jail {jail} runs but is not in {self.config_dir}: skipped")
        for jail in managed:
            if jail not in seen.running:
                notes.append(f"jail {jail} is not running: drop-in only")
        return set(seen.running)

    def diff(self, observed: Seen, desired: Networks | None) -> Plan[Step]:
        """Per jail: desired minus the admin's base list, against drop-in, record and live list."""
        seen, notes = observed, list(observed.notes)
        owned, problems = dropin.parse(seen.dropin) if seen.dropin is not None else ({}, [])
        recorded = dict(seen.recorded)
        drift = [f"{dropin.NAME}: {p}" for p in problems[:3]]
        managed = self._managed(seen.admin, notes) if desired is not None else []
        running = self._running(seen, managed, notes)
        jails = sorted(j for j in set(managed) | set(owned) | set(recorded) if usable(j))
        diff = Diff(desired, managed, owned, recorded, running)
        for jail in jails:
            base = entry_networks(seen.admin.ignoreip.get(jail, []))
            now = entry_networks(seen.lists[jail]) if jail in seen.lists else None
            diff.jail(jail, base, now, notes, drift)
        new = dropin.render(diff.new_owned, seen.admin.defined)
        change = None
        if new != seen.dropin:
            if not (any(p.changed for p in diff.parts) or drift):
                drift.append(f"{dropin.NAME} differs from what cfallow writes")
            expect = tuple((j, strs(n)) for j, n in sorted(diff.new_owned.items()) if n)
            change = DropInChange(seen.dropin, new, expect)
        rec: RecordChange | None = diff.record_change(recorded)
        if rec is not None and rec.before == rec.after and dict(rec.after) == recorded:
            rec = None
        work = Step(change, tuple(diff.live), rec)
        steps = [work] if change or work.live or rec else []
        return combine(self.name, diff.parts, drift=drift, notes=notes, steps=steps)

    # -- validate / apply ----------------------------------------------------------------
    def validate(self, plan: Plan[Step]) -> None:
        """A new drop-in passes ``fail2ban-client -t`` on a private copy of the whole tree,
        and gives each jail cfallow's ranges; the admin's tree is tested alone first, so a
        configuration that already fails is reported as the admin's."""
        for work in plan.steps:
            if work.dropin is not None and work.dropin.new is not None:
                self._check(work.dropin, baseline=True)

    def _check(self, step: DropInChange, *, baseline: bool) -> None:
        assert step.new is not None
        if baseline:
            with self._copy(None, []) as copy:
                message = self.client.test(copy, self.config_dir)
            if message is not None:
                raise BackendError(
                    f"the Fail2Ban configuration in {self.config_dir} fails fail2ban-client -t "
                    f"on its own, without cfallow's {dropin.NAME} (fix it first): {message}"
                )
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

    def apply(self, plan: Plan[Step]) -> None:
        """Record widened, drop-in (checked, renamed into place), live adds and removals,
        record narrowed to what is live now."""
        for work in plan.steps:
            if work.record is not None:
                record.save(self.record_path, dict(work.record.before))
            if work.dropin is not None:
                self._put(work.dropin)
            changes = [
                (s.jail, frozenset(map(cidr, s.add)), frozenset(map(cidr, s.remove)))
                for s in work.live
            ]
            if changes:
                with self.client.session():
                    self.client.change(changes)
            if work.record is not None:
                record.save(self.record_path, dict(work.record.after))

    def _dropin_text(self) -> str | None:
        raw = ManagedFile(self.path).read()
        try:
            return raw.decode("utf-8") if raw is not None else None
        except UnicodeDecodeError:
            raise BackendError(f"cannot read {self.path}: not UTF-8 text") from None

    def _put(self, step: DropInChange) -> None:
        target = ManagedFile(self.path)

        def check(_: Path) -> None:
            self._check(step, baseline=False)

        data = step.new.encode("utf-8") if step.new is not None else None
        expected = step.old.encode("utf-8") if step.old is not None else None
        target.install(
            data, expected=expected, check_candidate=check if step.new is not None else None
        )
