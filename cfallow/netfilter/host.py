"""The host's firewall, read once (read-only), and what an allowlist can do on it.

One analysis for every mode and backend: :func:`read` collects the ruleset
through the Runner (``nft -j list chains``; of the native tables hooked on input
or forward, the base chains on those hooks and the chains they jump or go to,
never a set's elements; the iptables variant and its filter INPUT chain from
``iptables-save``; firewalld, ufw and Docker as they show in those) into a
frozen :class:`Host`; the functions below are pure. An answer is ``accept``,
``drop`` (naming the table and chain) or ``unknown`` ("cannot tell"): never
"ok" when the ruleset holds something the analysis does not understand.
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from netaddr import IPNetwork, iprange_to_cidrs

from cfallow.errors import BackendError, CommandNotFound
from cfallow.netfilter import generation
from cfallow.netfilter.evaluate import Chain, Json, Outcome, Packet, Rule, combine
from cfallow.netfilter.generation import Memo
from cfallow.netfilter.save import Table, detect, input_chain, save_tools, version_text
from cfallow.runner import Runner
from cfallow.section import PortRange

IPTABLES_TABLES = frozenset({("ip", "filter"), ("ip6", "filter")})


@dataclass(frozen=True)
class NftSet:
    """One named set, as ``nft -j`` lists it (elements as canonical networks)."""

    family: str
    table: str
    name: str
    type: str
    flags: tuple[str, ...]
    elements: frozenset[IPNetwork]
    comment: str = ""


#: A rule's place: family, table, chain, handle.
Where = tuple[str, str, str, int]


@dataclass(frozen=True)
class Ruleset:
    """The parts of ``nft -j list ruleset`` cfallow looks at.

    ``listed``: the tables read whole (every chain's rules; the sets too where the table
    was listed, by :func:`read_nft` tersely: a set's elements are not read);
    ``walked``: the tables of which every chain the input and forward base chains
    reach was read (the others: heads only);
    ``mentions``: every name written ``"@name"`` in the listings these were parsed from
    (a rule can only reference a set named there), None when not known; ``users``: for
    the names of ``mentions`` written at most :data:`TRACED` times in each listing, the
    rules whose expressions (or comment) name them, traced from the listing's text (see
    :meth:`naming`); a name of ``mentions`` not here is searched for rule by rule.
    """

    tables: tuple[tuple[str, str], ...] = ()
    chains: tuple[Chain, ...] = ()
    sets: tuple[NftSet, ...] = ()
    listed: tuple[tuple[str, str], ...] = ()
    walked: tuple[tuple[str, str], ...] = ()
    mentions: frozenset[str] | None = None
    users: tuple[tuple[str, tuple[Where, ...]], ...] = ()

    def table(self, family: str, name: str) -> Ruleset | None:
        """A table read whole, as its own :class:`Ruleset` (None if it was not)."""
        if (family, name) not in self.listed:
            return None
        users = tuple((n, tuple(w for w in ws if w[:2] == (family, name))) for n, ws in self.users)
        return Ruleset(
            ((family, name),),
            tuple(c for c in self.chains if (c.family, c.table) == (family, name)),
            tuple(s for s in self.sets if (s.family, s.table) == (family, name)),
            ((family, name),),
            mentions=self.mentions,
            users=users,
        )

    def naming(self, names: Iterable[str]) -> dict[str, list[str]]:
        """The rules whose expressions (or comment) name each of ``names`` as ``"@name"``
        (``inet filter input (rule handle 5)``), in the order of the chains and their rules.

        A name no listing wrote is named by no rule; one traced in the listings' text
        (``users``) costs nothing more; any other means every rule's JSON is searched
        once (100,000 rules: about 0.8 s).
        """
        wanted = list(dict.fromkeys(names))
        if self.mentions is not None:
            wanted = [n for n in wanted if n in self.mentions]
        traced = dict(self.users)
        order = {(c.family, c.table, c.name): i for i, c in enumerate(self.chains)}
        found: dict[str, list[str]] = {}
        rest = []
        for n in wanted:
            if n not in traced or self.mentions is None:
                rest.append(n)
                continue
            # the order _search finds them in: by chain, then as listed within it
            ws = sorted((w for w in traced[n] if w[:3] in order), key=lambda w: order[w[:3]])
            if ws:
                found[n] = [f"{w[0]} {w[1]} {w[2]} (rule handle {w[3]})" for w in ws]
        if rest:
            found.update(_search(self.chains, rest))
        return {n: found[n] for n in wanted if n in found}

    def chain_map(self) -> dict[tuple[str, str, str], Chain]:
        """``(family, table, name) -> Chain``."""
        return {(c.family, c.table, c.name): c for c in self.chains}

    def base_chains(self, hook: str, version: int) -> list[Chain]:
        """Base chains on ``hook`` that see IPv``version`` packets."""
        fams = {"inet", "ip" if version == 4 else "ip6"}
        return [c for c in self.chains if c.hook == hook and c.family in fams]


def _search(chains: Iterable[Chain], names: list[str]) -> dict[str, list[str]]:
    """The rules of ``chains`` whose JSON (expressions and comment) holds ``"@name"``, for
    each of ``names``, in one pass over the rules (each rule's JSON made once)."""
    needles = [(n, json.dumps(f"@{n}")) for n in names]
    found: dict[str, list[str]] = {}
    for c in chains:
        for r in c.rules:
            text = json.dumps(r.expr)
            if '"@' not in text:  # nearly every rule: no set at all
                continue
            for name, needle in needles:
                if needle in text:
                    found.setdefault(name, []).append(f"{c.where} (rule handle {r.handle})")
    return found


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
    """One ``{"set": {...}}`` body of ``nft -j`` output.

    Only an address set's elements are read: a set of ports, marks or interfaces
    (the admin's ``type inet_service`` set of web ports) is kept with none.
    """
    addresses = s.get("type") in ("ipv4_addr", "ipv6_addr")
    elements = [n for e in (s.get("elem", []) if addresses else []) for n in _element(e)]
    flags = s.get("flags", [])
    return NftSet(
        s["family"],
        s["table"],
        s["name"],
        str(s.get("type")),
        tuple(sorted([flags] if isinstance(flags, str) else flags)),
        frozenset(elements),
        str(s.get("comment", "")),
    )


@contextmanager
def _no_gc() -> Iterator[None]:
    """No cyclic collection while a big listing becomes objects.

    They hold no cycles, and each collection during the parse would walk all of
    them made so far again. Not frozen after (``gc.freeze``): a frozen object is
    never collected as part of a cycle, and a process that runs many syncs (the
    soak) grew by 9 MB over 150 runs with it, also with an unfreeze right after.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def parse_ruleset(text: str, *, whole: bool = True, trace: Iterable[str] = ()) -> Ruleset:
    """Parse ``nft -j list ruleset`` (or ``list table``; ``whole=False``: ``list chains``).

    ``trace``: names (of sets) whose rules are found from the text (``users``).
    """
    with _no_gc():
        return _parse(text, whole, trace)


#: A set or map named in ``nft -j`` output (``"right": "@web"``): names are plain ASCII.
_MENTION = re.compile(r'"@([^"\\]*)"')
#: A name written ``"@name"`` more often than this in one listing is not traced to its
#: rules from the text (a look back and one rule's decode each) but searched rule by rule.
TRACED = 256
#: How ``nft -j`` begins a rule; never inside a string, where a quote is ``\"``.
_RULE = '{"rule": '


def _trace(text: str, name: str) -> tuple[Where, ...] | None:
    """The rules of the listing ``text`` that name ``name``, as :func:`_search` would
    find them, from each ``"@name"`` in the text: the rule object around it, decoded
    alone. None (search rule by rule) when a ``"@name"`` is not inside a rule object
    as nft 1.0 prints it (a chain's or set's comment, another format) or past
    :data:`TRACED` of them."""
    raw, needle = f'"@{name}"', json.dumps(f"@{name}")
    decode = json.JSONDecoder().raw_decode
    found: list[Where] = []
    pos, seen = text.find(raw), 0
    while pos != -1:
        seen += 1
        start = text.rfind(_RULE, 0, pos)
        if seen > TRACED or start < 0:
            return None
        try:
            item, end = decode(text, start)
            r = item["rule"]
            where = (str(r["family"]), str(r["table"]), str(r["chain"]), int(r.get("handle", 0)))
            note = ({"comment": r["comment"]},) if "comment" in r else ()
            named = needle in json.dumps((*r["expr"], *note))
        except (ValueError, KeyError, TypeError):
            return None
        if end <= pos:  # not inside the rule before it
            return None
        if named:
            found.append(where)
        pos = text.find(raw, end)
    return tuple(found)


def _parse(text: str, whole: bool, trace: Iterable[str]) -> Ruleset:
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
        Chain(
            *k,
            c.get("hook"),
            int(c.get("prio", 0)),
            str(c.get("policy", "accept")),
            tuple(rules.get(k, ())),
        )
        for k, c in heads.items()
    )
    tables = tables or sorted({(c.family, c.table) for c in chains})
    mentions = frozenset(_MENTION.findall(text))
    users = []
    for name in dict.fromkeys(trace):
        found = _trace(text, name) if name in mentions else ()
        if found is not None:
            users.append((name, found))
    listed = tuple(tables) if whole else ()
    return Ruleset(tuple(tables), chains, tuple(sets), listed, (), mentions, tuple(users))


def _users(
    parts: Sequence[Ruleset], trace: Iterable[str]
) -> tuple[tuple[str, tuple[Where, ...]], ...]:
    """The users of each of ``trace`` over the listings ``parts`` (a name not traced in
    one that mentions it: not traced)."""
    out = []
    for name in dict.fromkeys(trace):
        found: list[Where] = []
        for p in parts:
            if p.mentions is not None and name not in p.mentions:
                continue
            got = dict(p.users).get(name)
            if got is None:
                break
            found += got
        else:
            out.append((name, tuple(found)))
    return tuple(out)


#: iptables-nft's own tables and base chains (upper case), as opposed to native ones.
XT_TABLES = frozenset({"filter", "mangle", "raw", "security", "nat"})
XT_CHAINS = frozenset({"INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"})


def is_xt(c: Chain) -> bool:
    """Is ``c`` a base chain iptables(-nft) made (``ip filter INPUT``)?"""
    return c.family in ("ip", "ip6") and c.table in XT_TABLES and c.name in XT_CHAINS


@dataclass(frozen=True)
class Host:
    """What :func:`read` found (``nft is None``: no ruleset could be read, see ``nft_error``)."""

    nft: Ruleset | None
    nft_error: str = ""
    iptables: str = ""  # "nft", "legacy" or "" (not installed / unknown)
    inputs: tuple[Chain, ...] = ()  # iptables' filter INPUT, from iptables-save
    firewalld: bool = False
    ufw: bool = False
    docker: bool = False
    notes: tuple[str, ...] = field(default=())
    #: :func:`outcome`'s answers, so a question asked again (or from the other source,
    #: when no rule looked at the source) does not walk the chains again
    answers: dict[tuple[object, ...], Outcome] = field(
        default_factory=dict, init=False, compare=False, hash=False, repr=False
    )


def _try(runner: Runner, argv: list[str]) -> str | None:
    try:
        return runner.run(argv).stdout
    except BackendError:
        return None


def read_variant(runner: Runner, memo: Memo | None = None) -> str:
    """``nft`` or ``legacy``, as ``iptables --version`` says (``""``: not installed, unclear;
    ``memo``: what it said the last time, for the same binary)."""
    try:
        return detect(version_text(runner, memo))[0]
    except BackendError:
        return ""


#: A native table with more chains than this is listed in one ``nft -t -j list table``
#: (firewalld, Docker: many small chains) rather than one ``nft -j list chain`` each.
CHAINS_ONE_BY_ONE = 8
_JUMP = re.compile(r'"(?:jump|goto)":\s*\{\s*"target":\s*("(?:[^"\\]|\\.)*")\s*\}')


def _targets(text: str) -> set[str]:
    """Every chain a listing's rules jump or go to (also from a verdict map)."""
    return {json.loads(m) for m in _JUMP.findall(text)}


def _walk_table(
    runner: Runner, family: str, table: str, bases: Iterable[str], trace: Iterable[str] = ()
) -> Ruleset:
    """The chains ``bases`` and every chain they jump or go to, one ``nft -j list chain``
    each (a chain's listing holds its rules only, never a set's elements), in that
    order: ``bases`` as given, then each chain after the first that reaches it."""
    todo = list(dict.fromkeys(bases))
    parts: list[Ruleset] = []
    for name in todo:  # grows as the walk finds chains
        text = runner.run(["nft", "-j", "list", "chain", family, table, name]).stdout
        parts.append(parse_ruleset(text, trace=trace))
        todo += sorted(_targets(text) - set(todo))
    walked = ((family, table),)
    chains = tuple(c for p in parts for c in p.chains)
    mentions = frozenset(n for p in parts for n in p.mentions or ())
    return Ruleset(walked, chains, walked=walked, mentions=mentions, users=_users(parts, trace))


def read_nft(
    runner: Runner, *, rules: bool = True, whole: Iterable[str] = (), trace: Iterable[str] = ()
) -> Ruleset:
    """Chain heads (cheap), and (unless ``rules=False``) what decides the verdict in every
    native table with an input/forward base chain: those base chains and the chains they reach.

    A table with many chains is listed whole but tersely (``nft -t``: a set's elements
    are never read; the analysis names sets, it does not look inside them); of one named
    in ``whole`` (``"inet filter"``) every chain is read, reached or not (one by one when
    it has few: at 100,000 rules ``nft`` lists its chains in less than half the time it
    lists the table; its sets are then not listed). iptables-nft's tables are not listed
    through ``nft`` (slow for big rulesets, and their matches are opaque there): their
    INPUT chain comes from ``iptables-save``. ``trace``: names whose rules are found from
    the listings' text (``Ruleset.users``).
    """
    whole, trace = frozenset(whole), tuple(trace)
    text = runner.run(["nft", "-j", "list", "chains"]).stdout
    heads = parse_ruleset(text, whole=False, trace=trace)
    hooked = [c for c in heads.chains if c.hook in ("input", "forward") and not is_xt(c)]
    # a dormant table's base chains are on no hook: read (a rule there still references
    # a set), then judged as regular chains
    asleep = (generation.dormant(runner) or frozenset()) if hooked else frozenset()
    native = sorted({(c.family, c.table) for c in hooked})
    if not rules or not native:
        return replace(heads, chains=_awake(heads.chains, asleep)) if asleep else heads
    chains = [c for c in heads.chains if (c.family, c.table) not in native]
    sets: list[NftSet] = []
    listed, walked = [], []
    parts = [heads]
    for fam, table in native:
        names = [c.name for c in heads.chains if (c.family, c.table) == (fam, table)]
        if len(names) > CHAINS_ONE_BY_ONE:
            text = runner.run(["nft", "-t", "-j", "list", "table", fam, table]).stdout
            full = parse_ruleset(text, trace=trace)
            listed.append((fam, table))
            sets += full.sets
        elif f"{fam} {table}" in whole:  # every chain, one by one: cheaper than the table
            full = _walk_table(runner, fam, table, names, trace)  # in the table's order
            listed.append((fam, table))
            walked.append((fam, table))
        else:
            bases = (c.name for c in hooked if (c.family, c.table) == (fam, table))
            full = _walk_table(runner, fam, table, bases, trace)
            walked.append((fam, table))
            reached = {c.name for c in full.chains}
            chains += [
                c
                for c in heads.chains
                if (c.family, c.table) == (fam, table) and c.name not in reached
            ]
        chains += full.chains
        parts.append(full)
    if asleep:
        chains = list(_awake(chains, asleep))
    tables = tuple(sorted({(c.family, c.table) for c in chains}))
    found = frozenset(n for p in parts for n in p.mentions or ())
    users = _users(parts, trace)
    return Ruleset(tables, tuple(chains), tuple(sets), tuple(listed), tuple(walked), found, users)


def _awake(chains: Iterable[Chain], asleep: frozenset[tuple[str, str]]) -> tuple[Chain, ...]:
    """``chains`` with those of the dormant tables ``asleep`` on no hook."""
    out = (replace(c, hook=None) if (c.family, c.table) in asleep else c for c in chains)
    return tuple(out)


def read(
    runner: Runner,
    *,
    iptables: bool = True,
    variant: str | None = None,
    saves: Mapping[int, str] | None = None,
    parsed: Mapping[int, Table] | None = None,
    rules: bool = True,
    whole: Iterable[str] = (),
    trace: Iterable[str] = (),
) -> Host:
    """Read the host's firewall through ``runner`` (read-only; missing tools are not errors).

    ``variant``/``saves``: what the iptables backend already read (``iptables-save -t
    filter`` per IP version), not read twice; ``parsed``: its parse of those very texts,
    not parsed twice; ``rules``, ``whole``, ``trace``: :func:`read_nft`.
    """
    ruleset: Ruleset | None = None
    error = ""
    try:
        ruleset = read_nft(runner, rules=rules, whole=whole, trace=trace)
    except CommandNotFound:
        error = "nft is not installed"
    except BackendError as exc:
        error = str(exc)
    if variant is None and iptables:
        variant = read_variant(runner)
    variant = variant or ""
    inputs, text = _save_inputs(runner, variant, saves or {}, parsed or {})
    names = {c.name for c in ruleset.chains} if ruleset else set()
    if ruleset is not None and inputs:  # the save text stands for iptables' INPUT chains
        keep = tuple(
            c
            for c in ruleset.chains
            if not (is_xt(c) and c.table == "filter" and c.name == "INPUT")
        )
        ruleset = replace(ruleset, chains=keep)
    return Host(
        ruleset,
        error,
        variant,
        tuple(inputs),
        firewalld=("firewalld" in {c.table for c in ruleset.chains} if ruleset else False)
        or "INPUT_direct" in text,
        ufw=any(n.startswith(("ufw-", "ufw6-")) for n in names)
        or ":ufw-" in text
        or ":ufw6-" in text,
        docker=bool(names & {"DOCKER", "DOCKER-USER"}) or ":DOCKER" in text,
    )


def _save_inputs(
    runner: Runner, variant: str, saves: Mapping[int, str], parsed: Mapping[int, Table]
) -> tuple[list[Chain], str]:
    """iptables' INPUT chains from ``*-save -t filter`` (read here unless in ``saves``),
    and the texts read (one string, for the names of chains it holds)."""
    if not variant:
        return [], ""
    inputs, texts = [], dict(saves)
    for version, tools in save_tools(variant).items():
        if version not in texts:
            texts[version] = next(
                (t for t in (_try(runner, [x, "-t", "filter"]) for x in tools) if t), ""
            )
        chain = input_chain(texts[version], version, parsed.get(version))
        if chain is not None:
            inputs.append(chain)
    return inputs, " ".join(texts.values())


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
    skip, own, jumps = frozenset(skip_tables), frozenset(own_sets), frozenset(skip_jumps)
    key = (version, protocol, tuple(ports), skip, own, jumps, hook)
    if (*key, cloudflare) in host.answers:
        return host.answers[(*key, cloudflare)]
    consulted: list[bool] = []
    asked = Packet(version, protocol, 0, cloudflare, own, jumps, consulted)
    out = _outcome(host, asked, ports, skip=skip, hook=hook)
    host.answers[(*key, cloudflare)] = out
    if not consulted:  # no rule looked at the source: the other source's answer too
        host.answers[(*key, not cloudflare)] = out
    return out


def _outcome(
    host: Host,
    asked: Packet,
    ports: Sequence[PortRange],
    *,
    skip: frozenset[tuple[str, str]],
    hook: str,
) -> Outcome:
    """:func:`outcome` for ``asked`` at each sampled port of ``ports``."""
    if host.nft is None and not host.inputs:
        return Outcome("unknown", f"cannot read the nftables ruleset ({host.nft_error})")
    version = asked.version
    chains = [
        c
        for c in (host.nft.base_chains(hook, version) if host.nft else [])
        if (c.family, c.table) not in skip
    ]
    if hook == "input":
        fam = "ip" if version == 4 else "ip6"
        chains += [c for c in host.inputs if c.family == fam and (c.family, c.table) not in skip]
    full = {*host.nft.listed, *host.nft.walked} if host.nft else set()
    every = {k: c for k, c in (host.nft.chain_map() if host.nft else {}).items() if k[:2] in full}
    worst: Outcome | None = None
    for c in chains:  # only its head was read (iptables' own mangle/raw/security tables)
        if c.table != "filter" and (c.family, c.table) not in full and c.table != "nat":
            worst = worst or Outcome("unknown", f"{c.where}: iptables rules not analysed")
    for port in sample_ports(ports):
        out = combine(chains, every, replace(asked, port=port))
        if out.verdict == "drop":
            return out
        if out.verdict == "unknown" and worst is None:
            worst = out
    return worst or Outcome("accept", "no base chain drops it")
