"""Security-group rules for the ``aws`` backend: ownership, per-group diff, quota.

Pure functions over what ``describe_security_group_rules`` returned; no AWS
call happens here. A rule's identity in AWS is protocol + port range + source
(a CIDR, a prefix list or a group); the description is not part of it, so one
owned and one unowned rule can never share a :class:`Key`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from netaddr import AddrFormatError, IPNetwork

from cfallow.model import Networks
from cfallow.section import PortRange

TAG_KEY = "managed-by"
TAG_VALUE = "cfallow"
DESCRIPTION = "cfallow: Cloudflare range (managed by cfallow, do not edit)"
FAMILIES = ("IPv4", "IPv6")
#: Placeholder target for the prefix list of a family that ``apply`` creates.
PENDING = {"IPv4": "@IPv4", "IPv6": "@IPv6"}


@dataclass(frozen=True)
class Key:
    """A rule's identity: protocol, port range and source."""

    protocol: str
    from_port: int
    to_port: int
    #: canonical CIDR, ``pl-...``, ``@IPv4``/``@IPv6`` (a list still to be created) or ``sg-...``
    target: str

    @property
    def port(self) -> str:
        """``tcp/443`` or ``tcp/8000-8080``."""
        if self.from_port == self.to_port:
            return f"{self.protocol}/{self.from_port}"
        return f"{self.protocol}/{self.from_port}-{self.to_port}"

    @property
    def kind(self) -> str:
        """``IPv4``, ``IPv6``, ``prefix-list`` or ``group``."""
        if self.target.startswith(("pl-", "@")):
            return "prefix-list"
        if self.target.startswith("sg-"):
            return "group"
        return "IPv6" if ":" in self.target else "IPv4"


@dataclass(frozen=True)
class Rule:
    """One ingress rule as AWS reported it."""

    rule_id: str
    key: Key
    owned: bool


@dataclass(frozen=True)
class GroupChange:
    """The writes for one group: one authorize batch, then one revoke batch."""

    group: str
    authorize: tuple[Key, ...] = ()
    revoke: tuple[Rule, ...] = ()
    #: both batches at once would exceed the quota: revoke first
    revoke_first: bool = False


@dataclass(frozen=True)
class GroupUnreadable:
    """A group whose rules could not be read (reported by ``apply``)."""

    group: str
    code: str


def _canonical(cidr: str) -> str:
    try:
        return str(IPNetwork(cidr).cidr)
    except (AddrFormatError, ValueError, TypeError):
        return cidr


def is_owned(raw: Mapping[str, Any]) -> bool:
    """cfallow's rule: tagged ``managed-by=cfallow`` and described ``cfallow...``."""
    tags = {t.get("Key"): t.get("Value") for t in raw.get("Tags") or []}
    description = raw.get("Description") or ""
    return tags.get(TAG_KEY) == TAG_VALUE and description.startswith("cfallow")


def parse_rules(raw_rules: Iterable[Mapping[str, Any]]) -> list[Rule]:
    """The ingress rules of one ``describe_security_group_rules`` answer."""
    rules = []
    for raw in raw_rules:
        if raw.get("IsEgress"):
            continue
        if raw.get("CidrIpv4"):
            target = _canonical(raw["CidrIpv4"])
        elif raw.get("CidrIpv6"):
            target = _canonical(raw["CidrIpv6"])
        elif raw.get("PrefixListId"):
            target = raw["PrefixListId"]
        else:
            ref = raw.get("ReferencedGroupInfo") or {}
            target = ref.get("GroupId") or "sg-?"
        key = Key(
            str(raw.get("IpProtocol", "-1")),
            int(raw.get("FromPort", -1)),
            int(raw.get("ToPort", -1)),
            target,
        )
        rules.append(Rule(str(raw["SecurityGroupRuleId"]), key, is_owned(raw)))
    return rules


WORLD = ("0.0.0.0/0", "::/0")


def open_to_all(
    group: str, rules: Iterable[Rule], protocol: str, ports: Iterable[PortRange]
) -> list[str]:
    """Notes for rules not cfallow's that open a managed port to every address.

    Security groups only allow, so such a rule (AWS's "HTTPS from anywhere")
    lets everyone in beside Cloudflare: the allowlist does not hold.
    """
    spans = [(p.first, p.last) for p in ports]
    notes = []
    for r in rules:
        k = r.key
        if r.owned or k.target not in WORLD or k.protocol not in (protocol, "-1"):
            continue
        every_port = k.protocol == "-1" or (k.from_port, k.to_port) == (-1, -1)
        if every_port or any(k.from_port <= last and first <= k.to_port for first, last in spans):
            what = "all traffic" if k.protocol == "-1" else k.port
            notes.append(
                f"{group}: {what} is open to {k.target} by rule {r.rule_id}, not cfallow's: "
                "anyone reaches the port, not only Cloudflare"
            )
    return notes


def group_change(group: str, rules: Iterable[Rule], wanted: Iterable[Key]) -> GroupChange:
    """Authorize what is wanted and present in no rule; revoke owned rules not wanted.

    An unowned rule with the same key counts as present: no duplicate is
    attempted, and it is never revoked.
    """
    rules = list(rules)
    present = {r.key for r in rules}
    want = set(wanted)
    authorize = tuple(sorted((k for k in want if k not in present), key=_order))
    revoke = tuple(
        sorted((r for r in rules if r.owned and r.key not in want), key=lambda r: _order(r.key))
    )
    return GroupChange(group, authorize, revoke)


def _order(key: Key) -> tuple[int, int, str, str]:
    return (key.from_port, key.to_port, key.kind, key.target)


def permissions(keys: Iterable[Key]) -> list[dict[str, Any]]:
    """``IpPermissions`` for one authorize batch (every port, both families, descriptions)."""
    by_port: dict[tuple[str, int, int], dict[str, list[dict[str, str]]]] = {}
    for k in keys:
        perm = by_port.setdefault((k.protocol, k.from_port, k.to_port), {})
        if k.kind == "IPv4":
            perm.setdefault("IpRanges", []).append({"CidrIp": k.target, "Description": DESCRIPTION})
        elif k.kind == "IPv6":
            perm.setdefault("Ipv6Ranges", []).append(
                {"CidrIpv6": k.target, "Description": DESCRIPTION}
            )
        elif k.kind == "prefix-list":
            perm.setdefault("PrefixListIds", []).append(
                {"PrefixListId": k.target, "Description": DESCRIPTION}
            )
        else:  # pragma: no cover - cfallow never wants a group reference
            raise ValueError(f"cannot authorize {k}")
    return [
        {"IpProtocol": proto, "FromPort": first, "ToPort": last, **ranges}
        for (proto, first, last), ranges in by_port.items()
    ]


def tag_specifications() -> list[dict[str, Any]]:
    """The ownership tag for every rule cfallow creates."""
    return [
        {
            "ResourceType": "security-group-rule",
            "Tags": [{"Key": TAG_KEY, "Value": TAG_VALUE}],
        }
    ]


def weight(key: Key, lists: Mapping[str, tuple[str, int]]) -> dict[str, int]:
    """What one rule costs against each family's quota.

    A prefix-list reference costs the list's MaxEntries in its family (both
    families when the list is unknown); a group reference one rule in each.
    """
    if key.kind in FAMILIES:
        return {key.kind: 1}
    if key.kind == "prefix-list":
        if key.target in lists:
            family, size = lists[key.target]
            return {family: size}
        return {"IPv4": 1, "IPv6": 1}
    return {"IPv4": 1, "IPv6": 1}


def count(keys: Iterable[Key], lists: Mapping[str, tuple[str, int]]) -> Counter[str]:
    """Rules per family for a set of rules."""
    total: Counter[str] = Counter()
    for k in keys:
        total.update(weight(k, lists))
    return total


def quota(
    change: GroupChange,
    rules: Iterable[Rule],
    lists: Mapping[str, tuple[str, int]],
    limit: int,
) -> tuple[GroupChange, str | None]:
    """Check one group's change against ``limit`` per family, before any write.

    Returns the change (with ``revoke_first`` set when add-then-remove would
    pass through more than ``limit`` rules but the end state fits) and an error
    line when the end state itself does not fit.
    """
    rules = list(rules)
    gone = {r.rule_id for r in change.revoke}
    kept = [r for r in rules if r.rule_id not in gone]
    ours_after = count([r.key for r in kept if r.owned] + list(change.authorize), lists)
    others = count([r.key for r in kept if not r.owned], lists)
    for family in FAMILIES:
        need = ours_after[family] + others[family]
        if need > limit:
            return change, (
                f"{change.group} needs {need} {family} rules ({ours_after[family]} cfallow"
                f" + {others[family]} other), quota {limit}"
            )
    peak = count([r.key for r in rules] + list(change.authorize), lists)
    if change.authorize and change.revoke and any(peak[f] > limit for f in FAMILIES):
        return GroupChange(change.group, change.authorize, change.revoke, True), None
    return change, None


def explain(changes: Iterable[GroupChange], add: Networks, remove: Networks) -> list[str]:
    """Drift lines for the writes that the CIDR-level ``add``/``remove`` do not explain.

    A range already allowed in one group but missing in another, a port
    added or dropped, a mode change: each is a write, so each is named.
    """
    added = {str(n) for n in add}
    removed = {str(n) for n in remove}
    lines = []
    for ch in changes:
        missing: Counter[str] = Counter()
        for k in ch.authorize:
            if k.kind == "prefix-list":
                lines.append(f"{ch.group}: prefix-list rule missing on {k.port} ({k.target})")
            elif k.target not in added:
                missing[k.port] += 1
        lines += [f"{ch.group}: {n} rule(s) missing on {p}" for p, n in sorted(missing.items())]
        stale: Counter[str] = Counter()
        for r in ch.revoke:
            if r.key.kind == "prefix-list":
                lines.append(f"{ch.group}: owned prefix-list rule on {r.key.port} to revoke")
            elif r.key.target not in removed:
                stale[r.key.port] += 1
        lines += [
            f"{ch.group}: {n} owned rule(s) on {p} no longer wanted"
            for p, n in sorted(stale.items())
        ]
        if ch.revoke_first:
            lines.append(f"{ch.group}: revoking before authorizing (both at once exceed the quota)")
    return lines
