"""The iptables backend's pure part: render cfallow's chain and jump, read them back, diff.

Both variants print a table the same way (``iptables-save`` format), so reading
is one parser for both; writing is one :class:`Ops` value that both writers
turn into the same ``iptables-restore --noflush`` batch. Nothing here runs a
command.

cfallow owns, per family, the chain ``settings.chain`` in ``filter`` and every
rule that jumps into it; exactly one jump is wanted, at position 1 of the
parent chain. The jumps (from INPUT one per configured port, matched on the
port the client connected to, before NAT, and one for untracked packets) are
the parent's first rules. The chain holds one ``-s CIDR -j ACCEPT`` per
Cloudflare range (in any order), then the tail: ``also_allow`` accepts and, in lockdown, the
loopback and established returns and the final DROP.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from netaddr import IPNetwork

from cfallow.errors import (
    ValidationError,
)
from cfallow.model import family, ordered, parse_cidr
from cfallow.section import PortRange

from .save import Table, target_of

COMMENT = "cfallow"
ALSO_COMMENT = "cfallow-also-allow"
BUILTIN = ("INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING")
#: The chains a jump into cfallow's chain makes sense from: traffic to this host
#: (INPUT) and to Docker's published ports (DOCKER-USER, limited to DNAT'ed
#: connections). FORWARD is refused: a port-limited jump there would also
#: catch the connections routed hosts make out to any web server.
PARENTS = ("INPUT", "DOCKER-USER")
#: Every xtables target name (the standard verdicts and the target extensions
#: iptables 1.8 ships): a chain of that name would be ambiguous after ``-j``.
_TARGET_NAMES = """
ACCEPT DROP RETURN QUEUE REJECT LOG ULOG NFLOG NFQUEUE AUDIT CHECKSUM CLASSIFY CLUSTERIP
CONNMARK CONNSECMARK CT DNAT DNPT DSCP ECN HL HMARK IDLETIMER LED MARK MASQUERADE NETMAP
NOTRACK RATEEST REDIRECT SECMARK SET SNAT SNPT SYNPROXY TCPMSS TCPOPTSTRIP TEE TOS TPROXY
TRACE TTL STANDARD ERROR
"""
TARGETS = frozenset(_TARGET_NAMES.split())
CHAIN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,27}$")
LOCKDOWN_TAIL = (
    "-i lo -j RETURN",
    "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
    "-j DROP",
)
FAMILY = {4: "IPv4", 6: "IPv6"}


@dataclass(frozen=True)
class OwnRule:
    """One rule cfallow writes, as structured fields (the legacy writer builds it from these)."""

    target: str
    source: str | None = None
    in_iface: str | None = None
    protocol: str | None = None
    dports: str | None = None
    ctstate: str | None = None
    origport: str | None = None  # conntrack's original destination port (before NAT)
    comment: str | None = None

    def spec(self) -> str:
        """The rule as ``iptables-save`` prints it (after ``-A CHAIN``)."""
        parts: list[str] = []
        if self.source:
            parts += ["-s", self.source]
        if self.in_iface:
            parts += ["-i", self.in_iface]
        if self.protocol:
            parts += ["-p", self.protocol]
        if self.dports:
            parts += ["-m", "multiport", "--dports", self.dports]
        if self.ctstate:
            parts += ["-m", "conntrack", "--ctstate", self.ctstate]
        if self.origport:
            parts += ["-m", "conntrack", "--ctorigdstport", self.origport]
        if self.comment:
            parts += ["-m", "comment", "--comment", self.comment]
        return " ".join([*parts, "-j", self.target])


def accept(net: IPNetwork, comment: str | None = None) -> OwnRule:
    """``-s NET [-m comment --comment C] -j ACCEPT``."""
    return OwnRule("ACCEPT", source=str(net), comment=comment)


@dataclass(frozen=True)
class Settings:
    """What the config says cfallow's chain and jump look like (validated)."""

    chain: str = "CFALLOW"
    parent: str = "INPUT"
    protocol: str = "tcp"
    ports: tuple[PortRange, ...] = (PortRange(80, 80), PortRange(443, 443))
    mode: str = "allow"
    also_allow: tuple[IPNetwork, ...] = ()
    adopt: bool = False  # adopt_chain: take over an existing chain without cfallow's marks

    def jumps(self) -> tuple[OwnRule, ...]:
        """The jumps from the parent chain (the first rules of it, in this order).

        From INPUT: one per port (or range) the client connected to, matched on
        conntrack's original destination (``--ctorigdstport``), so an admin's
        NAT (``--dport 443 -j REDIRECT --to-ports 8443``) cannot take a locked
        port out of the chain; then one for packets conntrack does not follow
        (the admin's ``NOTRACK``), which have no original tuple, on their port.
        From DOCKER-USER (in FORWARD) one jump limited to connections that
        came in through a published port (``--ctstate DNAT``): without that,
        lockdown would drop the containers' own outgoing connections to port
        443 elsewhere.
        """
        dports = ",".join(str(p).replace("-", ":") for p in self.ports)
        if self.parent in ("DOCKER-USER", "FORWARD"):  # FORWARD: the mangle guard
            return (
                OwnRule(
                    self.chain,
                    protocol=self.protocol,
                    dports=dports,
                    ctstate="DNAT",
                    comment=COMMENT,
                ),
            )
        own = [
            OwnRule(
                self.chain,
                protocol=self.protocol,
                origport=str(p).replace("-", ":"),
                comment=COMMENT,
            )
            for p in self.ports
        ]
        own.append(
            OwnRule(
                self.chain,
                protocol=self.protocol,
                dports=dports,
                ctstate="UNTRACKED",
                comment=COMMENT,
            )
        )
        return tuple(own)

    def guard(self) -> Settings | None:
        """The same chain in the mangle table, jumped to from its FORWARD (lockdown in
        DOCKER-USER only): Docker never reorders mangle, so the drop holds while
        Docker's own FORWARD rules are above ``-j DOCKER-USER`` (20.10, IPv6). An
        allow-mode chain restricts nothing, so it needs no guard."""
        if self.parent != "DOCKER-USER" or self.mode != "lockdown":
            return None
        return replace(self, parent="FORWARD")

    def tail(self, version: int) -> tuple[OwnRule, ...]:
        """The rules after the Cloudflare accepts, for one family."""
        rules = [accept(n, ALSO_COMMENT) for n in ordered(family(self.also_allow, version))]
        if self.mode == "lockdown":
            rules += [
                OwnRule("RETURN", in_iface="lo"),
                OwnRule("RETURN", ctstate="RELATED,ESTABLISHED"),
                OwnRule("DROP"),
            ]
        return tuple(rules)

    def chain_rules(self, version: int, nets: Iterable[IPNetwork]) -> tuple[OwnRule, ...]:
        """The whole chain for ``nets`` (the Cloudflare ranges of this family)."""
        return tuple(accept(n) for n in ordered(nets)) + self.tail(version)


def check_chain_name(name: str, key: str) -> str:
    """Refuse a name iptables would refuse, a target's name, or a built-in chain's."""
    if not CHAIN_NAME.match(name):
        raise ValueError(f"{key}: not a usable chain name: {name!r}")
    if name.upper() in TARGETS:
        raise ValueError(f"{key}: not a usable chain name: {name!r} is an iptables target")
    if key == "chain" and name in BUILTIN:
        raise ValueError(f"chain: {name!r} is not a chain cfallow can own (a built-in chain)")
    return name


def check_parent(name: str) -> str:
    """``parent`` must be one of :data:`PARENTS`."""
    if name not in PARENTS:
        raise ValueError(
            f"parent: must be one of {', '.join(PARENTS)}, got {name!r} (a jump from "
            f"{name} would not mean 'traffic to this host's web ports')"
        )
    return name


def port_slots(ports: tuple[PortRange, ...]) -> int:
    """multiport takes at most 15 slots; a range takes two."""
    return sum(1 if p.first == p.last else 2 for p in ports)


# -- reading -----------------------------------------------------------------


def accept_source(spec: str, version: int, comment: str | None) -> IPNetwork | None:
    tokens = spec.split()
    want = ["-m", "comment", "--comment", comment] if comment else []
    if len(tokens) != 4 + len(want) or tokens[:1] != ["-s"]:
        return None
    if tokens[2:-2] != want or tokens[-2:] != ["-j", "ACCEPT"]:
        return None
    try:
        return parse_cidr(tokens[1], version)
    except ValidationError:
        return None


@dataclass(frozen=True)
class Located:
    """A rule found in the table: chain, 0-based index, spec."""

    chain: str
    index: int
    spec: str


@dataclass(frozen=True)
class Owned:
    """What cfallow owns in one family's table."""

    version: int
    chain: tuple[str, ...] | None  # the owned chain's specs; None: no such chain
    jumps: tuple[Located, ...]  # every rule in the table that jumps into it
    parent_exists: bool
    #: parent DOCKER-USER: where FORWARD has ``-j DOCKER-USER`` (0-based positions)
    forward: tuple[int, ...] = ()

    @property
    def current(self) -> frozenset[IPNetwork]:
        """The Cloudflare ranges the chain accepts now."""
        found = (accept_source(s, self.version, None) for s in self.chain or ())
        return frozenset(n for n in found if n is not None)


Observed = Owned  # 0.1's name (deprecated)


def is_own_shape(spec: str, version: int) -> bool:
    """A rule of a shape cfallow writes into its chain (a range, an also_allow, the tail)."""
    return (
        spec in LOCKDOWN_TAIL
        or accept_source(spec, version, None) is not None
        or accept_source(spec, version, ALSO_COMMENT) is not None
    )


def is_own_jump(spec: str) -> bool:
    """A jump carrying cfallow's comment."""
    if COMMENT not in spec:  # nearly every rule of a big ruleset: no split
        return False
    tokens = spec.split()
    return any(a == "--comment" and b == COMMENT for a, b in zip(tokens, tokens[1:]))


def foreign_chain(obs: Owned, settings: Settings) -> str | None:
    """Why an existing chain is not cfallow's to change (``None``: it is, or it is adopted).

    cfallow's marks: a jump into the chain with the comment ``cfallow`` (cfallow
    writes chain and jump in one transaction, so a chain it made has one), or,
    with nothing jumping into the chain, rules all of the shapes cfallow
    writes (an empty chain too): nothing of anyone else's is lost then, and a
    jump the admin deleted by hand is put back.
    """
    if obs.chain is None or settings.adopt or any(is_own_jump(j.spec) for j in obs.jumps):
        return None
    others = [s for s in obs.chain if not is_own_shape(s, obs.version)]
    if not obs.jumps and not others:
        return None
    what = [f"{len(obs.chain)} rule(s)"]
    if others:
        what.append(f"e.g. {others[0][:60]}")
    if obs.jumps:
        what.append(f"jumped to from {obs.jumps[0].chain} without the {COMMENT} comment")
    return (
        f"{FAMILY[obs.version]}: chain {settings.chain} exists and is not cfallow's "
        f"({'; '.join(what)}): choose another chain name, or set adopt_chain = true "
        "to let cfallow replace it"
    )


def observe(table: Table, version: int, settings: Settings) -> Owned:
    """Pick out what cfallow owns from a parsed table."""
    jumps = tuple(
        Located(name, i, spec)
        for name, rules in table.chains
        for i, spec in enumerate(rules)
        if settings.chain in spec and target_of(spec) == settings.chain  # cheap test first
    )
    parent_exists = table.rules(settings.parent) is not None or settings.parent in BUILTIN
    forward: tuple[int, ...] = ()
    if settings.parent == "DOCKER-USER":
        into = f"-j {settings.parent}"
        forward = tuple(i for i, spec in enumerate(table.rules("FORWARD") or ()) if spec == into)
    return Owned(version, table.rules(settings.chain), jumps, parent_exists, forward)
