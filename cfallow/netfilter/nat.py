"""The host's destination NAT, read once (read-only), and what it means for a lockdown.

Both lockdowns match the port a client connected to (conntrack's original
destination), so an admin's ``dport 443 redirect to :8443`` keeps 443 locked.
What that leaves to the admin, and what :func:`notes` names one line per rule:
connections NAT moves *onto* a locked port from a port the lockdown does not
cover (``8443 -> 443``: not restricted), and connections to a locked port that
NAT sends to another address (forwarded: the input hook never sees them).

:func:`read` collects prerouting DNAT/redirect rules of the native nft tables
(``nft -j``) and of iptables' ``nat`` table (``iptables-save -t nat``, the
variant in use); the rest is pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cfallow.errors import BackendError, CommandNotFound
from cfallow.model import FAMILY_NAME
from cfallow.netfilter.evaluate import Json
from cfallow.netfilter.host import XT_CHAINS, XT_TABLES, read_variant
from cfallow.netfilter.save import save_tools
from cfallow.runner import Runner
from cfallow.section import PortRange

PortSet = tuple[PortRange, ...]


@dataclass(frozen=True)
class NatRule:
    """One rule that rewrites the destination of new connections."""

    where: str  # "inet adminnat prerouting", "ip nat PREROUTING"
    versions: tuple[int, ...]  # the IP versions it applies to
    protocol: str | None  # None: any protocol
    dports: PortSet | None  # the ports it matches (None: any port, or cannot tell)
    to_port: PortSet | None  # where it sends them (None: the port is kept)
    to_addr: str | None  # None: this host (redirect)


def _ports(right: Json) -> PortSet | None:
    if isinstance(right, int):
        return (PortRange(right, right),)
    if isinstance(right, Mapping) and "range" in right:
        lo, hi = right["range"]
        return (PortRange(int(lo), int(hi)),) if isinstance(lo, int) else None
    if isinstance(right, Mapping) and "set" in right:
        found = [_ports(r) for r in right["set"]]
        if any(f is None for f in found):
            return None
        return tuple(p for f in found if f for p in f)
    return None


def _nft_rule(where: str, versions: tuple[int, ...], expr: Sequence[Json]) -> NatRule | None:
    proto: str | None = None
    dports: PortSet | None = None
    for e in expr:
        if not isinstance(e, Mapping):
            continue
        if "match" in e:
            m = e["match"]
            left = m.get("left", {})
            pl = left.get("payload", {}) if isinstance(left, Mapping) else {}
            if pl.get("field") == "dport":
                if pl.get("protocol") != "th":
                    proto = pl.get("protocol")
                dports = _ports(m.get("right")) if m.get("op", "==") in ("==", "in") else None
            elif isinstance(left, Mapping) and left.get("meta", {}).get("key") == "l4proto":
                right = m.get("right")
                proto = right if isinstance(right, str) and m.get("op", "==") == "==" else proto
        elif "redirect" in e or "dnat" in e:
            body = e.get("redirect") or e.get("dnat") or {}
            port = _ports(body.get("port")) if "port" in body else None
            addr = body.get("addr") if "dnat" in e else None
            fam = {"ip": (4,), "ip6": (6,)}.get(str(body.get("family")), versions)
            return NatRule(where, fam, proto, dports, port, str(addr) if addr else None)
    return None


def parse_nft(tables: Mapping[tuple[str, str], str]) -> list[NatRule]:
    """The DNAT/redirect rules of ``nft -j list table`` per table (see :func:`nat_tables`)."""
    out: list[NatRule] = []
    for (fam, table), text in tables.items():
        versions = {"ip": (4,), "ip6": (6,)}.get(fam, (4, 6))
        items = json.loads(text or '{"nftables": []}')["nftables"]
        hooked = {i["chain"]["name"]: i["chain"].get("hook") for i in items if "chain" in i}
        for item in items:
            r = item.get("rule")
            if r is None or hooked.get(r["chain"]) not in (None, "prerouting"):
                continue
            found = _nft_rule(f"{fam} {table} {r['chain']}", versions, r["expr"])
            if found is not None:
                out.append(found)
    return out


def nat_tables(heads: str) -> list[tuple[str, str]]:
    """Native tables (not iptables-nft's) with a nat chain on prerouting."""
    items = json.loads(heads or '{"nftables": []}')["nftables"]
    found = set()
    for item in items:
        c = item.get("chain")
        if not c or c.get("type") != "nat" or c.get("hook") != "prerouting":
            continue
        if c["family"] in ("ip", "ip6") and c["table"] in XT_TABLES and c["name"] in XT_CHAINS:
            continue  # iptables-nft's: read from iptables-save
        found.add((c["family"], c["table"]))
    return sorted(found)


_SAVE_PORTS = re.compile(r"(!\s+)?--(?:dport|destination-port|dports)\s+(\S+)")
_SAVE_PROTO = re.compile(r"(?:^|\s)-p\s+(\S+)")


def _save_ports(text: str) -> PortSet | None:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            return None
        out.append(PortRange(int(lo), int(hi or lo)))
    return tuple(out)


def _save_target(spec: str) -> tuple[PortSet | None, str | None] | None:
    """(to_port, to_addr) of a REDIRECT or DNAT rule; None for other targets."""
    if " -j REDIRECT" in spec:
        m = re.search(r"--to-ports\s+(\S+)", spec)
        return (_save_ports(m.group(1).replace("-", ":")) if m else None), None
    if " -j DNAT" in spec:
        m = re.search(r"--to-destination\s+(\S+)", spec)
        if not m:
            return None
        dest = m.group(1)
        addr, port = dest, ""
        if dest.startswith("["):
            addr, _, rest = dest[1:].partition("]")
            port = rest[1:]
        elif dest.count(":") == 1:
            addr, port = dest.split(":")
        port = port.split("/")[0]
        return (_save_ports(port.replace("-", ":")) if port else None), addr.split("-")[0] or None
    return None


def parse_save(text: str, version: int) -> list[NatRule]:
    """The REDIRECT/DNAT rules of ``iptables-save -t nat`` (not in OUTPUT: local traffic)."""
    out = []
    for line in text.splitlines():
        if not line.startswith("-A ") or line.split()[1] in ("OUTPUT", "POSTROUTING", "INPUT"):
            continue
        target = _save_target(line)
        if target is None:
            continue
        proto = _SAVE_PROTO.search(line)
        ports = _SAVE_PORTS.search(line)
        dports = _save_ports(ports.group(2)) if ports and not ports.group(1) else None
        fam = "ip" if version == 4 else "ip6"
        out.append(
            NatRule(
                f"{fam} nat {line.split()[1]}",
                (version,),
                proto.group(1) if proto else None,
                dports,
                *target,
            )
        )
    return out


def read(runner: Runner, variant: str | None) -> tuple[NatRule, ...]:
    """The host's DNAT/redirect rules (read-only; what cannot be read is left out).

    ``variant``: the iptables variant in use (``None``: ask ``iptables --version``).
    """
    rules: list[NatRule] = []
    if variant is None:
        variant = read_variant(runner)
    try:
        heads = runner.run(["nft", "-j", "list", "chains"]).stdout
        texts = {
            t: runner.run(["nft", "-t", "-j", "list", "table", *t]).stdout
            for t in nat_tables(heads)
        }
        rules += parse_nft(texts)
    except (BackendError, CommandNotFound, ValueError, KeyError):
        pass
    for ip_version, tools in save_tools(variant).items():
        if variant == "legacy" and not _has_legacy_nat(runner, ip_version):
            continue
        for tool in tools:
            try:
                text = runner.run([tool, "-t", "nat"]).stdout
            except (BackendError, CommandNotFound):
                continue
            rules += parse_save(text, ip_version)
            break
    return tuple(rules)


#: The legacy tables a namespace has; asking ``iptables-legacy-save -t nat`` for one it
#: does not have creates it (checked here), so ask only for one that is listed.
NAMES_FILE = {4: "/proc/net/ip_tables_names", 6: "/proc/net/ip6_tables_names"}


def _has_legacy_nat(runner: Runner, version: int) -> bool:
    try:
        names = runner.run(["cat", NAMES_FILE[version]]).stdout
    except (BackendError, CommandNotFound):
        return False
    return "nat" in names.split()


def _overlap(a: Iterable[PortRange], b: Iterable[PortRange]) -> bool:
    return any(x.first <= y.last and y.first <= x.last for x in a for y in b)


def _within(a: Iterable[PortRange], b: Sequence[PortRange]) -> bool:
    return all(any(y.first <= x.first and x.last <= y.last for y in b) for x in a)


def _text(ports: PortSet | None) -> str:
    return "any port" if ports is None else ",".join(str(p) for p in ports)


def notes(
    rules: Iterable[NatRule],
    families: Sequence[int],
    protocol: str,
    ports: Sequence[PortRange],
    *,
    forward_hint: str,
) -> tuple[str, ...]:
    """One line per NAT rule that moves connections onto or off a locked port.

    ``forward_hint``: what covers connections NAT sends to another address.
    """
    out: list[str] = []
    for r in rules:
        fams = [v for v in r.versions if v in families]
        if not fams or r.protocol not in (None, protocol):
            continue
        names = ", ".join(FAMILY_NAME[v] for v in fams)
        src, dst = _text(r.dports), _text(r.to_port)
        off = r.dports is not None and _overlap(r.dports, ports)
        onto = r.to_port is not None and _overlap(r.to_port, ports)
        if onto and (r.dports is None or not _within(r.dports, ports)):
            out.append(
                f"NAT: {r.where} moves {protocol}/{src} onto locked port {dst} ({names}): "
                f"the lockdown matches the port clients connect to, so connections to {src} "
                "reach it unrestricted; add that port to ports or drop it in your own rules"
            )
        elif off and r.to_addr is not None:
            out.append(
                f"NAT: {r.where} sends {protocol}/{src} to {r.to_addr}"
                f"{'' if r.to_port is None else ' port ' + dst} ({names}): connections it "
                f"forwards to another host never reach the input hook; {forward_hint}"
            )
        elif off and r.to_port is not None and not _within(r.to_port, ports):
            out.append(
                f"NAT: {r.where} moves {protocol}/{src} to port {dst} ({names}): the lockdown "
                f"matches the port clients connect to, so {src} stays locked; {dst} itself is not"
            )
    return tuple(dict.fromkeys(out))
