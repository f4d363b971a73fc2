"""cfallow's one Fail2Ban drop-in, ``jail.d/zz-cfallow.local``: render, parse, check, put in place.

Each section extends the jail's base list instead of replacing it::

    [sshd]
    ignoreip = %(known/ignoreip)s
        173.245.48.0/20
        ...

``%(known/ignoreip)s`` is the value the jail had before this file (its own
``ignoreip`` or DEFAULT's). The same line in ``[DEFAULT]`` is a recursion
error, so the file never has a DEFAULT section.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from netaddr import IPNetwork

from cfallow.errors import ValidationError
from cfallow.model import Networks

from .client import check_jail_name, cidr, strs

NAME = "zz-cfallow.local"
KNOWN = "%(known/ignoreip)s"
HEADER = (
    "# Managed by cfallow: Cloudflare's ranges added to each jail's ignoreip.\n"
    "# cfallow rewrites this file; edits are lost. Remove it (and the live\n"
    "# entries it added) with: cfallow remove --backend fail2ban\n"
)


def render(owned: Mapping[str, Networks], extend: Collection[str]) -> str | None:
    """The file for ``{jail: ranges}``; None when there is nothing to list.

    Jails in ``extend`` have an ``ignoreip`` of their own or DEFAULT's, which
    their section extends through ``%(known/ignoreip)s``; for the others (no
    ``ignoreip`` anywhere, Debian's default) that reference would be an
    interpolation error, and there is no base list to keep.
    """
    parts = [HEADER]
    for jail in sorted(owned):
        nets = owned[jail]
        if not nets:
            continue
        lines = "".join(f"    {c}\n" for c in strs(nets))
        known = f" {KNOWN}" if jail in extend else ""
        parts.append(f"\n[{check_jail_name(jail)}]\nignoreip ={known}\n{lines}")
    return "".join(parts) if len(parts) > 1 else None


def parse(text: str) -> tuple[dict[str, Networks], list[str]]:
    """``({jail: ranges}, problems)`` of a drop-in's text.

    Only strict CIDRs count as owned; anything else is reported as a problem
    (a hand edit), and the next write replaces it.
    """
    owned: dict[str, set[IPNetwork]] = {}
    problems: list[str] = []
    jail: str | None = None
    key: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if not raw[0].isspace() and line.startswith("[") and line.endswith("]"):
            jail, key = line[1:-1].strip(), None
            owned.setdefault(jail, set())
            continue
        if raw[0].isspace() and key is not None:
            words = line.split()
        elif "=" in line and jail is not None:
            key, _, value = (p.strip() for p in line.partition("="))
            words = value.split()
            if key == "ignoreip" and words[:1] == [KNOWN]:
                words = words[1:]
        else:
            problems.append(f"unexpected line: {line!r}")
            continue
        if key != "ignoreip" or jail is None:
            problems.append(f"[{jail}] unexpected key {key!r}")
            continue
        for word in words:
            try:
                owned[jail].add(cidr(word.strip(",")))
            except ValidationError:
                problems.append(f"[{jail}] not a CIDR: {word!r}")
    return {j: frozenset(n) for j, n in owned.items()}, problems
