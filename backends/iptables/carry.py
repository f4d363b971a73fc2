"""What the tables hold after cfallow's own restore batch, from the text read before it.

A changing sync writes one ``*-nft-restore --noflush`` batch per family. When
nothing but that batch committed between the read and the next run (the
backend proves it with the ruleset generation: see ``IptablesBackend.apply``),
the next run need not read the tables again: they are the text read before,
with the batch's lines applied. :func:`replay` applies them the way the kernel
did and ``*-nft-save`` prints the result: a declared existing chain is flushed,
``-D`` removes the first rule printed as that spec, ``-A`` appends, ``-I CHAIN
N`` inserts at rule ``N``; every rule of a chain it touched is printed
``-A CHAIN SPEC``, the form cfallow's no-change comparison already reads back.
Only the chains the batch names are read (``*-nft-save`` prints each chain's
rules as one run of lines, in the declarations' order); the rest of the text is
kept as it is. Anything else (a chain created or deleted, a chain without rules,
whose place it cannot tell, a line it does not know, a rule it cannot find) is
no replay: the next run reads the tables as before.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Lines whose success in a batch proves the batch changed something (a rule added or
#: deleted), so its commit is a transaction of its own: exactly one generation.
SURE = ("-A ", "-I ", "-D ")


@dataclass(frozen=True)
class Section:
    """One ``*TABLE`` ... ``COMMIT`` part of a batch: the table and its command lines."""

    table: str
    lines: tuple[str, ...]

    @property
    def sure(self) -> bool:
        """The part adds or deletes at least one rule (its commit bumps the generation)."""
        return any(line.startswith(SURE) for line in self.lines)

    def chains(self) -> frozenset[str]:
        """Every chain a line of the part names."""
        out = set()
        for line in self.lines:
            if line.startswith(":"):
                out.add(line[1:].split(" ", 1)[0])
            elif line[:1] == "-":
                out.add(line[3:].split(" ", 1)[0])
        return frozenset(out)


def sections(script: str) -> tuple[Section, ...]:
    """A restore batch's parts, in order (each is one transaction of ``*-nft-restore``)."""
    out: list[Section] = []
    table = ""
    lines: list[str] = []
    for line in script.splitlines():
        if line.startswith("*"):
            table, lines = line[1:], []
        elif line == "COMMIT":
            out.append(Section(table, tuple(lines)))
        elif line:
            lines.append(line)
    return tuple(out)


@dataclass(frozen=True)
class Replayed:
    """A family's text after the batch, and the rule specs of each chain a line named
    (``(table, chain)``: specs in order)."""

    text: str
    chains: dict[tuple[str, str], tuple[str, ...]]


def replay(text: str, script: str) -> Replayed | None:
    """``text`` (one family's ``*-nft-save`` output) after the restore batch ``script``;
    None where the outcome is not certain (see the module docstring)."""
    touched: dict[tuple[str, str], tuple[str, ...]] = {}
    for part in sections(script):
        done = _replay_table(text, part)
        if done is None:
            return None
        text, chains = done
        for name in part.chains():
            cut = len(name) + 4  # "-A NAME "
            touched[(part.table, name)] = tuple(ln[cut:] for ln in chains[name])
    return Replayed(text, touched)


def _replay_table(text: str, part: Section) -> tuple[str, dict[str, list[str]]] | None:
    """One part on its table in ``text``: only the rule lines of the chains it names are
    read (each chain's rules are one run of lines in ``*-nft-save`` output), the rest of
    the text is kept as it is."""
    head = f"*{part.table}\n"
    start = 0 if text.startswith(head) else text.find("\n" + head) + 1
    if start == 0 and not text.startswith(head):
        return None  # the table was not read (or does not exist): it would be created
    begin = start + len(head)
    end = text.find("\nCOMMIT\n", begin - 1) + 1  # the COMMIT line
    if end == 0:
        return None
    rules_at = text.find("\n-A ", begin - 1, end) + 1 or end  # the first rule line
    declared: dict[str, str] = {}
    for line in text[begin:rules_at].split("\n")[:-1]:
        if not line.startswith(":"):
            return None  # counters or a comment among the declarations: not what it knows
        declared[line[1:].split(" ", 1)[0]] = line
    blocks: dict[str, tuple[int, int]] = {}
    chains: dict[str, list[str]] = {}
    for name in sorted(part.chains()):
        needle = f"\n-A {name} "
        first = text.find(needle, rules_at - 1, end)
        if name not in declared or first < 0:
            return None  # a chain created, or one without rules: where its rules go is unsaid
        stop = text.find("\n", text.rfind(needle, rules_at - 1, end) + 1) + 1
        if text.count("\n", first + 1, stop) != text.count(needle, first, stop):
            return None  # its rules are not one run of lines
        blocks[name] = (first + 1, stop)
        chains[name] = text[first + 1 : stop].split("\n")[:-1]
    for line in part.lines:
        if not _apply(line, declared, chains):
            return None
    out, at = [], 0
    for name, (first, stop) in sorted(blocks.items(), key=lambda item: item[1]):
        out += [text[at:first], *(ln + "\n" for ln in chains[name])]
        at = stop
    out.append(text[at:])
    return "".join(out), chains


def _apply(line: str, declared: dict[str, str], chains: dict[str, list[str]]) -> bool:
    """One batch line on the parsed table; False where it cannot say what the kernel did."""
    if line.startswith(":"):
        name, policy = [*line[1:].split(), "-"][:2]
        if name not in chains or policy != "-" or not declared[name].startswith(f":{name} - "):
            return False  # a chain created, or a built-in one: not a changing sync's batch
        chains[name] = []  # ``--noflush``: a declared chain is flushed
        return True
    verb, _, rest = line.partition(" ")
    name, _, spec = rest.partition(" ")
    rules = chains.get(name)
    if rules is None or not spec:
        return False
    if verb == "-A":
        rules.append(f"-A {name} {spec}")
    elif verb == "-D":
        try:
            rules.remove(f"-A {name} {spec}")
        except ValueError:
            return False
    elif verb == "-I":
        number, _, spec = spec.partition(" ")
        if not number.isdigit() or not 1 <= int(number) <= len(rules) + 1 or not spec:
            return False
        rules.insert(int(number) - 1, f"-A {name} {spec}")
    else:
        return False  # -F, -X, a policy: a removal or not cfallow's
    return True
