"""Security-group reads and writes of the ``aws`` backend (one batch per call).

Reading: which configured groups exist (one ``describe_security_groups``),
then one paginated ``describe_security_group_rules`` per group. Writing: one
``authorize_security_group_ingress`` with every rule (tagged, described), and
one ``revoke_security_group_ingress`` by rule id; each re-reads the group and
retries once when the group changed between plan and apply.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cfallow.errors import BackendError

from .client import Ec2, aws_errors, error_code
from .rules import GroupUnreadable, Key, Rule, parse_rules, permissions, tag_specifications

#: Groups read at once.
WORKERS = 8
_NOT_FOUND = ("InvalidSecurityGroupRuleId.NotFound", "InvalidPermission.NotFound")


def describe(ec2: Ec2, group: str) -> list[dict[str, Any]]:
    """Every rule of one group (all pages)."""
    return ec2.pages(
        "describe_security_group_rules",
        "SecurityGroupRules",
        Filters=[{"Name": "group-id", "Values": [group]}],
    )


def unattached(ec2: Ec2, groups: Iterable[str]) -> list[str]:
    """Notes for groups no network interface uses: their rules admit no one (yet).

    One paginated ``describe_network_interfaces``; a refusal (an IAM policy from
    before this check, without ``ec2:DescribeNetworkInterfaces``) is a note, not a failure.
    """
    wanted = sorted(groups)
    if not wanted:
        return []
    try:
        enis = ec2.pages(
            "describe_network_interfaces",
            "NetworkInterfaces",
            Filters=[{"Name": "group-id", "Values": wanted}],
        )
    except aws_errors() as exc:
        return [
            f"cannot tell whether the groups are attached to anything: {error_code(exc)} "
            "(allow ec2:DescribeNetworkInterfaces, see docs/aws.md)"
        ]
    used = {g.get("GroupId") for eni in enis for g in eni.get("Groups") or []}
    return [
        f"{g}: attached to no network interface: its rules admit no one until it is"
        for g in wanted
        if g not in used
    ]


def read(
    ec2: Ec2, groups: Sequence[str], *, workers: int = WORKERS
) -> tuple[dict[str, list[Rule]], list[GroupUnreadable], list[str]]:
    """The ingress rules of each readable group, the groups that could not be read, and
    notes on the groups no network interface uses.

    Raises :class:`BackendError` when no group at all can be read.
    """
    # A group-id filter on a deleted group reads as an empty group: ask which exist.
    try:
        found = {
            g["GroupId"]
            for g in ec2.pages(
                "describe_security_groups",
                "SecurityGroups",
                Filters=[{"Name": "group-id", "Values": list(groups)}],
            )
        }
    except aws_errors() as exc:
        raise BackendError(f"cannot list the security groups: {error_code(exc)}") from exc
    notes = unattached(ec2, (g for g in groups if g in found))
    reads: dict[str, list[Rule]] = {}
    failed = [GroupUnreadable(g, "InvalidGroup.NotFound") for g in groups if g not in found]
    present = [g for g in groups if g in found]

    def one(group: str) -> list[Rule] | GroupUnreadable:
        try:
            return parse_rules(describe(ec2, group))
        except aws_errors() as exc:
            return GroupUnreadable(group, error_code(exc))

    # One describe per group, a bounded few at a time (100 groups one after another: 15 s).
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(present)))) as pool:
        for group, got in zip(present, pool.map(one, present)):
            if isinstance(got, GroupUnreadable):
                failed.append(got)
            else:
                reads[group] = got
    if not reads:
        raise BackendError("; ".join(f"{f.group}: {f.code} (describe)" for f in failed))
    return reads, failed, notes


def authorize(ec2: Ec2, group: str, keys: Iterable[Key]) -> None:
    """One batch; on ``InvalidPermission.Duplicate`` re-read and send what is still missing."""
    keys = list(keys)
    for attempt in (1, 2):
        try:
            ec2.call(
                "authorize_security_group_ingress",
                GroupId=group,
                IpPermissions=permissions(keys),
                TagSpecifications=tag_specifications(),
            )
            return
        except aws_errors() as exc:
            if attempt == 2 or error_code(exc) != "InvalidPermission.Duplicate":
                raise
        # One duplicate rejects the whole batch: a rule appeared since the read.
        present = {r.key for r in parse_rules(describe(ec2, group))}
        keys = [k for k in keys if k not in present]
        if not keys:
            return


def revoke(ec2: Ec2, group: str, rules: Iterable[Rule]) -> None:
    """One batch by rule id; if a rule went away meanwhile, revoke the ones still there."""
    ids = [r.rule_id for r in rules]
    for attempt in (1, 2):
        try:
            ec2.call("revoke_security_group_ingress", GroupId=group, SecurityGroupRuleIds=ids)
            return
        except aws_errors() as exc:
            if attempt == 2 or error_code(exc) not in _NOT_FOUND:
                raise
        present = {r.rule_id for r in parse_rules(describe(ec2, group))}
        ids = [i for i in ids if i in present]
        if not ids:
            return
