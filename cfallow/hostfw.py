"""The host's firewall, read once (read-only), and what an allowlist can do on it.

One analysis for every mode and backend: :func:`read` collects the ruleset
through the Runner (``nft -j list ruleset``, the iptables variant, the legacy
filter tables, firewalld, ufw and Docker as they show in those rulesets) into a
frozen :class:`Host`; the functions below are pure. An answer is ``accept``,
``drop`` (naming the table and chain) or ``unknown`` ("cannot tell"): never
"ok" when the ruleset holds something the analysis does not understand.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from netaddr import IPNetwork, iprange_to_cidrs

from cfallow.config import PortRange
from cfallow.errors import BackendError, CommandNotFound
from cfallow.hostfw_eval import Chain, Json, Outcome, Packet, Rule, combine
from cfallow.runner import Runner

IPTABLES_TABLES = frozenset({("ip", "filter"), ("ip6", "filter")})
LEGACY_SAVE = {4: ("iptables-legacy-save", "iptables-save"), 6: ("ip6tables-legacy-save",)}


@dataclass(frozen=True)
class NftSet:
    """One named set, as ``nft -j`` lists it (elements as canonical networks)."""

    family: str
    table: str
    name: str
    type: str
    flags: tuple[str, ...]
    elements: frozenset[IPNetwork]


@dataclass(frozen=True)
class Ruleset:
    """The parts of ``nft -j list ruleset`` cfallow looks at."""

    tables: tuple[tuple[str, str], ...] = ()
    chains: tuple[Chain, ...] = ()
    sets: tuple[NftSet, ...] = ()

    def chain_map(self) -> dict[tuple[str, str, str], Chain]:
        """``(family, table, name) -> Chain``."""
        return {(c.family, c.table, c.name): c for c in self.chains}

    def base_chains(self, hook: str, version: int) -> list[Chain]:
        """Base chains on ``hook`` that see IPv``version`` packets."""
        fams = {"inet", "ip" if version == 4 else "ip6"}
        return [c for c in self.chains if c.hook == hook and c.family in fams]

    def find_set(self, family: str, table: str, name: str) -> NftSet | None:
        """The set ``family table name``, if present."""
        for s in self.sets:
            if (s.family, s.table, s.name) == (family, table, name):
                return s
        return None


def _element(item: Json) -> list[IPNetwork]:
    if isinstance(item, dict) and "elem" in item:
        item = item["elem"].get("val")
    if isinstance(item, str):
        return [IPNetwork(item).cidr]
    if isinstance(item, dict) and "prefix" in item:
        return [IPNetwork(f"{item['prefix']['addr']}/{item['prefix']['len']}").cidr]
    if isinstance(item, dict) and "range" in item:
        lo, hi = item["range"]
        return [n.cidr for n in iprange_to_cidrs(lo, hi)]
    raise BackendError(f"unexpected set element in nft output: {item!r}")


def parse_set(s: Json) -> NftSet:
    """One ``{"set": {...}}`` body of ``nft -j`` output."""
    elements = [n for e in s.get("elem", []) for n in _element(e)]
    flags = s.get("flags", [])
    return NftSet(
        s["family"],
        s["table"],
        s["name"],
        str(s.get("type")),
        tuple(sorted([flags] if isinstance(flags, str) else flags)),
        frozenset(elements),
    )


def parse_ruleset(text: str) -> Ruleset:
    """Parse ``nft -j list ruleset`` (or ``list table``) output."""
    try:
        items = json.loads(text or '{"nftables": []}')["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"cannot parse nft -j output: {exc}") from None
    tables: list[tuple[str, str]] = []
    heads: dict[tuple[str, str, str], Json] = {}
    rules: dict[tuple[str, str, str], list[Rule]] = {}
    sets: list[NftSet] = []
    for item in items:
        if "table" in item:
            tables.append((item["table"]["family"], item["table"]["name"]))
        elif "chain" in item:
            c = item["chain"]
            heads[(c["family"], c["table"], c["name"])] = c
        elif "rule" in item:
            r = item["rule"]
            key = (r["family"], r["table"], r["chain"])
            # a rule's comment sits beside its expr; keep it as a passive pseudo-expression
            note = ({"comment": r["comment"]},) if "comment" in r else ()
            rules.setdefault(key, []).append(Rule(int(r.get("handle", 0)), (*r["expr"], *note)))
        elif "set" in item:
            sets.append(parse_set(item["set"]))
    chains = tuple(
        Chain(k[0], k[1], k[2], c.get("hook"), int(c.get("prio", 0)), str(c.get("policy", "accept")),
              tuple(rules.get(k, ())))
        for k, c in heads.items()
    )  # fmt: skip
    return Ruleset(tuple(tables), chains, tuple(sets))


def legacy_input(text: str, version: int) -> Chain | None:
    """The legacy ``filter`` table's INPUT chain from ``iptables-save -t filter`` text."""
    policy, rules = None, []
    for n, line in enumerate(text.splitlines()):
        if line.startswith(":INPUT "):
            policy = line.split()[1].lower()
        elif line.startswith("-A INPUT "):
            words = line.split()
            target = words[words.index("-j") + 1] if "-j" in words else ""
            verdict: Json = {target.lower(): None} if target in ("ACCEPT", "DROP", "REJECT") else (
                {"jump": {"target": target}} if target else {"counter": None})  # fmt: skip
            matches = [] if line.strip() == f"-A INPUT -j {target}" else [{"xt": None}]
            rules.append(Rule(n, (*matches, verdict)))
    if policy is None:
        return None
    fam = "ip" if version == 4 else "ip6"
    return Chain(fam, "filter (legacy)", "INPUT", "input", 0, policy, tuple(rules))


@dataclass(frozen=True)
class Host:
    """What :func:`read` found (``nft is None``: no ruleset could be read, see ``nft_error``)."""

    nft: Ruleset | None
    nft_error: str = ""
    iptables: str = ""  # "nft", "legacy" or "" (not installed / unknown)
    legacy: tuple[Chain, ...] = ()
    firewalld: bool = False
    ufw: bool = False
    docker: bool = False
    notes: tuple[str, ...] = field(default=())


def _try(runner: Runner, argv: list[str]) -> str | None:
    try:
        return runner.run(argv).stdout
    except BackendError:
        return None


def read(runner: Runner, *, iptables: bool = True) -> Host:
    """Read the host's firewall through ``runner`` (read-only; missing tools are not errors)."""
    ruleset: Ruleset | None = None
    error = ""
    try:
        ruleset = parse_ruleset(runner.run(["nft", "-j", "list", "ruleset"]).stdout)
    except CommandNotFound:
        error = "nft is not installed"
    except BackendError as exc:
        error = str(exc)
    variant, legacy = "", []
    version_text = _try(runner, ["iptables", "--version"]) if iptables else None
    if version_text is not None:
        variant = "nft" if "nf_tables" in version_text else "legacy"
    if variant == "legacy":
        for version, tools in LEGACY_SAVE.items():
            text = next((t for t in (_try(runner, [x, "-t", "filter"]) for x in tools) if t), "")
            chain = legacy_input(text, version)
            if chain is not None:
                legacy.append(chain)
    names = {c.name for c in ruleset.chains} if ruleset else set()
    legacy_text = " ".join(str(r.expr) for c in legacy for r in c.rules)
    return Host(
        ruleset,
        error,
        variant,
        tuple(legacy),
        firewalld=ruleset is not None and ("inet", "firewalld") in ruleset.tables,
        ufw=any(n.startswith("ufw-") or n.startswith("ufw6-") for n in names)
        or "ufw-" in legacy_text,
        docker=bool(names & {"DOCKER", "DOCKER-USER"}) or "DOCKER" in legacy_text,
    )


def sample_ports(ports: Iterable[PortRange]) -> list[int]:
    """One or two ports per range (the ends), enough for set and range matches."""
    return sorted({p for r in ports for p in (r.first, r.last)})


def ports_text(protocol: str, ports: Sequence[PortRange]) -> str:
    """``tcp/80,443``."""
    return f"{protocol}/" + ",".join(str(p) for p in ports)


def outcome(
    host: Host,
    version: int,
    protocol: str,
    ports: Sequence[PortRange],
    *,
    cloudflare: bool,
    skip_tables: Iterable[tuple[str, str]] = (),
    own_sets: Iterable[str] = (),
    skip_jumps: Iterable[str] = (),
    hook: str = "input",
) -> Outcome:
    """What the host does with a new connection to each of ``ports`` (worst port wins)."""
    if host.nft is None and not host.legacy:
        return Outcome("unknown", f"cannot read the nftables ruleset ({host.nft_error})")
    skip = set(skip_tables)
    chains = [c for c in (host.nft.base_chains(hook, version) if host.nft else [])
              if (c.family, c.table) not in skip]  # fmt: skip
    if hook == "input":
        chains += [c for c in host.legacy if (c.family == "ip") == (version == 4)]
    every = host.nft.chain_map() if host.nft else {}
    worst: Outcome | None = None
    for port in sample_ports(ports):
        p = Packet(version, protocol, port, cloudflare, frozenset(own_sets), frozenset(skip_jumps))
        out = combine(chains, every, p)
        if out.verdict == "drop":
            return out
        if out.verdict == "unknown" and worst is None:
            worst = out
    return worst or Outcome("accept", "no base chain drops it")
