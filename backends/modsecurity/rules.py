"""Reading ModSecurity rule text: which rules use cfallow's list, and which would exempt it.

Pure functions over rule files' text (the server modules find the files):
a directive spans continuation lines (a trailing backslash); a ``SecRule``
whose actions say ``chain`` and the rules it chains form one unit, so an
action on the first rule applies to a list named in a later one.

An exemption is a unit that names cfallow's list (``@ipMatchFromFile`` or
its alias ``@ipMatchF``) and switches the engine off (``ctl:ruleEngine=Off``
or ``DetectionOnly``) or ends rule processing (``allow``): every request from
those addresses would skip the WAF, and behind Cloudflare that is every
proxied request.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass

_OPERATOR = re.compile(r"@ipMatch(?:FromFile|F)\s+(\S+)", re.I)
_ENGINE_OFF = re.compile(r"ruleEngine\s*=\s*(?:Off|DetectionOnly)\s*$", re.I)
_INCLUDE = re.compile(r"^\s*Include\s+(\S+)", re.I)
#: Rule files followed through ``Include`` at most (a loop, a huge tree).
MAX_FILES = 2000


@dataclass(frozen=True)
class Directive:
    """One directive: its text on one line, and where it starts."""

    text: str
    file: str
    line: int


def directives(text: str, file: str) -> Iterator[Directive]:
    """The directives of one rule file (comments and blank lines left out)."""
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not parts:
            if not line or line.startswith("#"):
                continue
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        yield Directive(" ".join(parts), file, start)
        parts = []
    if parts:
        yield Directive(" ".join(parts), file, start)


def actions(text: str) -> list[tuple[str, str]]:
    """A rule's action list as ``(name, argument)`` pairs (commas inside quotes kept)."""
    out: list[tuple[str, str]] = []
    part, quoted = "", False
    for ch in text + ",":
        if ch == "'":
            quoted = not quoted
        if ch == "," and not quoted:
            name, _, arg = part.strip().partition(":")
            if name:
                out.append((name.strip().lower(), arg.strip().strip("'")))
            part = ""
        else:
            part += ch
    return out


def _exempts(pairs: list[tuple[str, str]]) -> bool:
    return any(name == "allow" or (name == "ctl" and _ENGINE_OFF.match(arg)) for name, arg in pairs)


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text, posix=True)
    except ValueError:
        return text.split()


def units(found: Iterator[Directive]) -> Iterator[list[Directive]]:
    """``SecRule`` directives grouped by ``chain`` (one unit per rule, chained rules together)."""
    unit: list[Directive] = []
    for d in found:
        words = _words(d.text)
        if not words or words[0].lower() not in ("secrule", "secaction"):
            continue
        unit.append(d)
        said = actions(words[-1]) if len(words) >= 3 else []
        if not any(name == "chain" for name, _ in said):
            yield unit
            unit = []
    if unit:
        yield unit


def _names(d: Directive, path: str) -> bool:
    for found in _OPERATOR.finditer(d.text):
        named = found.group(1).strip("\"'")
        if not os.path.isabs(named):
            named = os.path.join(os.path.dirname(d.file), named)
        if os.path.normpath(named) == os.path.normpath(path):
            return True
    return False


@dataclass(frozen=True)
class Findings:
    """Which rules name the list, and which of them would exempt its addresses."""

    uses: tuple[Directive, ...]
    exemptions: tuple[Directive, ...]


def scan(files: list[tuple[str, str]], path: str) -> Findings:
    """Look for rules naming ``path`` in ``files`` (``(name, text)`` pairs)."""
    uses: list[Directive] = []
    exempt: list[Directive] = []
    for name, text in files:
        for unit in units(directives(text, name)):
            naming = [d for d in unit if _names(d, path)]
            if not naming:
                continue
            uses.extend(naming)
            said = [a for d in unit if len(w := _words(d.text)) >= 3 for a in actions(w[-1])]
            if _exempts(said):
                exempt.append(unit[0])
    return Findings(tuple(uses), tuple(exempt))


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(1 << 20)
    except OSError:
        return None


def with_includes(roots: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``roots`` and every rule file their ``Include`` lines name (globs, recursively).

    A relative ``Include`` is taken from the including file's directory (what
    libmodsecurity does); a file that cannot be read is left out.
    """
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    todo = list(roots)
    while todo and len(out) < MAX_FILES:
        name, text = todo.pop(0)
        out.append((name, text))
        for d in directives(text, name):
            found = _INCLUDE.match(d.text)
            if not found:
                continue
            pattern = found.group(1).strip("\"'")
            if not os.path.isabs(pattern):
                pattern = os.path.join(os.path.dirname(name), pattern)
            for path in sorted(glob.glob(pattern)):
                real = os.path.realpath(path)
                if real in seen:
                    continue
                seen.add(real)
                body = _read(path)
                if body is not None:
                    todo.append((path, body))
    return out
