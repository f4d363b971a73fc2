"""Backend ``iptables``: Cloudflare's ranges in an owned ``CFALLOW`` chain, IPv4 and IPv6.

cfallow owns, per family, the chain ``CFALLOW`` in the filter table and exactly
one jump into it at position 1 of the parent chain (``INPUT``, or
``DOCKER-USER``), limited to the configured protocol and ports::

    -A INPUT -p tcp -m multiport --dports 80,443 -m comment --comment cfallow -j CFALLOW
    -A CFALLOW -s 173.245.48.0/20 -j ACCEPT
    ...

Every other rule, chain, counter and policy stays as it was. Each change is one
transaction per family: ``iptables-nft-restore --noflush`` on nf_tables hosts,
``iptables-legacy-restore --noflush`` under the xtables lock on legacy hosts
(the same batch). An unchanged chain means no write at all. The variant is
what ``iptables --version`` says, so rules land where the admin's own
``iptables`` shows them.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from netaddr import IPNetwork, IPSet

from cfallow.backend import Backend, Context
from cfallow.config import Section, parse_ports
from cfallow.errors import BackendError, ConfigError, ValidationError
from cfallow.hostlock import firewall_lock
from cfallow.model import Networks, Plan, as_strings, make_plan, parse_cidr

from .iptables_diff import Ops, assess, assess_removal
from .iptables_legacy import LegacyIO
from .iptables_nft import NftIO
from .iptables_rules import (
    Observed,
    Settings,
    Table,
    check_chain_name,
    check_parent,
    observe,
    parse_save,
    port_slots,
)

PROTOCOLS = ("tcp", "udp", "sctp", "dccp", "udplite")  # the ones multiport takes
LEGACY_SAVE = {4: "iptables-legacy-save", 6: "ip6tables-legacy-save"}
OLD_SAVE = {4: "iptables-save", 6: "ip6tables-save"}
LEGACY_RESTORE = {4: "iptables-legacy-restore", 6: "ip6tables-legacy-restore"}
OLD_RESTORE = {4: "iptables-restore", 6: "ip6tables-restore"}


def detect(version_text: str) -> tuple[str, bool]:
    """``iptables --version`` -> (``nft``|``legacy``, whether the ``*-legacy-*`` tools exist)."""
    text = version_text.strip()
    if "(nf_tables)" in text:
        return "nft", False
    if "(legacy)" in text:
        return "legacy", True
    try:
        major, minor = (int(x) for x in text.split(" v", 1)[1].split(".")[:2])
    except (IndexError, ValueError):
        raise BackendError(f"cannot tell the iptables variant from {text!r}") from None
    if (major, minor) < (1, 8):
        return "legacy", False
    raise BackendError(f"cannot tell the iptables variant from {text!r}")


@dataclass(frozen=True)
class Step:
    """Plan step: bring one family to ``target`` (CIDR strings), or remove it (``None``)."""

    version: int
    target: tuple[str, ...] | None
    script: str  # the transaction as planned (restore syntax), for logs and reports


class IptablesBackend(Backend[None, Step]):
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
            also_allow=tuple(sorted(set(also), key=lambda n: (n.version, n.value, n.prefixlen))),
            adopt=section.get_bool("adopt_chain", False),
        )
        self._check_reach(where, lockdown_ssh=section.get_bool("lockdown_ssh", False))
        self.families = (4, 6) if section.get_bool("ipv6", True) else (4,)
        self.variant = section.get_choice("variant", "auto", ("auto", "nft", "legacy"))
        self.writes = 0  # transactions written by this instance
        self._io: NftIO | LegacyIO | None = None
        self._notes: list[str] = []
        self._read_ahead: dict[int, str] = {}

    def _check_reach(self, where: str, *, lockdown_ssh: bool) -> None:
        """Refuse settings that silently undo the allowlist or lock the admin out."""
        s = self.settings
        for version, size in ((4, 2**32), (6, 2**128)):
            if IPSet(n for n in s.also_allow if n.version == version).size == size:
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

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """Is an iptables binary on PATH?"""
        if shutil.which("iptables") is None:
            return False, "iptables is not installed"
        return True, "iptables found"

    def write_paths(self) -> tuple[Path, ...]:
        """cfallow's firewall lock and the legacy xtables lock."""
        return (self.ctx.firewall_lock, Path("/run/xtables.lock"))

    # -- variant ------------------------------------------------------------------
    def _open(self) -> NftIO | LegacyIO:
        if self._io is not None:
            return self._io
        runner = self.ctx.runner
        try:
            text = runner.run(["iptables", "--version"]).stdout
            detected, legacy_tools = detect(text)
        except BackendError as exc:
            if self.variant == "auto":
                if any(s in str(exc).lower() for s in ("command not found", "no such file")):
                    raise BackendError(
                        "no iptables command found (install the iptables package)"
                    ) from None
                raise
            text, detected, legacy_tools = "", self.variant, True
        kind = detected if self.variant == "auto" else self.variant
        legacy_tools = legacy_tools or detected != "legacy"  # pre-1.8 hosts have no *-legacy-*
        if kind != detected:
            note = (
                f"variant = {kind}, but this host's iptables is {detected} ({text.strip()}): "
                f"rules in the {kind} tables are enforced (their DROPs drop; their ACCEPTs "
                f"cannot undo a DROP in the {detected} tables) but the admin's iptables "
                "command does not list them"
            )
            self.ctx.log.warning("%s: %s", self.name, note)
            self._notes.append(note)
        if kind == "nft":
            self._io = NftIO(runner)
        else:
            tools = (LEGACY_SAVE, LEGACY_RESTORE) if legacy_tools else (OLD_SAVE, OLD_RESTORE)
            self._io = LegacyIO(runner, *tools, chain=self.settings.chain)
        return self._io

    def _read(self, version: int) -> str:
        text = self._read_ahead.pop(version, None)
        return text if text is not None else self._open().read(version)

    def check(self) -> None:
        """Variant, tools, privileges, kernel support: one read per family (reused by ``plan``)."""
        self._open()
        with ThreadPoolExecutor(len(self.families)) as pool:
            texts = pool.map(self._first_read, self.families)
            self._read_ahead = dict(zip(self.families, texts))

    def _first_read(self, version: int) -> str:
        try:
            return self._open().read(version)
        except BackendError as exc:
            if version == 6 and "kernel support" in str(exc):
                raise BackendError(f"{exc} (no IPv6 on this host? set ipv6 = false)") from None
            raise

    # -- plan / apply ---------------------------------------------------------------
    def read(self) -> None:
        """Transitional: the reads still happen in :meth:`diff` (see ``_plan``)."""
        return None

    def diff(self, observed: None, desired: Networks | None) -> Plan[Step]:
        """Read the owned chain and jumps of each family; the range diff plus any drift.

        ``None``: every jump into the chain and the chain itself, in each managed family.
        """
        if desired is None:
            return self._plan(None)
        managed = frozenset(n for n in desired if n.version in self.families)
        extra = () if managed == desired else ("IPv6 ranges left alone (ipv6 = false)",)
        return self._plan(managed, extra)

    def _plan(self, desired: Networks | None, extra_notes: tuple[str, ...] = ()) -> Plan[Step]:
        """Per family: observe, then assess towards ``desired`` (``None``: removal)."""
        current: set[IPNetwork] = set()
        drift: list[str] = []
        steps: list[Step] = []
        notes: list[str] = []
        for version in self.families:
            obs = observe(self._parse(version), version, self.settings)
            if desired is not None and _no_docker_ipv6(obs, self.settings):
                notes.append(DOCKER_NO_IPV6)
                desired = frozenset(n for n in desired if n.version != version)
                continue
            if desired is None:
                found, ops = assess_removal(obs, self.settings)
                target: tuple[str, ...] | None = None
            else:
                want = frozenset(n for n in desired if n.version == version)
                found, ops = assess(obs, self.settings, want)
                target = tuple(as_strings(want))
            current |= obs.current
            drift += found
            if not ops.empty:
                steps.append(Step(version, target, ops.restore_script()))
        return make_plan(
            self.name,
            desired or frozenset(),
            frozenset(current),
            drift=drift,
            # after the loop: opening the variant may have added a note
            notes=[*self._notes, *extra_notes, *notes],
            steps=steps,
        )

    def apply(self, plan: Plan[Step]) -> None:
        """One transaction per family that needs one, from the table to the plan's target.

        The transaction is computed from a fresh read of the table, taken
        under the host-wide firewall lock (:mod:`cfallow.hostlock`) that is
        held until the write: another cfallow run (another state directory)
        cannot read the same table in between and insert a second jump. On
        legacy hosts the xtables lock is held inside it too. Reading again
        makes ``apply`` idempotent. On legacy hosts the read also carries the
        built-in policies' counters, which the restore batch sets back.
        """
        io = self._open()
        steps = list(plan.steps)
        if not all(isinstance(step, Step) for step in steps):
            raise BackendError(f"not an iptables plan: {steps!r}")
        with firewall_lock(self.ctx.firewall_lock):
            for step in steps:
                assert isinstance(step, Step)
                if io.transact(step.version, _Compute(self.settings, step)):
                    self.writes += 1
                    self.ctx.log.debug("%s: wrote %s (%s)", self.name, step.version, io.kind)

    def _parse(self, version: int) -> Table:
        text = self._read(version)
        if isinstance(self._io, LegacyIO):
            return self._io.parse(version, text)
        return parse_save(text)


DOCKER_NO_IPV6 = (
    "IPv6: ip6tables has no DOCKER-USER chain (Docker runs without IPv6, its default), "
    "so no IPv6 traffic reaches a container and IPv6 is left alone; "
    "set ipv6 = false to say so"
)


def _no_docker_ipv6(obs: Observed, settings: Settings) -> bool:
    """Docker without IPv6 makes DOCKER-USER in the IPv4 filter table only."""
    return obs.version == 6 and settings.parent == "DOCKER-USER" and not obs.parent_exists


@dataclass(frozen=True)
class _Compute:
    settings: Settings
    step: Step

    def __call__(self, table: Table) -> Ops:
        obs = observe(table, self.step.version, self.settings)
        if self.step.target is None:
            return assess_removal(obs, self.settings)[1]
        want = frozenset(parse_cidr(c, self.step.version) for c in self.step.target)
        return assess(obs, self.settings, want)[1]
