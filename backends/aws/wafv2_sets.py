"""WAFv2 IP sets for the ``aws-wafv2`` backend: ownership, the plan, web ACL references.

Pure functions over what ``ListIPSets``, ``GetIPSet`` and ``GetWebACL``
returned; no AWS call happens here. An IP set holds one family and up to
10,000 addresses; ``UpdateIPSet`` replaces the whole list and needs the
``LockToken`` of the last read. cfallow owns one set per family, named
``NAME-ipv4`` / ``NAME-ipv6``, described ``cfallow...`` and tagged
``managed-by=cfallow`` (the tag is checked before any write). It never edits a
web ACL: the admin's web ACL references the sets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from netaddr import IPNetwork

from cfallow.model import Networks, as_strings

FAMILIES = {4: "IPV4", 6: "IPV6"}
MAX_ADDRESSES = 10_000
DESCRIPTION = "cfallow: Cloudflare's ranges (managed by cfallow, do not edit)"


@dataclass(frozen=True)
class IpSet:
    """One of cfallow's IP sets as read."""

    name: str
    set_id: str
    arn: str
    family: str  # IPV4 / IPV6
    addresses: frozenset[str]
    lock: str


@dataclass(frozen=True)
class SetChange:
    """Create, replace the addresses of, or delete one set."""

    family: str
    name: str
    set_id: str | None  # None: create
    arn: str
    addresses: tuple[str, ...]
    lock: str
    delete: bool = False

    def text(self) -> str:
        """``create cfallow-cloudflare-ipv4 (15)`` and the like."""
        if self.delete:
            return f"delete IP set {self.name}"
        verb = "create" if self.set_id is None else "update"
        return f"{verb} IP set {self.name} ({len(self.addresses)} addresses)"


def set_name(prefix: str, family: str) -> str:
    """``cfallow-cloudflare-ipv4``."""
    return f"{prefix}-{family.lower()}"


def canonical(addresses: Iterable[str]) -> frozenset[str]:
    """Addresses as canonical CIDRs (WAF keeps them as written)."""
    return frozenset(str(IPNetwork(a).cidr) for a in addresses)


def owned_summaries(summaries: Iterable[Mapping[str, Any]], prefix: str) -> dict[str, Any]:
    """``{family: summary}`` of the sets named and described as cfallow's."""
    found = {}
    for family in FAMILIES.values():
        for s in summaries:
            if s.get("Name") == set_name(prefix, family) and str(
                s.get("Description") or ""
            ).startswith("cfallow"):
                found[family] = s
    return found


def wanted(desired: Networks) -> dict[str, frozenset[str]]:
    """``{family: addresses}`` for every family ``desired`` holds."""
    out: dict[str, set[str]] = {}
    for n in desired:
        out.setdefault(FAMILIES[n.version], set()).add(str(n))
    return {f: frozenset(a) for f, a in out.items()}


def plan_sets(found: Mapping[str, IpSet], desired: Networks | None, prefix: str) -> list[SetChange]:
    """The changes that make cfallow's sets hold ``desired`` (``None``: delete them).

    A family the list no longer has keeps its set, emptied (a web ACL may
    reference it); only removal deletes sets.
    """
    if desired is None:
        return [
            SetChange(s.family, s.name, s.set_id, s.arn, (), s.lock, delete=True)
            for s in found.values()
        ]
    want = wanted(desired)
    changes = []
    for family in FAMILIES.values():
        target = want.get(family, frozenset())
        have = found.get(family)
        if have is None and not target:
            continue
        if have is not None and have.addresses == target:
            continue
        changes.append(
            SetChange(
                family,
                set_name(prefix, family),
                have.set_id if have else None,
                have.arn if have else "",
                tuple(as_strings(IPNetwork(a) for a in target)),
                have.lock if have else "",
            )
        )
    return changes


def references(web_acl: Mapping[str, Any]) -> set[str]:
    """Every IP set ARN a web ACL's rules reference (nested statements included)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("IPSetReferenceStatement")
            if isinstance(ref, dict) and ref.get("ARN"):
                found.add(str(ref["ARN"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(web_acl.get("Rules") or [])
    return found
