"""Pure evaluation of nftables base chains for one kind of packet (no I/O).

The question is always the same: a *new* connection (not from ``lo``) of one
protocol to one port and one IP version, from either a Cloudflare source or an
outsider. Each base chain on the hook is walked in order; a match this module
does not understand makes the outcome "cannot tell" (never "ok" when unsure).
Drop is final across tables, so the packet passes only if no base chain drops it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

Json = Any
MAX_DEPTH = 16


@dataclass(frozen=True)
class Rule:
    """One rule: its handle and the ``expr`` list of ``nft -j`` output."""

    handle: int
    expr: tuple[Json, ...]


@dataclass(frozen=True)
class Chain:
    """One chain (``hook`` is None for a regular chain)."""

    family: str
    table: str
    name: str
    hook: str | None
    priority: int
    policy: str
    rules: tuple[Rule, ...]

    @property
    def where(self) -> str:
        """``inet filter input``."""
        return f"{self.family} {self.table} {self.name}"


@dataclass(frozen=True)
class Packet:
    """A new connection to ``port`` over ``protocol``, IPv4 or IPv6.

    ``cloudflare``: the source is inside the allowlist, so a match on one of
    ``own_sets`` is true (false for an outsider); any other source match is unknown.
    """

    version: int
    protocol: str
    port: int
    cloudflare: bool
    own_sets: frozenset[str] = frozenset()
    skip_jumps: frozenset[str] = frozenset()  # rules jumping here are cfallow's own: skipped
    #: appended to each time a match read ``cloudflare``: while empty, the walk would
    #: have gone the same way from the other source
    consulted: list[bool] = field(default_factory=list, compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class Outcome:
    """``verdict``: ``accept``, ``drop`` or ``unknown``; ``why``: where that was decided."""

    verdict: str
    why: str


# A tri-state: True, False, or None (cannot tell).
Tri = Optional[bool]
_PASSIVE = {"counter", "log", "comment"}  # statements that neither match nor decide
_TERMINAL = {"accept", "drop", "reject", "jump", "goto", "return", "queue"}


def _in(value: object, right: Json) -> Tri:
    """Is ``value`` (a port or a name) in the right-hand side of a match?"""
    if isinstance(right, dict) and "set" in right:
        items = right["set"]
        results = [_in(value, item) for item in items]
        if any(r is True for r in results):
            return True
        return None if any(r is None for r in results) else False
    if isinstance(right, dict) and "range" in right and isinstance(value, int):
        lo, hi = right["range"]
        return bool(isinstance(lo, int) and isinstance(hi, int) and lo <= value <= hi)
    if isinstance(right, list):
        return _in(value, {"set": right})
    if isinstance(right, str) and right.startswith("@"):
        return None  # a named set: its elements are not read
    if isinstance(right, (int, str)):
        return value == right
    return None


def _op(op: str, hit: Tri) -> Tri:
    if hit is None:
        return None
    if op in ("==", "in"):
        return hit
    if op == "!=":
        return not hit
    return None


def _match(m: Mapping[str, Json], p: Packet) -> Tri:
    left, right, op = m.get("left"), m.get("right"), str(m.get("op", "=="))
    applies, value = _key(left, p)
    if applies is not None:
        return _op(op, _in(value, right)) if applies else False
    if not isinstance(left, dict):
        return None
    if "meta" in left and left["meta"].get("key") in ("iif", "iifname"):
        # the packet comes from a real interface: only a match on "lo" is known not to hit
        return False if op == "==" and right == "lo" else None
    if "payload" in left:
        pl = left["payload"]
        own = isinstance(right, str) and right[1:] in p.own_sets and right.startswith("@")
        if own and pl.get("protocol") in ("ip", "ip6") and pl.get("field") == "saddr":
            p.consulted.append(True)
            return _op(op, p.cloudflare)
        return None
    if "&" in left:  # tcp flags & (fin | syn | rst | ack) == syn: a new connection is a SYN
        inner = left["&"][0] if isinstance(left["&"], list) and left["&"] else None
        if isinstance(inner, dict) and inner.get("payload", {}).get("field") == "flags":
            if p.protocol != "tcp":
                return False
            return _op(op, _in("syn", right))
    return None


def _key(left: Json, p: Packet) -> tuple[Tri, object]:
    """The packet's value for an expression (a match's left side, a verdict map's key).

    (True, value); (False, None): the header is not in this packet (another family's
    or protocol's), so nothing on it matches; (None, None): this module cannot tell.
    """
    if not isinstance(left, dict):
        return None, None
    if "meta" in left:
        key = left["meta"].get("key")
        if key == "l4proto":
            return True, p.protocol
        if key == "nfproto":
            return True, "ipv4" if p.version == 4 else "ipv6"
        return None, None
    if "ct" in left:
        key, direction = left["ct"].get("key"), left["ct"].get("dir")
        if key == "state":
            return True, "new"
        if key == "proto-dst" and direction == "original":
            return True, p.port
        return None, None  # status dnat and the rest: unknown
    if "payload" in left:
        proto, fld = left["payload"].get("protocol"), left["payload"].get("field")
        if proto in ("ip", "ip6"):
            if (proto == "ip") != (p.version == 4):
                return False, None  # an ip match never matches an IPv6 packet (and vice versa)
            if fld in ("protocol", "nexthdr"):
                return True, p.protocol
        elif proto in ("tcp", "udp", "sctp", "dccp", "udplite", "th"):
            if proto not in ("th", p.protocol):
                return False, None
            if fld == "dport":
                return True, p.port
            if fld == "flags" and proto == "tcp":
                return True, "syn"
        elif proto in ("icmp", "icmpv6"):
            return False, None
    return None, None


def _vmap(value: Mapping[str, Json], p: Packet) -> tuple[Tri, tuple[str, str | None] | None]:
    """A verdict map: the verdict of the element the packet's key selects.

    (False, None): the key's header is not in this packet, so the rule does not match;
    (True, None): no element selects it, the rule decides nothing; a key or an element
    this module cannot judge (a named map, a concatenation) is a verdict it cannot name.
    """
    unknown: tuple[Tri, tuple[str, str | None] | None] = (None, ("vmap", None))
    applies, key = _key(value.get("key"), p)
    data = value.get("data")
    if applies is None or not isinstance(data, dict) or not isinstance(data.get("set"), list):
        return unknown
    if applies is False:
        return False, None
    for element in data["set"]:
        if not (isinstance(element, list) and len(element) == 2 and isinstance(element[1], dict)):
            return unknown
        hit = _in(key, element[0])
        if hit is None or len(element[1]) != 1:
            return unknown
        if hit:
            ((kind, target),) = element[1].items()
            return (True, _verdict_of(kind, target)) if kind in _TERMINAL else unknown
    return True, None


def _verdict_of(key: str, value: Json) -> tuple[str, str | None]:
    if key in ("jump", "goto") and isinstance(value, dict):
        return key, str(value.get("target"))
    return key, None


@dataclass
class _Walk:
    maybe_accept: bool = False
    maybe_drop: bool = False
    note: str = ""


def _rule(rule: Rule, p: Packet) -> tuple[Tri, tuple[str, str | None] | None]:
    """Does ``rule`` match ``p`` (tri-state), and its verdict (None: no verdict).

    Run for every rule and question: the JSON is checked with ``dict`` (what ``json``
    makes), not the ``Mapping`` ABC, whose check costs several times more.
    """
    hit: Tri = True
    verdict = None
    for expr in rule.expr:
        if not isinstance(expr, dict) or len(expr) != 1:
            hit = None
            continue
        ((key, value),) = expr.items()
        if key in _TERMINAL:
            verdict = _verdict_of(key, value)
        elif key == "vmap" and isinstance(value, dict):
            m, verdict = _vmap(value, p)
            if m is False:
                return False, verdict
            if m is None:
                hit = None
        elif key == "match" and isinstance(value, dict):
            m = _match(value, p)
            if m is False:
                return False, verdict
            if m is None:
                hit = None
        elif key not in _PASSIVE:
            hit = None  # an expression we do not model (xt, fib, limit, ...)
    return hit, verdict


def walk(
    chain: Chain, chains: Mapping[tuple[str, str, str], Chain], p: Packet, depth: int = 0
) -> tuple[str, _Walk, str]:
    """Walk ``chain``: (``accept``|``drop``|``continue``, uncertainty, where decided)."""
    state = _Walk()
    if depth > MAX_DEPTH:
        state.maybe_accept = state.maybe_drop = True
        return "continue", state, f"{chain.where}: chains nested too deep"
    for rule in chain.rules:
        hit, verdict = _rule(rule, p)
        if hit is False or verdict is None:
            continue
        kind, target = verdict
        if kind in ("jump", "goto") and target in p.skip_jumps:
            continue
        where = f"{chain.where}: rule handle {rule.handle} ({kind}{' ' + target if target else ''})"
        if kind in ("jump", "goto"):
            sub = chains.get((chain.family, chain.table, target or ""))
            if sub is None:
                result, inner, why = "continue", _Walk(True, True), f"{where}: unknown chain"
            else:
                result, inner, why = walk(sub, chains, p, depth + 1)
            if hit is None:
                inner.maybe_accept = inner.maybe_accept or result == "accept"
                inner.maybe_drop = inner.maybe_drop or result == "drop"
                result = "continue"
            state.maybe_accept |= inner.maybe_accept
            state.maybe_drop |= inner.maybe_drop
            if result != "continue":
                return result, state, why
            if kind == "goto":
                return "continue", state, where
            continue
        if kind == "return":
            if hit is None:
                state.maybe_accept = state.maybe_drop = True
                continue
            return "continue", state, where
        final = "accept" if kind == "accept" else "drop" if kind in ("drop", "reject") else "?"
        if final == "?":
            state.maybe_accept = state.maybe_drop = True
            continue
        if hit is None:
            setattr(state, "maybe_" + final, True)
            continue
        return final, state, where
    return "continue", state, chain.where


def base_outcome(chain: Chain, chains: Mapping[tuple[str, str, str], Chain], p: Packet) -> Outcome:
    """What one base chain does with ``p``."""
    result, state, where = walk(chain, chains, p)
    if result == "continue":
        result = "drop" if chain.policy == "drop" else "accept"
        where = f"{chain.where}: policy {chain.policy}"
    if result == "accept" and state.maybe_drop:
        return Outcome("unknown", f"{chain.where}: a rule this analysis does not understand")
    if result == "drop" and state.maybe_accept:
        return Outcome("unknown", f"{chain.where}: a rule this analysis does not understand")
    return Outcome(result, where)


def combine(
    chains: Sequence[Chain], every: Mapping[tuple[str, str, str], Chain], p: Packet
) -> Outcome:
    """All base chains on the hook: any drop wins; else any unknown; else accept."""
    unknown: Outcome | None = None
    for chain in sorted(chains, key=lambda c: c.priority):
        out = base_outcome(chain, every, p)
        if out.verdict == "drop":
            return out
        if out.verdict == "unknown" and unknown is None:
            unknown = out
    return unknown or Outcome("accept", "no base chain drops it")
