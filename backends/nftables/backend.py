"""Backend ``nftables``: native nftables hosts, in one of two models.

``mode = "lockdown"`` (default): cfallow's own ``table inet cfallow`` with
interval sets ``cloudflare_v4``/``cloudflare_v6`` (+ ``also_allow_v4/_v6``) and
drop-only base chains: new connections to the configured ports from outside the
sets are dropped (drop is final across tables, whatever the admin's ruleset
says); loopback and established connections are never cut. With
``docker = true`` a forward chain covers DNAT-published ports
(``ct original proto-dst``).

``mode = "sets"``: only the sets ``cloudflare_v4``/``cloudflare_v6`` inside the
admin's table (``table = "inet filter"``); the admin's own rules reference them.
cfallow's sets carry ``comment "cfallow"``; a set of that name without it is the
admin's and is refused (``adopt_set = true`` takes it over).

Changes are element adds/deletes in one ``nft -f -`` transaction; an unchanged
plan writes nothing. The exact state applied is kept in one file cfallow owns
(``file``, default ``/etc/nftables.d/cfallow.nft``), checked with ``nft -c -f``,
for the admin's ``/etc/nftables.conf`` to ``include``, so a reload with
``flush ruleset`` brings it back in the same transaction.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from cfallow.backend import Backend, Context, Promise, probe_ports
from cfallow.errors import BackendError, CommandFailed, ConfigError, Unavailable, ValidationError
from cfallow.files import ManagedFile
from cfallow.model import Networks, Plan, by_family, make_plan, parse_cidr
from cfallow.netfilter import generation
from cfallow.netfilter import host as hostfw
from cfallow.runner import missing
from cfallow.section import Section, parse_ports

from . import render
from .advice import recommend
from .apply import Seen, Step, analysis_key, apply_step, elements_only, read_seen, removal_steps
from .diff import lockdown_steps, refuse_foreign_sets, sets_steps

DEFAULT_FILE = "/etc/nftables.d/cfallow.nft"
DEFAULT_CONF = "/etc/nftables.conf"
#: The host analysis kept for the ruleset generation it was made for (in the state directory).
MEMO = "nftables-host.json"
FAMILY_OF_TABLE = {"inet": (4, 6), "ip": (4,), "ip6": (6,)}


class NftablesBackend(Backend[Seen, Step]):
    """Cloudflare's ranges in nftables sets (cfallow's lockdown table, or the admin's table)."""

    name = "nftables"

    def __init__(self, section: Section, ctx: Context) -> None:
        """Read ``[backends.nftables]``."""
        super().__init__(section, ctx)
        where = section.where
        mode = section.get_choice("mode", "lockdown", ("lockdown", "sets"))
        table = " ".join(section.get_str("table", "inet filter").split())
        if mode == "lockdown":
            if "table" in section.data:
                raise ConfigError(
                    f'[{where}] table: only for mode = "sets" (lockdown owns table inet cfallow)'
                )
            table = "inet cfallow"
        fam = table.split(" ")[0]
        if len(table.split(" ")) != 2 or fam not in FAMILY_OF_TABLE:
            raise ConfigError(f'[{where}] table: expected "FAMILY NAME" (inet, ip or ip6)')
        families = FAMILY_OF_TABLE[fam]
        if not section.get_bool("ipv6", True):
            families = tuple(v for v in families if v == 4)
        try:
            also = tuple(parse_cidr(c) for c in section.get_strings("also_allow", []))
        except ValidationError as exc:
            raise ConfigError(f"[{where}] also_allow: {exc}") from None
        if also and mode == "sets":
            raise ConfigError(
                f'[{where}] also_allow: only for mode = "lockdown" (sets mode: '
                "accept them in your own rules)"
            )
        names = (
            (4, section.get_str("set_v4", "cloudflare_v4")),
            (6, section.get_str("set_v6", "cloudflare_v6")),
        )
        for _, n in names:
            if not n.replace("_", "").isalnum() or not n[:1].isalpha():
                raise ConfigError(f"[{where}] set name {n!r}: letters, digits and _ only")
        self.settings = render.Settings(
            mode=mode,
            table=table,
            families=families,
            protocol=section.get_choice("protocol", "tcp", ("tcp", "udp", "sctp")),
            ports=parse_ports(section),
            set_names=names,
            also_allow=tuple(sorted(set(also), key=lambda n: (n.version, n.value, n.prefixlen))),
            docker=section.get_bool("docker", False),
            priority=section.get_int("priority", -10),
            adopt_set=section.get_bool("adopt_set", False),
        )
        if self.settings.adopt_set and mode != "sets":
            raise ConfigError(f'[{where}] adopt_set: only for mode = "sets"')
        if self.settings.docker and mode == "sets":
            raise ConfigError(f'[{where}] docker: only for mode = "lockdown"')
        self.file = ManagedFile(Path(section.get_str("file", DEFAULT_FILE)))
        #: The admin's ruleset that nftables.service loads (and may include ``file``).
        self.conf = Path(section.get_str("conf", DEFAULT_CONF))
        self.host_check = section.get_bool("host_check", True)
        self._last: Seen | None = None  # the last read, for carrying its analysis (apply)

    @classmethod
    def host_advice(cls, host: hostfw.Host) -> str | None:
        """Lockdown where firewalld runs (the iptables backend speaks for the other hosts)."""
        return recommend(host)

    def write_paths(self) -> tuple[Path, ...]:
        """The directory of cfallow's include file, and cfallow's firewall lock."""
        return (self.file.path.parent, self.ctx.firewall_lock)

    def own_dirs(self) -> tuple[Path, ...]:
        """The include file's directory (``/etc/nftables.d`` is not there on a fresh host)."""
        return (self.file.path.parent,)

    def promise(self) -> Promise:
        """Lockdown: only Cloudflare (and ``also_allow``) gets in; sets: Cloudflare does."""
        s = self.settings
        mode = "lockdown" if s.mode == "lockdown" else "allow"
        allowed = tuple(str(n) for n in s.also_allow)
        return Promise(mode, s.protocol, probe_ports(s.ports), s.families, allowed)

    def scratch_section(self, section: dict[str, object], tmp: Path) -> dict[str, object]:
        """The include file under ``tmp``; the ruleset changes through the runner's ``nft``."""
        return {**section, "file": str(tmp / f"{self.name}.file")}

    def check(self) -> None:
        """``nft`` is installed (whether it may read the ruleset shows in ``read``)."""
        if shutil.which("nft") is None and not self.ctx.runner.prefix:
            raise Unavailable(missing("nft", "nftables"))

    def read(self) -> Seen:
        """The whole ruleset (for the host analysis), cfallow's sets and chains, the file."""
        memo = generation.Memo(self.ctx.state_dir / MEMO)
        self._last = read_seen(
            self.ctx.runner, self.settings, self.file, analyse_host=self.host_check, memo=memo
        )
        return self._last

    def diff(self, observed: Seen, desired: Networks | None) -> Plan[Step]:
        """Element diff per set, drift of cfallow's chains/sets/file; removal when ``None``."""
        s = self.settings
        if s.mode == "sets":
            refuse_foreign_sets(observed, s)
        if desired is None:
            steps, current, drift, gone = removal_steps(observed, s, self.file)
            return make_plan(self.name, frozenset(), current, drift=drift, notes=gone, steps=steps)
        split = by_family(desired)
        want = {v: split[v] for v in s.families}
        managed = frozenset().union(*want.values())
        notes: tuple[str, ...] = ()
        if s.mode == "lockdown" and 6 not in s.families:
            what = hostfw.ports_text(s.protocol, s.ports)
            notes = (
                f"ipv6 = false: IPv6 to {what} stays open to everyone (the lockdown "
                "drops IPv4 outsiders only)",
            )
        elif managed != desired:
            notes = ("IPv6 ranges left alone (ipv6 = false or an ip table)",)
        if s.mode == "lockdown":
            steps, current, drift = lockdown_steps(observed, s, want, self.file)
        else:
            steps, current, drift = sets_steps(observed, s, want, self.file)
        if observed.analysis is not None:
            notes += observed.analysis.notes
        plan: Plan[Step] = make_plan(self.name, managed, current, drift=drift, notes=notes)
        return replace(plan, steps=steps if plan.changed else ())

    def apply(self, plan: Plan[Step]) -> None:
        """Each step: check nothing moved, one ``nft -f -`` transaction, then the file."""
        for step in plan.steps:
            if not isinstance(step, Step):
                raise BackendError(f"not an nftables plan step: {step!r}")
            if step.file is None:
                self._remove_file()
            seen = self._last
            carry = seen is not None and seen.kept_for is not None and seen.analysis is not None
            carry = carry and elements_only(self.settings, step.script)
            gens = apply_step(self.ctx.runner, self.settings, self.file, step, generations=carry)
            if carry and seen is not None:
                self._carry(seen, *gens)

    def _carry(self, seen: Seen, before: str | None, after: str | None) -> None:
        """Keep the host analysis for the generation after cfallow's own transaction.

        Only where the transaction changed nothing but the elements of cfallow's own
        sets, which the analysis never reads (it lists chains and terse tables; a
        match on cfallow's set is judged by the set's name, and lockdown skips
        cfallow's table): its answer for the ruleset after the commit is the same.
        And only where the generation proves that nothing else committed: right
        before the transaction it is the one the analysis was kept under, and right
        after it moved by exactly one (one ``nft -f`` transaction that changes
        something is one generation: measured).
        """
        if seen.kept_for is None or seen.analysis is None:
            return
        gen, variant = seen.kept_for
        if before != gen or generation.advanced(before, after) != 1:
            return
        memo = generation.Memo(self.ctx.state_dir / MEMO)
        memo.put(analysis_key(after, self.settings, variant), seen.analysis.to_json())

    def _remove_file(self) -> None:
        """Remove the include file first, and only if the admin's ruleset loads without it.

        ``nft`` refuses a ruleset that includes a missing file by its exact
        name: ``systemctl reload nftables`` would fail, and at the next boot
        none of the admin's ruleset would load. ``nft -c -f CONF`` (a check,
        nothing committed) decides; the file comes back if it fails, and
        nothing is removed. A glob include (``"/etc/nftables.d/*.nft"``)
        accepts no match.
        """
        if self.file.read() is None:
            return
        conf = str(self.conf)

        def loads() -> None:
            self.ctx.runner.run(["nft", "-c", "-f", conf])

        if not self.conf.is_file():
            self.file.install(None)
            return
        try:
            loads()
        except CommandFailed as exc:
            raise BackendError(
                f"{conf} does not load even with {self.file.path} (not cfallow's file: "
                f"{_nft_error(exc)}); fix it first: nothing removed"
            ) from None
        try:
            self.file.install(None, test=loads)
        except CommandFailed as exc:
            glob = self.file.path.parent / "*.nft"
            raise BackendError(
                f"{conf} would not load without {self.file.path} ({_nft_error(exc)}): delete "
                f'that include (or include a glob, include "{glob}", which matches nothing '
                "without the file) and what uses cfallow's sets, then remove again; "
                "nothing removed"
            ) from None


def _nft_error(exc: CommandFailed) -> str:
    """nft's error line and the source line it points at, as one line."""
    lines = [ln.strip() for ln in exc.stderr.strip().splitlines() if ln.strip() and "^" not in ln]
    return ": ".join(lines[:2]) if lines else str(exc)


__all__ = ["NftablesBackend", "hostfw"]
