"""Which rule decided a probe: trace lines as ``nft monitor trace`` prints them, per packet.

:class:`Stream` takes the events as they are read, so a probe whose SYN the
trace shows dropped is decided then (no time-out waited out), and a *fence* (a
SYN to a port no probe uses, sent once every probe is decided) shows that
every earlier event has been read: events reach the netlink socket in the
order the kernel emits them.

On a host with legacy x_tables (whose drops nftables does not trace) the trace
table also has a chain on the input hook after every x_tables table
(:data:`LEGACY_RULESET`): a probe's SYN traced at prerouting that never reaches
it was dropped (or taken) before it, by x_tables or on the way (routing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cfallow.verify import nftrace

TRACE_TABLE = "cfallow_verify_trace"
#: Loaded into the scratch origin only: marks the probes' SYNs for tracing, before raw/conntrack.
#: ``accept`` ends this chain alone (the next chains on the hook still see the packet): one
#: trace event here per SYN, not two (reading the events is the cost).
TRACE_RULESET = f"""table inet {TRACE_TABLE} {{
    chain pre {{
        type filter hook prerouting priority -350; policy accept;
        tcp flags & (fin | syn | rst | ack) == syn meta nftrace set 1 accept
    }}
}}
"""
#: The fences' source ports (the probes' are ephemeral: 32768 up by default, never below 1024).
FENCE_SPORTS = (1, 2, 3)
#: After every x_tables table on the input hook (mangle -150, filter 0, security 50, nat
#: 100): a traced SYN gets here only if x_tables let it through. Empty, so one event (its
#: policy) per traced packet.
LATE_CHAIN = "late"
LATE_PRIORITY = 1000
#: :data:`TRACE_RULESET` and the late chain, for a host with legacy x_tables; a fence is
#: traced and dropped before x_tables see it, so their counters count the probes alone
#: (:mod:`.xpath`).
LEGACY_RULESET = TRACE_RULESET.replace(
    "        tcp flags",
    f"        tcp sport {FENCE_SPORTS[0]}-{FENCE_SPORTS[-1]} tcp flags & (fin | syn | rst | ack)"
    " == syn meta nftrace set 1 drop\n        tcp flags",
).replace(
    "\n}\n",
    f"""
    chain {LATE_CHAIN} {{
        type filter hook input priority {LATE_PRIORITY}; policy accept;
    }}
}}
""",
)
_LINE = re.compile(r"^trace id (\S+) (\S+) (\S+) (\S+) (.*)$")
_SADDR = re.compile(r"\bip6? saddr (\S+)")
_DPORT = re.compile(r"\btcp dport (\d+)")


@dataclass
class Packet:
    """One traced packet: its source and port, and its chain events in order."""

    source: str = ""
    port: int = 0
    events: list[tuple[str, str]] = field(default_factory=list)  # ("inet filter input", rest)

    def decided(self) -> tuple[str, str, str] | None:
        """(chain, rule or policy, verdict): the drop, or else the last rule that accepted (a
        policy accept only if no rule did); ``None`` if nothing decided."""
        rule = policy = None
        for where, rest in self.events:
            verdict = _verdict(rest)
            if verdict == "drop":
                return where, _describe(rest), "drop"
            if verdict == "accept":
                found = (where, _describe(rest), "accept")
                if rest.startswith("rule "):
                    rule = found
                else:
                    policy = found
        return rule or policy


def _verdict(rest: str) -> str | None:
    if rest.startswith("policy "):
        return rest.split()[1]
    m = re.search(r"\(verdict (\w+)", rest)
    return m.group(1) if m and rest.startswith("rule ") else None


def _describe(rest: str) -> str:
    if rest.startswith("policy "):
        return rest
    return re.sub(
        r"\s*\(verdict [^)]*\)\s*$", "", re.sub(r" counter packets \d+ bytes \d+", "", rest)
    )


def parse(lines: list[str]) -> dict[tuple[str, int], Packet]:
    """(source, port) -> the traced SYN from that source to that port.

    A trace id is a hash of the packet's buffer, which the kernel reuses once the
    packet is gone: a ``packet:`` line naming another source or port under a known id
    starts a new packet (the first event of every chain a packet enters carries one).
    """
    current: dict[str, Packet] = {}
    out: dict[tuple[str, int], Packet] = {}
    for line in lines:
        m = _LINE.match(line.strip())
        if not m:
            continue
        tid, family, table, chain, rest = m.groups()
        if rest.startswith("packet:"):
            s, d = _SADDR.search(rest), _DPORT.search(rest)
            key = (s.group(1), int(d.group(1))) if s and d else None
            pkt = current.get(tid)
            if key is not None and (pkt is None or (pkt.source, pkt.port) != key):
                current[tid] = out[key] = Packet(*key)
            continue
        if table != TRACE_TABLE and tid in current:
            current[tid].events.append((f"{family} {table} {chain}", rest))
    return out


class Stream:
    """A batch's trace events as they are read (:mod:`.nftrace`).

    ``drops`` holds each (source, port) whose traced SYN a rule or policy dropped,
    ``fences`` counts the traced SYNs to ``fence`` (a port no probe uses); ``lost`` is
    set by the reader if the socket overflowed. With :data:`LEGACY_RULESET` loaded,
    ``entered`` holds each (source, port) whose SYN the prerouting chain traced and
    ``passed`` those whose SYN then reached the late input chain; ``seen(port)`` counts
    the SYNs to ``port`` traced at prerouting (the early fences).
    """

    def __init__(self, fence: int) -> None:
        self.fence = fence
        self.events: list[nftrace.Event] = []
        self.drops: set[tuple[str, int]] = set()
        self.fences = 0
        self.lost = False
        self.entered: set[tuple[str, int]] = set()
        self.passed: set[tuple[str, int]] = set()
        self._ids: dict[int, tuple[str, int]] = {}
        self._pre: dict[int, tuple[str, int]] = {}  # trace id -> the SYN as it entered
        self._seen: dict[int, int] = {}

    def seen(self, port: int) -> int:
        """How many SYNs to ``port`` the prerouting chain traced."""
        return self._seen.get(port, 0)

    def add(self, events: list[nftrace.Event]) -> list[tuple[str, int]]:
        """Take events in the order read; the (source, port) they newly show dropped."""
        dropped = []
        for e in events:
            self.events.append(e)
            if e.source and self._ids.get(e.tid) != (e.source, e.port):  # a new packet
                self._ids[e.tid] = (e.source, e.port)
                self.fences += e.port == self.fence
            if e.table == TRACE_TABLE:
                self._mark(e)
            key = self._ids.get(e.tid)
            drop = e.verdict == "drop" if e.kind == nftrace.RULE else e.policy == "drop"
            if drop and key is not None and e.table != TRACE_TABLE and key not in self.drops:
                self.drops.add(key)
                dropped.append(key)
        return dropped

    def _mark(self, e: nftrace.Event) -> None:
        # The late chain's packet headers are the ones NAT left (a DNAT changes the port):
        # it is known by its trace id, which the prerouting event has just named. A trace
        # id is reused only once its packet is gone, and one packet's hooks run in turn.
        if e.chain == LATE_CHAIN:
            if e.tid in self._pre:
                self.passed.add(self._pre[e.tid])
        elif e.source:  # the prerouting chain's one event per SYN
            key = self._pre[e.tid] = (e.source, e.port)
            self.entered.add(key)
            self._seen[e.port] = self._seen.get(e.port, 0) + 1

    def lines(self, rules: dict[tuple[str, str, str, int], str]) -> list[str]:
        """The events as ``nft monitor trace`` prints them (for :func:`parse`)."""
        return [line for e in self.events for line in e.line(rules)]
