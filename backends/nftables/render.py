"""Text cfallow hands to ``nft``: the lockdown table, the sets-mode include, element changes.

Every rule of cfallow's own chains carries the comment ``cfallow:<digest of the
rule>``, so a hand edit or a config change (ports, priority, docker) reads back
as drift without depending on how a given nft version prints rules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from netaddr import IPNetwork

from cfallow.model import as_strings, family
from cfallow.section import PortRange

SET_TYPE = {4: "ipv4_addr", 6: "ipv6_addr"}
NFPROTO = {4: "ipv4", 6: "ipv6"}
SADDR = {4: "ip saddr", 6: "ip6 saddr"}
HEADER = "# Managed by cfallow: rewritten on every change; do not edit.\n"
#: The comment on every set cfallow creates in the admin's table (sets mode): its mark.
SET_MARK = "cfallow"


@dataclass(frozen=True)
class Settings:
    """What the nftables backend was configured with."""

    mode: str  # "lockdown" or "sets"
    table: str  # "inet cfallow" (lockdown) or the admin's table ("inet filter")
    families: tuple[int, ...]
    protocol: str
    ports: tuple[PortRange, ...]
    set_names: tuple[tuple[int, str], ...]  # (version, name)
    also_allow: tuple[IPNetwork, ...]
    docker: bool
    priority: int
    adopt_set: bool = False  # sets mode: take a set of the configured name without the mark

    def set_name(self, version: int) -> str:
        """The Cloudflare set of IPv``version``."""
        return dict(self.set_names)[version]

    @property
    def port_list(self) -> str:
        """``{ 80, 443 }``."""
        return "{ " + ", ".join(str(p) for p in self.ports) + " }"


def also_name(version: int) -> str:
    """The lockdown table's set for ``also_allow`` entries."""
    return f"also_allow_v{version}"


def tag(rule: str) -> str:
    """The comment that marks (and fingerprints) one of cfallow's rules."""
    return "cfallow:" + hashlib.sha256(rule.encode()).hexdigest()[:12]


def _elements(nets: Iterable[IPNetwork], indent: str) -> str:
    items = as_strings(nets)
    if not items:
        return ""
    return f"{indent}elements = {{ " + f",\n{indent}             ".join(items) + " }\n"


def set_block(
    name: str, version: int, nets: Iterable[IPNetwork], indent: str = "\t", *, mark: bool = False
) -> str:
    """``set NAME { type ...; flags interval; elements = {...} }`` (never ``auto-merge``).

    ``mark``: with ``comment "cfallow"`` (sets mode: how a later read knows the set is cfallow's).
    """
    inner = indent + "\t"
    comment = f'{inner}comment "{SET_MARK}"\n' if mark else ""
    return (
        f"{indent}set {name} {{\n{inner}type {SET_TYPE[version]}\n{inner}flags interval\n"
        + comment
        + _elements(nets, inner)
        + f"{indent}}}\n"
    )


def chain_rules(s: Settings) -> dict[str, tuple[str, ...]]:
    """Lockdown: the rules (without comment) of each chain, in order."""
    proto = f"meta l4proto {s.protocol}"
    dports = (
        f"{s.protocol} dport {s.port_list}"
        if s.protocol in ("tcp", "udp", "sctp")
        else (f"{proto} th dport {s.port_list}")
    )
    # The port the client connected to, before any prerouting NAT: an admin's
    # "dport 443 redirect to :8443" must not take 443 out of the lockdown. One rule
    # per port: nft 1.0.6 lists an anonymous set of ct proto-dst as "0x50 [invalid
    # type]", which no "nft list ruleset > file" could load again. The protocol goes
    # first ("tcp flags" for tcp: nft prints "meta l4proto tcp" away when a tcp match
    # follows, and "ct original proto-dst 80" alone does not load again).
    flags = "tcp flags & (fin | syn | rst | ack) == syn"
    first = flags if s.protocol == "tcp" else proto
    originals = [f"{first} ct original proto-dst {p}" for p in s.ports]

    def outside(v: int) -> str:
        return f"{SADDR[v]} != @{s.set_name(v)} {SADDR[v]} != @{also_name(v)} drop"

    # Only a TCP SYN opens a connection: where conntrack starts with this table, a
    # connection opened before it is picked up mid-stream as "new" and must not be cut.
    syn = f" {flags}" if s.protocol == "tcp" else ""
    inp = ['iif "lo" accept', "ct state established,related accept"]
    for v in s.families:
        inp += [f"meta nfproto {NFPROTO[v]} {o} {outside(v)}" for o in originals]
        # a packet conntrack does not follow (the admin's notrack) has no original tuple
        inp.append(f"meta nfproto {NFPROTO[v]} ct state untracked {dports}{syn} {outside(v)}")
    chains = {"input": tuple(inp)}
    if s.docker:
        fwd = ["ct state established,related accept"]
        fwd += [
            f"ct status dnat meta nfproto {NFPROTO[v]} {proto} ct original proto-dst {p} "
            f"{outside(v)}"
            for v in s.families
            for p in s.ports
        ]
        chains["forward"] = tuple(fwd)
    return chains


def chain_tags(s: Settings) -> dict[str, tuple[str, ...]]:
    """The comment of every rule of each chain, in order (what a read must find)."""
    return {name: tuple(tag(r) for r in rules) for name, rules in chain_rules(s).items()}


def lockdown_table(s: Settings, want: dict[int, frozenset[IPNetwork]]) -> str:
    """The whole lockdown table; loading it replaces any earlier one in the same transaction."""
    body = ""
    for v in s.families:
        body += set_block(s.set_name(v), v, want.get(v, ()))
        body += set_block(also_name(v), v, family(s.also_allow, v))
    for name, rules in chain_rules(s).items():
        body += (
            f"\tchain {name} {{\n\t\ttype filter hook {name} priority {s.priority}; "
            "policy accept;\n"
        )
        body += "".join(f'\t\t{r} comment "{tag(r)}"\n' for r in rules)
        body += "\t}\n"
    # "table X" then "delete table X": the file loads whether or not the table exists
    # (nft 1.0.6 has no "destroy"), and never adds a second copy of the rules.
    return HEADER + f"table {s.table}\ndelete table {s.table}\ntable {s.table} {{\n{body}}}\n"


def sets_include(s: Settings, want: dict[int, frozenset[IPNetwork]]) -> str:
    """Sets mode: the set definitions to ``include`` inside the admin's table block."""
    return HEADER + "".join(
        set_block(s.set_name(v), v, want.get(v, ()), "", mark=True) for v in s.families
    )


def element_ops(
    table: str, name: str, add: Iterable[IPNetwork], remove: Iterable[IPNetwork]
) -> list[str]:
    """``delete element`` then ``add element`` lines for one set (one transaction)."""
    lines = []
    gone, new = as_strings(remove), as_strings(add)
    if gone:
        lines.append(f"delete element {table} {name} {{ {', '.join(gone)} }}")
    if new:
        lines.append(f"add element {table} {name} {{ {', '.join(new)} }}")
    return lines


def add_set(table: str, name: str, version: int) -> str:
    """Create an empty interval set, with cfallow's mark."""
    return (
        f"add set {table} {name} {{ type {SET_TYPE[version]}; flags interval; "
        f'comment "{SET_MARK}"; }}'
    )


def script(lines: Sequence[str]) -> str:
    """One ``nft -f -`` transaction."""
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)
