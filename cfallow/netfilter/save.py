"""iptables' ``*-save`` text, either variant: the tools' names, one parser, the variant.

Every reader of save text (the iptables backend, the host analysis, the NAT
analysis, verify) goes through :func:`parse_save`; the tools are named only here.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from cfallow.errors import BackendError
from cfallow.netfilter import generation, witness
from cfallow.netfilter.generation import Memo
from cfallow.runner import Runner

if TYPE_CHECKING:  # the analysis' model: imported by input_chain, which only it calls
    from cfallow.netfilter.evaluate import Chain, Json

#: ``*-save`` per variant and IP version; ``old`` are the names before iptables 1.8
#: (the legacy tools on such hosts, and the generic names of either variant).
SAVE: Mapping[str, Mapping[int, str]] = {
    "nft": {4: "iptables-nft-save", 6: "ip6tables-nft-save"},
    "legacy": {4: "iptables-legacy-save", 6: "ip6tables-legacy-save"},
    "old": {4: "iptables-save", 6: "ip6tables-save"},
}
#: ``*-restore``, named as :data:`SAVE`.
RESTORE: Mapping[str, Mapping[int, str]] = {
    "nft": {4: "iptables-nft-restore", 6: "ip6tables-nft-restore"},
    "legacy": {4: "iptables-legacy-restore", 6: "ip6tables-legacy-restore"},
    "old": {4: "iptables-restore", 6: "ip6tables-restore"},
}
#: The commands themselves (``-S CHAIN`` lists one chain as ``*-save`` prints its rules).
COMMAND: Mapping[str, Mapping[int, str]] = {
    "nft": {4: "iptables-nft", 6: "ip6tables-nft"},
    "legacy": {4: "iptables-legacy", 6: "ip6tables-legacy"},
    "old": {4: "iptables", 6: "ip6tables"},
}
#: The command whose ``--version`` says the variant.
IPTABLES = "iptables"
#: What ``--version`` said, for the binary that said it (a file in the state directory).
VERSION_MEMO = "iptables-version.json"


def binary(runner: Runner, command: str = IPTABLES) -> str | None:
    """What ``command`` runs (:func:`cfallow.netfilter.witness.program`). None where another
    namespace's files may differ (a runner prefix) or there is none."""
    if runner.prefix:
        return None
    return witness.program(command, (runner.env or {}).get("PATH") or os.environ.get("PATH"))


def version_text(runner: Runner, memo: Memo | None = None) -> str:
    """``iptables --version``, or what it said the last time for the same binary."""
    key = None if memo is None else generation.key(binary(runner), IPTABLES)
    kept = memo.get(key) if memo is not None else None
    if isinstance(kept, str):
        return kept
    text = runner.run([IPTABLES, "--version"]).stdout
    if memo is not None:
        memo.put(key, text)
    return text


def save_tools(variant: str) -> dict[int, tuple[str, str]]:
    """The ``*-save`` names to try per IP version for ``variant`` (its own, then the old)."""
    if variant not in ("nft", "legacy"):
        return {}
    return {v: (SAVE[variant][v], SAVE["old"][v]) for v in (4, 6)}


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
class Table:
    """One family's ``filter`` table as ``*-save`` printed it: chains and their rule specs.

    ``policies`` holds the built-in chains' ``:CHAIN POLICY [packets:bytes]``
    lines as printed (with ``-c``, the counters are the kernel's). ``mangle``
    is the same family's mangle table, read beside it where cfallow guards
    FORWARD there (parent ``DOCKER-USER``), else ``None``. ``input_lines``: the
    line of each ``INPUT`` rule in the text parsed (the analysis names a rule by
    it; :func:`input_chain` takes them from here rather than scan the text again).
    """

    chains: tuple[tuple[str, tuple[str, ...]], ...]
    policies: tuple[str, ...] = ()
    mangle: Table | None = None
    input_lines: tuple[int, ...] = field(default=(), compare=False, repr=False)

    def same_rules(self, other: Table) -> bool:
        """The same chains and rules (counters aside), the mangle table's too."""
        if self.chains != other.chains or (self.mangle is None) != (other.mangle is None):
            return False
        return self.mangle is None or other.mangle is None or self.mangle.same_rules(other.mangle)

    def rules(self, chain: str) -> tuple[str, ...] | None:
        """The specs of ``chain`` in order, or None if there is no such chain."""
        for name, rules in self.chains:
            if name == chain:
                return rules
        return None


@dataclass
class _Scan:
    chains: dict[str, list[str]]
    policies: list[str]
    lines: list[int]  # the line index of each rule of the chain asked for


def _lines(text: str) -> Iterator[str]:
    """``text.split("\\n")`` one line at a time (100,000 rules are 15 MB as a list)."""
    start, find = 0, text.find
    while (end := find("\n", start)) >= 0:
        yield text[start:end]
        start = end + 1
    yield text[start:]


def _scan(text: str, which: str, lines_of: str = "") -> _Scan:
    out = _Scan({}, [], [])
    head = f"*{which}"
    inside = False
    for n, line_read in enumerate(_lines(text)):
        # ``-c``: "[packets:bytes] -A ..."
        raw = line_read.partition("] ")[2] if line_read[:1] == "[" else line_read
        if raw[:3] == "-A ":  # nearly every line: the cheap test first
            if inside:
                name, _, spec = raw[3:].partition(" ")
                out.chains.setdefault(name, []).append(spec.strip())
                if name == lines_of:
                    out.lines.append(n)
            continue
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        if line[0] == "*":
            inside = line == head
        elif not inside or line == "COMMIT":
            continue
        elif line[0] == ":":
            name, policy = [*line[1:].split(), "-"][:2]
            out.chains.setdefault(name, [])
            if policy != "-":
                out.policies.append(line)
        else:
            raise BackendError(f"unexpected line in iptables-save output: {line[:80]!r}")
    return out


def parse_save(text: str, which: str = "filter") -> Table:
    """Parse ``iptables-save [-c]`` output: table ``which`` (comments, counters, others ignored)."""
    scan = _scan(text, which, "INPUT" if which == "filter" else "")
    chains = tuple((n, tuple(r)) for n, r in scan.chains.items())
    return Table(chains, tuple(scan.policies), input_lines=tuple(scan.lines))


def parse_tables(text: str, mangle: bool) -> Table:
    """The filter table of a read, with the mangle table beside it when ``mangle``."""
    table = parse_save(text)
    if not mangle:
        return table
    return replace(table, mangle=parse_save(text, "mangle"))


def target_of(spec: str) -> str | None:
    """The ``-j``/``-g`` target of a rule spec."""
    if '"' in spec or "'" in spec or "\\" in spec:
        try:
            tokens = shlex.split(spec)
        except ValueError:
            return None
    else:
        tokens = spec.split()  # the common case, and many times faster
    for flag, value in zip(tokens, tokens[1:]):
        if flag in ("-j", "-g", "--jump", "--goto"):
            return value
    return None


def input_chain(text: str, version: int, table: Table | None = None) -> Chain | None:
    """The ``filter`` table's INPUT chain of ``*-save -t filter`` text, for the analysis.

    Rules become opaque matches (``xt``) with their verdict, so the analysis says
    "cannot tell" for them unless they only jump somewhere; a rule's handle is its
    line in ``text``. ``table``: :func:`parse_save` of this very ``text``, if the
    caller has it (the text is then not scanned again).
    """
    from cfallow.netfilter.evaluate import Chain, Rule

    specs = table.rules("INPUT") if table is not None else None
    if table is None or len(specs or ()) != len(table.input_lines):
        table = parse_save(text)
        specs = table.rules("INPUT")
    policies = table.policies
    policy = next((p.split()[1].lower() for p in policies if p.startswith(":INPUT ")), None)
    if policy is None:
        return None
    rules, last = [], None
    for n, spec in zip(table.input_lines, specs or ()):
        at = f" {spec}".rfind(" -j ")
        target = spec[at + 3 :].split(" ", 1)[0] if at >= 0 else ""
        key = (spec == f"-j {target}", target)
        if key == last:  # consecutive opaque rules with one verdict say no more
            continue
        last = key
        rules.append(Rule(n, (*(() if key[0] else ({"xt": None},)), _verdict(target))))
    fam = "ip" if version == 4 else "ip6"
    return Chain(fam, "filter", "INPUT", "input", 0, policy, tuple(rules))


def _verdict(target: str) -> Json:
    if target in ("ACCEPT", "DROP", "REJECT"):
        return {target.lower(): None}
    return {"jump": {"target": target}} if target else {"counter": None}
