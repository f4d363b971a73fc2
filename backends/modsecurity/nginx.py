"""``server = "nginx"``: libmodsecurity 3 through nginx's connector, behind the realip module.

The test (``nginx -T``), the reload and its confirmation on the running
master are the ``nginx`` backend's. ``nginx -T`` dumps nginx's own files;
ModSecurity's rules are found from its ``modsecurity_rules_file`` and
``modsecurity_rules`` directives (and the rules' ``Include`` lines).

The connector hands libmodsecurity one address, the connection's as nginx's
realip module left it when the connector's rewrite-phase handler runs. The
realip module rewrites it in the post-read phase only with ``real_ip_header``
set in the ``http`` or ``server`` block; set in a ``location`` block it acts
later (pre-access), after ModSecurity judged the edge (measured:
docs/modsecurity.md). So the chain is right when ``real_ip_header
CF-Connecting-IP`` (or ``X-Forwarded-For``) is set outside every ``location``
and a ``set_real_ip_from`` list cfallow keeps (the ``nginx`` backend's file)
is part of the configuration. What this does not follow: which ``server``
block each file is included in (an ``include`` of cfallow's list inside one
virtual host only counts as present).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from ..realip.nginx import NginxBackend
from .backend import MARK, ModsecurityBackend

_FILE = re.compile(r"^# configuration file (.+):$", re.M)
_RULES_FILE = re.compile(r"^\s*modsecurity_rules_file\s+[\"']?([^\"';\s]+)[\"']?\s*;", re.M)
_INLINE = re.compile(
    r"modsecurity_rules\s+(?:'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\")\s*;", re.S
)
_HEADERS = ("cf-connecting-ip", "x-forwarded-for")


def dumped(dump: str) -> list[tuple[str, str]]:
    """``nginx -T``'s output as ``(file, text)`` pairs."""
    parts = _FILE.split(dump)
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]


def statements(text: str) -> Iterator[tuple[tuple[str, ...], list[str]]]:
    """Each simple directive of one nginx file as ``(enclosing block names, words)``."""
    stack: list[str] = []
    words: list[str] = []
    word = ""
    quote = ""
    comment = False
    for ch in text:
        if comment:
            comment = ch != "\n"
            continue
        if quote:
            if ch == quote:
                quote = ""
            else:
                word += ch
            continue
        if ch in "\"'":
            quote = ch
        elif ch == "#" and not word:
            comment = True
        elif ch.isspace() or ch in ";{}":
            if word:
                words.append(word)
                word = ""
            if ch == ";":
                yield tuple(stack), words
                words = []
            elif ch == "{":
                stack.append(words[0] if words else "")
                words = []
            elif ch == "}":
                if stack:
                    stack.pop()
                words = []
        else:
            word += ch


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(1 << 20)
    except OSError:
        return None


class ModsecNginx(ModsecurityBackend, NginxBackend):
    """libmodsecurity 3 in nginx."""

    kind = "nginx"

    def rule_files(self, dump: str) -> list[tuple[str, str]]:
        out = []
        for name, text in dumped(dump):
            for found in _RULES_FILE.finditer(text):
                body = _read(found.group(1))
                if body is not None:
                    out.append((found.group(1), body))
            for found in _INLINE.finditer(text):
                out.append((name, found.group(1) or found.group(2) or ""))
        return out

    def chain(self, dump: str, files: Sequence[tuple[str, str]]) -> tuple[str | None, str]:
        conf = dumped(dump)
        if not conf:
            return "the configuration test does not dump nginx's files (nginx -T)", ""
        outside: list[tuple[str, str]] = []
        inside: list[tuple[str, str]] = []
        for name, text in conf:
            for blocks, words in statements(text):
                if len(words) == 2 and words[0] == "real_ip_header":
                    if words[1].lower() not in _HEADERS:
                        continue
                    (inside if "location" in blocks else outside).append((name, words[1]))
        lists = [
            name
            for name, text in conf
            if text.lstrip("\n").startswith(MARK) and "set_real_ip_from" in text
        ]
        if not outside:
            if inside:
                return (
                    f"real_ip_header is set in a location block ({inside[0][0]}): there nginx "
                    "restores the address after ModSecurity's rules ran; set it in the http or "
                    "server block",
                    "",
                )
            return "nginx takes no client address from CF-Connecting-IP (real_ip_header)", ""
        if not lists:
            return (
                "nginx's real_ip_header trusts no set_real_ip_from list cfallow keeps (the nginx "
                "backend's file)",
                "",
            )
        return None, (
            f"nginx's realip module takes the visitor from {outside[0][1]} (http/server level), "
            f"trusting {lists[0]} (kept by cfallow), before the connector hands the request to "
            "ModSecurity"
        )
