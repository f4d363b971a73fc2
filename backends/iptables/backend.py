"""Backend ``iptables``: Cloudflare's ranges in an owned ``CFALLOW`` chain, IPv4 and IPv6.

cfallow owns, per family, the chain ``CFALLOW`` in the filter table and the
jumps into it at the top of the parent chain (``INPUT``, or ``DOCKER-USER``),
limited to the configured protocol and ports (from INPUT, the port the client
connected to, before any NAT; then untracked packets on their port)::

    -A INPUT -p tcp -m conntrack --ctorigdstport 80 -m comment --comment cfallow -j CFALLOW
    -A INPUT -p tcp -m conntrack --ctorigdstport 443 -m comment --comment cfallow -j CFALLOW
    -A INPUT -p tcp -m multiport --dports 80,443 -m conntrack --ctstate UNTRACKED -m comment \
--comment cfallow -j CFALLOW
    -A CFALLOW -s 173.245.48.0/20 -j ACCEPT
    ...

With ``parent = "DOCKER-USER"`` in lockdown, the same chain is also kept in the
``mangle`` table with the same jump first in mangle's ``FORWARD`` (the guard):
Docker never touches mangle, so the lockdown holds while Docker 20.10 has its
own IPv6 ``FORWARD`` rules above ``-j DOCKER-USER`` after each start.

Every other rule, chain, counter and policy stays as it was. Each change is one
transaction per family: ``iptables-nft-restore --noflush`` on nf_tables hosts,
``iptables-legacy-restore --noflush`` under the xtables lock on legacy hosts
(the same batch). An unchanged chain means no write at all. The variant is
what ``iptables --version`` says, so rules land where the admin's own
``iptables`` shows them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from netaddr import IPNetwork, IPSet

from cfallow.backend import Backend, Context, Promise, probe_ports
from cfallow.errors import BackendError, ConfigError, NotInstalled, ValidationError
from cfallow.hostlock import firewall_lock
from cfallow.model import Networks, Plan, as_strings, family, make_plan, ordered, parse_cidr
from cfallow.netfilter import generation, witness
from cfallow.netfilter.save import COMMAND, SAVE, VERSION_MEMO, binary, detect
from cfallow.runner import missing, not_on_path
from cfallow.section import Section, parse_ports

from . import bychain, notes
from .diff import Ops, assess, assess_guard, assess_removal
from .legacy import LegacyIO, Writer
from .legacy import digest as legacy_digest
from .nft import NftIO
from .rules import (
    Owned,
    Settings,
    check_chain_name,
    check_parent,
    observe,
    port_slots,
)
from .save import Table, parse_save
from .variant import EMPTY_FILTER, MISSING, NONE, Variant, io_for, probe

if TYPE_CHECKING:
    from cfallow.netfilter import xtables
    from cfallow.netfilter.host import Host
    from cfallow.netfilter.witness import Witness

__all__ = ["IptablesBackend", "Seen", "Step", "Variant", "detect"]

PROTOCOLS = ("tcp", "udp", "sctp", "dccp", "udplite")  # the ones multiport takes
#: The host analysis kept for the ruleset it was made for (in the state directory).
MEMO = "iptables-host.json"
#: The legacy tables lockdown's NAT notes read (both families, whatever ``ipv6`` says).
NAT_TABLES = ((4, "nat"), (6, "nat"))
#: The tables as last read, kept for the ruleset generation they were read under.
READ_MEMO = "iptables-read.json"
#: The references into cfallow's chain that no rule read shows, per generation.
REFS_MEMO = "iptables-refs.json"


@dataclass(frozen=True)
class Seen:
    """One read: the variant and each managed family's filter table (with its mangle table
    where cfallow guards FORWARD there)."""

    variant: Variant
    tables: tuple[tuple[int, Table], ...]
    #: What the host analysis says of allow mode in INPUT (the error, notes); None: not asked.
    allow: tuple[str | None, tuple[str, ...]] | None = None
    nat: tuple[str, ...] = ()  # what the host's DNAT leaves open (lockdown in INPUT only)
    #: The tables cfallow writes that sleep (``ip filter``: ``flags dormant``; nf_tables)
    dormant: tuple[str, ...] = ()
    #: Per family, the references into cfallow's chain that no rule read shows (nf_tables)
    hidden: tuple[tuple[int, int], ...] = ()
    generation: str | None = None  # the ruleset's, taken before the tables were read (nft)
    #: Legacy: each family's tables' digest, taken under the xtables lock before their read
    digests: tuple[tuple[int, str], ...] = ()


@dataclass
class _Read:
    """What this backend read last on an nf_tables host, for carrying it past its own commit:
    the generation, each family's text and table, and the host analysis with the first
    parts of its memo key (``("allow", kind)``, the tables' digest follows; ``("nat",
    kind)``)."""

    generation: str
    texts: tuple[str, ...]
    tables: tuple[tuple[int, Table], ...]
    analysis: tuple[tuple[object, ...], object] | None = None
    by_chain: str | None = None  # the texts hold only INPUT's and this chain's rules


@dataclass(frozen=True)
class Step:
    """Plan step: bring one family to ``target`` (CIDR strings), or remove it (``None``)."""

    version: int
    target: tuple[str, ...] | None
    script: str  # the transaction as planned (restore syntax), for logs and reports
    variant: Variant
    #: The table the plan was made from, and the ruleset generation before it was read
    #: (nf_tables hosts; legacy: the family's tables' digest): unchanged under the lock,
    #: ``apply`` writes from it without a re-read.
    basis: Table | None = None
    generation: str | None = None


class IptablesBackend(Backend[Seen, Step]):
    """Keeps an owned iptables chain (both families) equal to Cloudflare's ranges."""

    name = "iptables"

    def __init__(self, section: Section, ctx: Context) -> None:
        """Read ``[backends.iptables]`` (ports, protocol, chain, parent, mode, also_allow, ...)."""
        super().__init__(section, ctx)
        where = section.where
        ports = parse_ports(section)
        if port_slots(ports) > 15:
            raise ConfigError(f"[{where}] ports: at most 15 ports (a range counts as two)")
        try:
            chain = check_chain_name(section.get_str("chain", "CFALLOW"), "chain")
            parent = section.get_str("parent", "INPUT")
            if chain == parent:
                raise ValueError(f"chain: {chain!r} is not a chain cfallow can own (the parent)")
            parent = check_parent(check_chain_name(parent, "parent"))
            also = tuple(parse_cidr(c) for c in section.get_strings("also_allow", []))
        except (ValueError, ValidationError) as exc:
            raise ConfigError(f"[{where}] {exc}") from None
        self.settings = Settings(
            chain=chain,
            parent=parent,
            protocol=section.get_choice("protocol", "tcp", PROTOCOLS),
            ports=ports,
            mode=section.get_choice("mode", "allow", ("allow", "lockdown")),
            also_allow=tuple(ordered(set(also))),
            adopt=section.get_bool("adopt_chain", False),
        )
        self._check_reach(where, lockdown_ssh=section.get_bool("lockdown_ssh", False))
        self.families = (4, 6) if section.get_bool("ipv6", True) else (4,)
        self.variant = section.get_choice("variant", "auto", ("auto", "nft", "legacy"))
        #: False: no host analysis (allow mode's check that its accept takes effect,
        #: lockdown's NAT notes), as the nftables backend's key of that name.
        self.host_check = section.get_bool("host_check", True)
        #: The seam for legacy writes (tests put the former python-iptables writer here).
        self.legacy_writer: Writer | None = None
        self._last: _Read | None = None
        #: The last read's generation, what it saw, how it read it and the programs that
        #: read it (for :meth:`witnesses`; None: a read that could not count everything).
        self._basis: tuple[str | None, Seen, NftIO | LegacyIO, dict[str, str | None]] | None = None

    @classmethod
    def host_advice(cls, host: Host) -> str | None:
        """Whether iptables allow or lockdown works here (or nftables is needed)."""
        from .advice import recommend

        return recommend(host)

    def _check_reach(self, where: str, *, lockdown_ssh: bool) -> None:
        """Refuse settings that silently undo the allowlist or lock the admin out."""
        s = self.settings
        for version, size in ((4, 2**32), (6, 2**128)):
            if IPSet(family(s.also_allow, version)).size == size:
                raise ConfigError(
                    f"[{where}] also_allow: covers every IPv{version} address, which turns "
                    "the allowlist off (disable the iptables backend instead)"
                )
        if s.mode != "lockdown":
            return
        ssh = s.protocol == "tcp" and any(p.first <= 22 <= p.last for p in s.ports)
        if ssh and not lockdown_ssh:
            raise ConfigError(
                f"[{where}] ports: lockdown on port 22 lets only Cloudflare reach SSH; "
                "set lockdown_ssh = true if that is really wanted"
            )
        count = sum(p.last - p.first + 1 for p in s.ports)
        if count > 1024:
            self.ctx.log.warning(
                "%s: lockdown on %d ports: every service on them answers only Cloudflare",
                self.name,
                count,
            )

    def check(self) -> None:
        """An iptables command is installed (the variant and the tables come with ``read``)."""
        if not self._installed():
            where = not_on_path("iptables")
            raise NotInstalled(missing("iptables", "iptables") if where else MISSING)

    def _installed(self) -> bool:
        path = (self.ctx.runner.env or {}).get("PATH") or os.environ.get("PATH")
        return self.variant != "auto" or shutil.which("iptables", path=path) is not None

    def write_paths(self) -> tuple[Path, ...]:
        """cfallow's firewall lock and the legacy xtables lock."""
        return (self.ctx.firewall_lock, Path("/run/xtables.lock"))

    def promise(self) -> Promise:
        """Allow: Cloudflare gets in; lockdown: only Cloudflare (and ``also_allow``)."""
        s = self.settings
        allowed = tuple(str(n) for n in s.also_allow)
        return Promise(s.mode, s.protocol, probe_ports(s.ports), self.families, allowed)

    def scratch_section(self, section: dict[str, object], tmp: Path) -> dict[str, object]:
        """As it is: every change goes through the runner's iptables commands."""
        return dict(section)

    def _variant(self) -> Variant:
        memo = generation.Memo(self.ctx.state_dir / VERSION_MEMO)
        return probe(self.ctx.runner, self.variant, self.ctx.log, memo)

    def io(self, variant: Variant) -> NftIO | LegacyIO:
        """The reader/writer for ``variant`` (a new one each time: it holds no state)."""
        return io_for(
            self.ctx.runner,
            variant,
            self.settings.chain,
            self.legacy_writer,
            mangle=self.settings.parent == "DOCKER-USER",
        )

    # -- read / diff / apply --------------------------------------------------------
    def read(self) -> Seen:
        """The variant, then each managed family's filter table (read side by side)."""
        if not self._installed():  # nothing of cfallow's can be there; apply() refuses
            if not_on_path("iptables") is not None:  # there, only PATH hides it: say so
                raise NotInstalled(missing("iptables", "iptables"))
            return Seen(NONE, tuple((v, parse_save(EMPTY_FILTER)) for v in self.families))
        variant = self._variant()
        io = self.io(variant)
        analysed = self.settings.parent == "INPUT" and self.host_check
        # before the read: a commit after it shows as another generation under apply's lock
        # (legacy hosts: the host analysis's key, for the native tables it reads too)
        nft = variant.kind == "nft"
        gen = generation.generation(self.ctx.runner) if nft or analysed else None
        by_chain, snap = None, None
        if isinstance(io, LegacyIO):
            texts, digests = self._legacy_texts(io)
        else:
            (texts, by_chain, snap), digests = self._texts(io, gen), ()
        # Parsed in this thread: a legacy parse may import python-iptables (not thread-safe).
        tables = tuple((v, io.parse(v, text)) for v, text in zip(self.families, texts))
        last = _Read(gen, tuple(texts), tables, by_chain=by_chain) if gen is not None else None
        self._last = last if nft else None
        sleeping = generation.asleep(gen) if nft else frozenset()
        written = notes.tables_written(self.settings, self.families)
        dormant = tuple(t for t in written if tuple(t.split()) in sleeping)
        counted = self._hidden(gen, tables, snap) if nft and gen is not None else ()
        seen = Seen(
            variant,
            tables,
            generation=gen if nft else None,
            digests=digests,
            dormant=dormant,
            hidden=counted or (),
        )
        if analysed and self.settings.mode == "allow":
            seen = replace(seen, allow=self._allow(variant, texts, tables, gen))
        elif analysed:
            seen = replace(seen, nat=self._nat(variant, io, gen))
        # what the read rested on, asked now (an upgrade after the read is seen next run)
        programs = {t: witness.program(t) for t in self._programs(io)}
        self._basis = (gen, seen, io, programs) if counted is not None else None
        return seen

    def _programs(self, io: NftIO | LegacyIO) -> list[str]:
        """The programs that say the variant and print the tables for ``io``."""
        if isinstance(io, LegacyIO):
            return sorted({"iptables", *(io.save[v] for v in self.families)})
        both = (t for v in self.families for t in (SAVE["nft"][v], COMMAND["nft"][v]))
        return sorted({"iptables", *both})

    def witnesses(self) -> list[Witness] | None:
        """nf_tables: the ruleset generation the read was taken at (every commit moves
        it); legacy: each family's tables' digest, and the generation the host analysis
        was kept under; both: the programs that say the variant and print the tables.
        None for a lockdown on a legacy host (its NAT notes rest on the nat tables,
        whose digest is not kept) and where commands run elsewhere (a runner prefix)."""
        if self._basis is None or self.ctx.runner.prefix or self.ctx.runner.env:
            return None
        gen, seen, io, programs = self._basis
        analysed = self.settings.parent == "INPUT" and self.host_check
        found: list[Witness] = []
        if seen.variant.kind == "nft" or analysed:
            if gen is None:
                return None
            found.append((("nf",), gen))
        if isinstance(io, LegacyIO):
            if seen.variant.kind != "legacy" or (analysed and self.settings.mode == "lockdown"):
                return None
            digests = dict(seen.digests)
            for v in self.families:
                if v not in digests:
                    return None
                tables = tuple(name for _, name in io.names(v))
                found.append((("xt", io.lock_path, str(v), *tables), digests[v]))
        elif seen.variant.kind != "nft":
            return None
        return found + [(("exe", t), answer) for t, answer in programs.items()]

    def _texts(
        self, io: NftIO, gen: str | None
    ) -> tuple[list[str], str | None, bychain.Snapshot | None]:
        """Each family's tables as its ``*-save`` prints them (read side by side), the
        chain whose rules alone they hold beside INPUT's (None: the whole table), and the
        chains as the kernel counted them at ``gen`` where they were asked.

        nf_tables hosts: kept with the generation they were read under (taken before the
        read). Every commit, by anyone, is a new generation, so while it holds a read
        returns these very rules; the same ``*-save`` files (their identity is in the key)
        print them the same way. With the parent INPUT, read by chain where the kernel's
        counts prove it whole and it saves reading many rules (:mod:`.bychain`; the
        chains are asked only then, not on every run). Legacy hosts: :meth:`_legacy_texts`.
        """
        memo = generation.Memo(self.ctx.state_dir / READ_MEMO)
        chain = self.settings.chain
        by_chain = gen is not None and not io.mangle and self.settings.parent == "INPUT"
        partial = self._read_key(gen, io.mangle, SAVE["nft"], chain) if by_chain else None
        kept = self._kept(memo, partial)
        if kept is not None:
            return kept, chain, None
        key = self._read_key(gen, io.mangle, SAVE["nft"])
        kept = self._kept(memo, key)
        if kept is not None:
            return kept, None, None
        snap = generation.chains(self.ctx.runner) if by_chain else None
        snap = snap if snap is not None and snap[0] == gen else None
        if snap is not None:
            read = bychain.read(io, self.families, chain, snap)
            if read is not None:
                memo.put(partial, read)
                return read, chain, snap
        texts = self._read_all(io)
        memo.put(key, texts)
        return texts, None, snap

    def _legacy_texts(self, io: LegacyIO) -> tuple[list[str], tuple[tuple[int, str], ...]]:
        """Legacy hosts: each family's texts, and the digests they were read under.

        The tables' digest (their blobs, counters zeroed: :mod:`cfallow.netfilter.xtables`)
        stands in for the generation legacy x_tables lack: texts kept under equal digests
        are what a read would return. The digest is taken under the xtables lock, and a
        read right after it under the same lock, so no writer that honours the lock can
        change a table between the two (without the lock: no digest, a read, as before).
        """
        memo = generation.Memo(self.ctx.state_dir / READ_MEMO)
        with io.holding() as held:  # briefly, unless the tables must be read
            now = {v: io.digest(v) for v in self.families} if held else {}
            key = self._legacy_key(io, now)
            kept = self._kept(memo, key)
            texts = kept if kept is not None else self._read_all(io)
        if kept is None:
            memo.put(key, texts)
        return texts, tuple((v, d.value) for v, d in now.items() if d is not None)

    def _legacy_key(self, io: LegacyIO, digests: dict[int, xtables.Digest | None]) -> str | None:
        found = [digests.get(v) for v in self.families]
        values = [d.value for d in found if d is not None]
        gen = "legacy/" + "/".join(values) if len(values) == len(self.families) else None
        return self._read_key(gen, io.mangle, io.save)

    def _kept(self, memo: generation.Memo, key: str | None) -> list[str] | None:
        kept = memo.get(key)
        if not isinstance(kept, list) or len(kept) != len(self.families):
            return None
        if not all(isinstance(text, str) for text in kept):
            return None
        return [str(text) for text in kept]

    def _read_all(self, io: NftIO | LegacyIO) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor  # only a read needs the threads

        def one(version: int) -> str:
            try:
                return io.read(version)
            except BackendError as exc:
                if version == 6 and "kernel support" in str(exc):
                    raise BackendError(f"{exc} (no IPv6 on this host? set ipv6 = false)") from None
                raise

        with ThreadPoolExecutor(len(self.families)) as pool:
            return list(pool.map(one, self.families))

    def _read_key(
        self, gen: str | None, mangle: bool, saves: Mapping[int, str], by_chain: str | None = None
    ) -> str | None:
        """The read memo's key for generation ``gen`` (None: no memo) and ``saves``' files;
        ``by_chain``: texts holding only INPUT's and that chain's rules."""
        tools = [binary(self.ctx.runner, saves[v]) for v in self.families]
        if by_chain is not None:
            tools += [binary(self.ctx.runner, COMMAND["nft"][v]) for v in self.families]
        ok = gen is not None and None not in tools
        parts: tuple[object, ...] = (self.name, mangle, self.families, tools)
        if by_chain is not None:
            parts += ("by chain", by_chain)
        return generation.key(gen if ok else None, *parts)

    def _memo_key(self, gen: str | None, *parts: object) -> str | None:
        return generation.key(gen, self.name, repr(self.settings), self.families, *parts)

    def _keep(self, parts: tuple[object, ...], value: object) -> None:
        """Note the analysis this read used, for :meth:`_carry`."""
        if self._last is not None:
            self._last.analysis = (parts, value)

    def _allow(
        self,
        variant: Variant,
        texts: list[str],
        tables: tuple[tuple[int, Table], ...],
        gen: str | None,
    ) -> tuple[str | None, tuple[str, ...]]:
        """Whether allow mode's accept takes effect (the analysis, or what the memo kept,
        under the ruleset's generation ``gen``, taken before the read).

        The key has the rules read in it: legacy tables have no generation.
        """
        memo = generation.Memo(self.ctx.state_dir / MEMO)
        digest = _rules_digest(tables, self.settings.chain)
        key = self._memo_key(gen, "allow", variant.kind, digest)
        kept = memo.get(key)
        if isinstance(kept, list) and len(kept) == 2:
            self._keep(("allow", variant.kind), kept)
            return (None if kept[0] is None else str(kept[0])), tuple(str(n) for n in kept[1])
        from cfallow.netfilter import host as hostfw  # the analysis: only when not kept

        from .advice import iptables_allow

        host = hostfw.read(
            self.ctx.runner,
            variant=variant.kind,
            saves=dict(zip(self.families, texts)),
            parsed=dict(tables),
        )
        s = self.settings
        error, notes = iptables_allow(host, self.families, s.protocol, s.ports, s.chain)
        memo.put(key, [error, list(notes)])
        self._keep(("allow", variant.kind), [error, list(notes)])
        return error, notes

    def _nat(self, variant: Variant, io: NftIO | LegacyIO, gen: str | None) -> tuple[str, ...]:
        """What the host's DNAT leaves open to a lockdown (the analysis, or what the memo kept).

        Legacy hosts: the key has the legacy nat tables' digest in it (the generation
        covers the native nft tables the analysis reads too), taken under the xtables
        lock before they are read.
        """
        memo = generation.Memo(self.ctx.state_dir / MEMO)
        s = self.settings
        with io.holding() if isinstance(io, LegacyIO) else contextlib.nullcontext(False) as held:
            key = self._memo_key(gen, "nat", variant.kind)
            if isinstance(io, LegacyIO):  # under the lock: the nat tables' digest, then their read
                now = legacy_digest(self.ctx.runner, NAT_TABLES) if held else None
                key = None if now is None else self._memo_key(gen, "nat", variant.kind, now.value)
            kept = memo.get(key)
            if isinstance(kept, list):
                self._keep(("nat", variant.kind), kept)
                return tuple(str(n) for n in kept)
            from cfallow.netfilter import nat as hostfw_nat  # the analysis: only when not kept

            rules = hostfw_nat.read(self.ctx.runner, variant.kind)
        hint = 'parent = "DOCKER-USER" guards forwarded connections'
        notes = hostfw_nat.notes(rules, self.families, s.protocol, s.ports, forward_hint=hint)
        memo.put(key, list(notes))
        self._keep(("nat", variant.kind), list(notes))
        return notes

    def diff(self, observed: Seen, desired: Networks | None) -> Plan[Step]:
        """Per family: observe the owned chain and jumps, assess towards ``desired``.

        ``None``: every jump into the chain and the chain itself, in each managed family.
        """
        said = [observed.variant.note] if observed.variant.note else []
        if desired is not None:
            managed = frozenset(n for n in desired if n.version in self.families)
            if managed != desired:
                said.append("IPv6 ranges left alone (ipv6 = false)")
            desired = managed
            s, tables = self.settings, observed.tables
            said += notes.asleep(observed.dormant, s)
            said += notes.elsewhere(tables, s)
            said += notes.hidden(observed.hidden, s)
            said += notes.uncovered(observed.nat, tables, s, self.families)
            said += self._allow_takes_effect(observed)
        current: set[IPNetwork] = set()
        drift: list[str] = []
        steps: list[Step] = []
        for version, table in observed.tables:
            obs = observe(table, version, self.settings)
            if desired is not None and _no_docker_ipv6(obs, self.settings, observed, table):
                said.append(DOCKER_NO_IPV6)
                desired = frozenset(n for n in desired if n.version != version)
                continue
            want = None if desired is None else family(desired, version)
            found, ops = _assess(table, version, self.settings, want)
            target = None if want is None else tuple(as_strings(want))
            current |= obs.current
            drift += found
            if not ops.empty:
                gen = observed.generation
                if observed.variant.kind == "legacy":
                    gen = dict(observed.digests).get(version)
                basis = table if gen is not None else None
                script, variant = ops.restore_script(), observed.variant
                steps.append(Step(version, target, script, variant, basis, gen))
        return make_plan(
            self.name,
            desired or frozenset(),
            frozenset(current),
            drift=drift,
            notes=said,
            steps=steps,
        )

    def _allow_takes_effect(self, observed: Seen) -> list[str]:
        """An accept here ends only iptables' own chain: refuse where another table drops."""
        if observed.allow is None:
            return []
        error, notes = observed.allow
        if error is not None:
            raise BackendError(error)
        return list(notes)

    def _hidden(
        self, gen: str, tables: tuple[tuple[int, Table], ...], snap: bychain.Snapshot | None
    ) -> tuple[tuple[int, int], ...] | None:
        """Per family, the references into cfallow's chain that the rules read do not show
        (:func:`.bychain.unshown`), kept for the generation they were counted at; ``snap``:
        the chains as the read already counted them at ``gen`` (else asked here). None:
        the kernel could not be asked (the next run asks again; this one is not said
        again without it)."""
        memo = generation.Memo(self.ctx.state_dir / REFS_MEMO)
        key = generation.key(gen, self.name, self.settings.chain, self.families, "hidden")
        kept = memo.get(key)
        if isinstance(kept, list):
            return tuple((int(v), int(n)) for v, n in kept)
        snap = snap or generation.chains(self.ctx.runner)
        if snap is None:
            return None
        if snap[0] != gen:  # moved since the read: said by the next run
            return ()
        out = bychain.unshown(tables, self.settings, snap)
        memo.put(key, [list(pair) for pair in out])
        return tuple(out)

    def apply(self, plan: Plan[Step]) -> None:
        """One transaction per family that needs one, from the table to the plan's target.

        The transaction is computed from a fresh read of the table, taken
        under the host-wide firewall lock (:mod:`cfallow.hostlock`) that is
        held until the write: another cfallow run (another state directory)
        cannot read the same table in between and insert a second jump. On
        legacy hosts the xtables lock is held inside it too, and the read
        carries the built-in policies' counters, which the batch sets back.
        Reading again makes ``apply`` idempotent.
        """
        if any(step.variant.kind == NONE.kind for step in plan.steps):
            raise NotInstalled(MISSING)
        with firewall_lock(self.ctx.firewall_lock):
            gens = {step.generation for step in plan.steps if step.variant.kind == "nft"}
            # nothing committed since the plan's read (checked once, before cfallow's own
            # commits move it): its tables are what a read under the lock would return
            before = None
            if len(gens) == 1 and None not in gens:
                before = generation.generation(self.ctx.runner)
            unmoved = before is not None and before in gens
            written: list[tuple[int, str]] = []
            for step in plan.steps:
                io = self.io(step.variant)
                compute = _Compute(self.settings, step)
                if isinstance(io, LegacyIO):  # its digest is checked under the xtables lock
                    wrote = io.transact(step.version, compute, step.basis, step.generation)
                else:
                    wrote = io.transact(step.version, compute, step.basis if unmoved else None)
                if wrote:
                    self.ctx.log.debug("%s: wrote %s (%s)", self.name, step.version, io.kind)
                    written.append((step.version, compute.script))
            if unmoved and before is not None and written:
                self._carry(before, written)

    def _carry(self, before: str, written: list[tuple[int, str]]) -> None:
        """Keep the tables (and the host analysis) for the generation after cfallow's own
        batches, where it is proven that nothing else committed since they were read.

        Proof: the generation under the lock before the first batch is the one the
        tables were read under, and after the last it is that plus one per table part
        written, each part adding or deleting a rule (a transaction of its own: exactly
        one generation, measured). Then the kernel holds the text read with the
        batches' lines applied (:func:`~.carry.replay`); anything it cannot replay is
        read again by the next run, as is everything after a failed batch.
        """
        last = self._last
        if last is None or last.generation != before:
            return
        from .carry import replay, sections  # only after a write: not on every run

        parts = [part for _, script in written for part in sections(script)]
        if not all(part.sure for part in parts):
            return
        after = generation.generation(self.ctx.runner)
        if generation.advanced(before, after) != len(parts):
            self.ctx.log.debug("%s: another commit beside cfallow's: read again", self.name)
            return
        texts, tables = list(last.texts), dict(last.tables)
        for version, script in written:
            i = self.families.index(version)
            done = replay(texts[i], script)
            if done is None:
                return
            texts[i] = done.text
            own = done.chains.get(("filter", self.settings.chain))
            if own is not None:
                chains = tuple(
                    (n, own if n == self.settings.chain else r) for n, r in tables[version].chains
                )
                tables[version] = replace(tables[version], chains=chains)
        mangle = self.settings.parent == "DOCKER-USER"
        key = self._read_key(after, mangle, SAVE["nft"], last.by_chain)
        generation.Memo(self.ctx.state_dir / READ_MEMO).put(key, texts)
        if last.analysis is None:
            return
        (what, *rest), value = last.analysis
        only_own = all(p.table == "filter" and p.chains() == {self.settings.chain} for p in parts)
        if what == "allow" and only_own:  # its answer reads INPUT and chain names, not the chain
            digest = _rules_digest(
                tuple((v, tables[v]) for v in self.families), self.settings.chain
            )
            key = self._memo_key(after, what, *rest, digest)
        elif what == "nat":  # the NAT tables: cfallow writes filter and mangle only
            key = self._memo_key(after, what, *rest)
        else:
            return
        generation.Memo(self.ctx.state_dir / MEMO).put(key, value)


DOCKER_NO_IPV6 = (
    "IPv6: ip6tables has no DOCKER-USER chain (Docker runs without IPv6, its default), "
    "so no IPv6 traffic reaches a container and IPv6 is left alone; "
    "set ipv6 = false to say so"
)


def _rules_digest(tables: tuple[tuple[int, Table], ...], own: str) -> str:
    """The digest of the tables' rules and policies, not of the text (it carries a time
    stamp and the counters); fed rule by rule, so 100,000 rules never become one string.

    Of cfallow's own chain ``own`` only the name: allow mode's analysis reads INPUT (a
    jump into ``own`` is skipped) and the chains' names, never that chain's rules, so a
    sync that only rewrote them keeps the analysis. (It names INPUT's rules by their
    line in the save text; ``*-save`` prints the built-in chains' rules before any user
    chain's, so those lines do not move with ``own``'s rules.)"""
    h = hashlib.sha256()
    for version, table in tables:
        h.update(f"\0{version}\0".encode())
        for policy in table.policies:
            h.update(policy.split(" [")[0].encode() + b"\0")
        for name, rules in table.chains:
            h.update(f"\1{name}\0".encode())
            if name == own:
                continue
            for rule in rules:
                h.update(rule.encode() + b"\n")
    return h.hexdigest()


def _no_docker_ipv6(obs: Owned, settings: Settings, seen: Seen, table: Table) -> bool:
    """Docker without IPv6 makes DOCKER-USER in the IPv4 filter table only. Where neither
    family has it yet (a boot before dockerd), cfallow creates both, as Docker would.
    Docker 20.10 with ``ip6tables`` makes its IPv6 chains but no DOCKER-USER there:
    its published IPv6 ports are open, so cfallow creates DOCKER-USER for IPv6 too."""
    docker_v4 = any(v == 4 and t.rules("DOCKER-USER") is not None for v, t in seen.tables)
    docker_v6 = any(table.rules(c) is not None for c in ("DOCKER", "DOCKER-ISOLATION-STAGE-1"))
    return (
        obs.version == 6
        and settings.parent == "DOCKER-USER"
        and not obs.parent_exists
        and docker_v4
        and not docker_v6
    )


@dataclass
class _Compute:
    settings: Settings
    step: Step
    script: str = ""  # the batch computed (what ``transact`` writes when not empty)

    def __call__(self, table: Table) -> Ops:
        version, target = self.step.version, self.step.target
        want = None if target is None else frozenset(parse_cidr(c, version) for c in target)
        ops = _assess(table, version, self.settings, want)[1]
        self.script = ops.restore_script()
        return ops


def _assess(
    table: Table, version: int, settings: Settings, want: frozenset[IPNetwork] | None
) -> tuple[list[str], Ops]:
    """Drift and the one batch for one family: the filter part, then the mangle guard
    (``want`` ``None``: removal)."""
    obs = observe(table, version, settings)
    if want is None:
        found, ops = assess_removal(obs, settings)
    else:
        found, ops = assess(obs, settings, want)
    forward = replace(settings, parent="FORWARD")
    mangle = None if table.mangle is None else observe(table.mangle, version, forward)
    more, guard = assess_guard(mangle, settings, want, first=obs.chain is None)
    return found + more, replace(ops, guard=guard)
