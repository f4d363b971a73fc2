"""Which legacy x_tables rules a probe went through: counters before and after one re-probe.

nftables tracing does not see x_tables, so a probe that failed on a host with
legacy tables is sent once more, alone, and ``ip(6)tables-legacy-save -c`` in
the scratch origin is read before and after: the rules (and policies) whose
packet counter grew are the probe's path.
"""

from __future__ import annotations

import re

from cfallow.netfilter.save import SAVE as SAVE_TOOLS
from cfallow.runner import Runner
from cfallow.verify.probe import Session, Target

SAVE = SAVE_TOOLS["legacy"]
#: Loaded into the scratch edge: it sends the origin nothing but the probes' TCP (no router
#: solicitation, no MLD report of its new addresses), which x_tables would count too.
EDGE_RULESET = """table inet cfallow_verify_edge {
    chain out {
        type filter hook output priority 0; policy accept;
        meta l4proto != tcp drop
    }
}
"""
#: The reply (SYN-ACK, RST) passes these too: not the probe's path.
REPLY_SIDE = ("-A OUTPUT ", "OUTPUT policy", "-A POSTROUTING ", "POSTROUTING policy")
_RULE = re.compile(r"^\[(\d+):\d+\] (-A (\S+) .*)$")
_POLICY = re.compile(r"^:(\S+) (\S+) \[(\d+):\d+\]$")


def counters(text: str) -> dict[tuple[str, int, str], int]:
    """(table, position, rule or policy text) -> packets, from ``*-save -c`` output."""
    out: dict[tuple[str, int, str], int] = {}
    table = ""
    for pos, line in enumerate(text.splitlines()):
        if line.startswith("*"):
            table = line[1:]
        elif m := _RULE.match(line):
            out[(table, pos, m.group(2))] = int(m.group(1))
        elif (p := _POLICY.match(line)) and p.group(2) != "-":
            out[(table, pos, f"{p.group(1)} policy {p.group(2)}")] = int(p.group(3))
    return out


def grown(before: str, after: str, version: int) -> str:
    """The rules whose counters grew, in order, as one line (``""`` if none)."""
    old = counters(before)
    fam = "ip6" if version == 6 else "ip"
    path = [
        f"{fam} {k[0]}: {k[2]}"
        for k, v in counters(after).items()
        if v > old.get(k, 0) and not k[2].startswith(REPLY_SIDE)
    ]
    return "; ".join(path)


def attribute(inside: Runner, session: Session, target: Target) -> str:
    """Re-send one probe alone and name its legacy x_tables path (the fences that may
    follow it are dropped before x_tables: :data:`.trace.LEGACY_RULESET`)."""
    before = inside.run([SAVE[target.version], "-c"]).stdout
    session.send([target])
    after = inside.run([SAVE[target.version], "-c"]).stdout
    path = grown(before, after, target.version)
    return f"legacy x_tables: {path}" if path else "legacy x_tables: no rule counted it"
