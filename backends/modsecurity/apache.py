"""``server = "apache"``: ModSecurity v2 (mod_security2) in Apache, behind mod_remoteip.

The test, the graceful reload and its confirmation are the ``apache``
backend's. Its test output (``-D DUMP_INCLUDES``) lists every file Apache
read, ModSecurity's rule files among them (Apache's ``Include`` loads them).

The chain is right when Apache loads mod_remoteip, takes the client from
``CF-Connecting-IP`` (or ``X-Forwarded-For``) and trusts a list cfallow keeps
(``RemoteIPTrustedProxyList``: the ``apache`` backend's list, or this very
file: the format is the same). mod_remoteip rewrites the address in Apache's
post-read hook, before ModSecurity's phase 1, and mod_security2's
``REMOTE_ADDR`` then is the visitor (measured: docs/modsecurity.md).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..realip.apache import _INCLUDED, ApacheBackend
from .backend import MARK, ModsecurityBackend

_REMOTEIP = re.compile(r"^\s*LoadModule\s+remoteip_module\s", re.M | re.I)
_HEADER = re.compile(
    r"^\s*RemoteIPHeader\s+\"?(CF-Connecting-IP|X-Forwarded-For)\"?\s*$", re.M | re.I
)
_LIST = re.compile(r"^\s*RemoteIP(?:Trusted|Internal)ProxyList\s+\"?([^\"\s]+)\"?\s*$", re.M | re.I)


def _text(path: str, limit: int = 1 << 20) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(limit)
    except OSError:
        return None


def kept_by_cfallow(path: str) -> bool:
    """Is ``path`` a list cfallow writes (its first line is cfallow's mark)?"""
    head = _text(path, 200)
    return head is not None and head.startswith(MARK)


class ModsecApache(ModsecurityBackend, ApacheBackend):
    """ModSecurity v2 in Apache."""

    kind = "apache"

    def rule_files(self, dump: str) -> list[tuple[str, str]]:
        out = []
        for line in dump.splitlines():
            found = _INCLUDED.match(line)
            if found:
                text = _text(found.group(1))
                if text is not None:
                    out.append((found.group(1), text))
        return out

    def chain(self, dump: str, files: Sequence[tuple[str, str]]) -> tuple[str | None, str]:
        if "Included configuration files:" not in dump:
            return "the configuration test does not list Apache's files (-D DUMP_INCLUDES)", ""
        texts = [text for _, text in files]
        if not any(_REMOTEIP.search(t) for t in texts):
            return "Apache does not load mod_remoteip (a2enmod remoteip)", ""
        headers = [m.group(1) for t in texts for m in _HEADER.finditer(t)]
        if not headers:
            return "Apache takes no client address from CF-Connecting-IP (RemoteIPHeader)", ""
        lists = [m.group(1) for t in texts for m in _LIST.finditer(t)]
        ours = [p for p in lists if Path(p).is_absolute() and kept_by_cfallow(p)]
        if not ours:
            return (
                "mod_remoteip trusts no list cfallow keeps (RemoteIPTrustedProxyList with the "
                f"apache backend's list, or {self.path})",
                "",
            )
        return None, (
            f"Apache's mod_remoteip takes the visitor from {headers[0]}, trusting {ours[0]} "
            "(kept by cfallow), before ModSecurity's phase 1"
        )
