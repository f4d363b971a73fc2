"""Which rule decided a probe: ``nft monitor trace`` lines, grouped per packet."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TRACE_TABLE = "cfallow_verify_trace"
#: Loaded into the scratch origin only: marks the probes' SYNs for tracing, before raw/conntrack.
TRACE_RULESET = f"""table inet {TRACE_TABLE} {{
    chain pre {{
        type filter hook prerouting priority -350; policy accept;
        tcp flags & (fin | syn | rst | ack) == syn meta nftrace set 1
    }}
}}
"""
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
    """(source, port) -> the traced SYN from that source to that port."""
    by_id: dict[str, Packet] = {}
    for line in lines:
        m = _LINE.match(line.strip())
        if not m:
            continue
        tid, family, table, chain, rest = m.groups()
        pkt = by_id.setdefault(tid, Packet())
        if rest.startswith("packet:"):
            s, d = _SADDR.search(rest), _DPORT.search(rest)
            if s and d and not pkt.source:
                pkt.source, pkt.port = s.group(1), int(d.group(1))
            continue
        if table == TRACE_TABLE:
            continue
        pkt.events.append((f"{family} {table} {chain}", rest))
    return {(p.source, p.port): p for p in by_id.values() if p.source}
