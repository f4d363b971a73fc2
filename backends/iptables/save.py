"""iptables-save text and tool failures: parse a filter or mangle table, say why a tool failed."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from cfallow.errors import BackendError, CommandFailed, CommandNotFound, Unavailable
from cfallow.runner import missing


@dataclass(frozen=True)
class Table:
    """One family's ``filter`` table as ``*-save`` printed it: chains and their rule specs.

    ``policies`` holds the built-in chains' ``:CHAIN POLICY [packets:bytes]``
    lines as printed (with ``-c``, the counters are the kernel's). ``mangle``
    is the same family's mangle table, read beside it where cfallow guards
    FORWARD there (parent ``DOCKER-USER``), else ``None``.
    """

    chains: tuple[tuple[str, tuple[str, ...]], ...]
    policies: tuple[str, ...] = ()
    mangle: Table | None = None

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


def parse_save(text: str, which: str = "filter") -> Table:
    """Parse ``iptables-save [-c]`` output: table ``which`` (comments, counters, others ignored)."""
    chains: dict[str, list[str]] = {}
    policies: list[str] = []
    head = f"*{which}"
    in_filter = False
    for line_read in text.split("\n"):
        # ``-c``: "[packets:bytes] -A ..."
        raw = line_read.partition("] ")[2] if line_read[:1] == "[" else line_read
        if raw[:3] == "-A ":  # nearly every line: the cheap test first
            if in_filter:
                name, _, spec = raw[3:].partition(" ")
                chains.setdefault(name, []).append(spec.strip())
            continue
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        if line[0] == "*":
            in_filter = line == head
        elif not in_filter or line == "COMMIT":
            continue
        elif line[0] == ":":
            name, policy = [*line[1:].split(), "-"][:2]
            chains.setdefault(name, [])
            if policy != "-":
                policies.append(line)
        else:
            raise BackendError(f"unexpected line in iptables-save output: {line[:80]!r}")
    return Table(tuple((n, tuple(rules)) for n, rules in chains.items()), tuple(policies))


def parse_tables(text: str, mangle: bool) -> Table:
    """The filter table of a read, with the mangle table beside it when ``mangle``."""
    table = parse_save(text)
    if not mangle:
        return table
    return Table(table.chains, table.policies, parse_save(text, "mangle"))


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


def failure(tool: str, exc: BackendError, module: str) -> BackendError:
    """The one-line error for an iptables tool that failed (or is not installed)."""
    if isinstance(exc, CommandNotFound):
        return Unavailable(missing(tool, "iptables"))
    if isinstance(exc, CommandFailed):
        return BackendError(explain(tool, exc.stderr, module))
    return exc


def explain(tool: str, stderr: str, module: str) -> str:
    """One line for a failed iptables tool: privileges, kernel support, or its own message."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    detail = lines[-1] if lines else "no message"
    low = stderr.lower()
    if "exec of" in low and "no such file" in low:  # a wrapper (ip netns exec) did not find it
        return missing(tool, "iptables")
    if "permission denied" in low or "must be root" in low or "not permitted" in low:
        return f"{tool}: permission denied (needs root, or CAP_NET_ADMIN and CAP_NET_RAW)"
    if any(
        s in low
        for s in ("protocol not supported", "does not exist", "insmod", "modprobe", "not supported")
    ):
        return f"{tool}: kernel support missing (module {module}?): {detail}"
    return f"{tool}: {detail}"
