"""The aws backend with botocore's Stubber, where moto is not faithful.

moto counts IPv4 and IPv6 rules together against 60, counts a prefix-list
reference as nothing, ignores ``CurrentVersion`` and never throttles; AWS does
all of these (docs/aws.md, "Tests and measured numbers"). Here the responses are AWS's documented
shapes (Stubber validates them against botocore's model) and every call the
backend makes is recorded with its parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from support.cfdata import CURRENT, OLD

from cfallow.backend import Context, build
from cfallow.engine import run_backend

G1, G2 = "sg-0aaaaaaaaaaaaaaa1", "sg-0bbbbbbbbbbbbbbb2"
PL4, PL6, FOREIGN = "pl-0aaaaaaaaaaaaaaa4", "pl-0aaaaaaaaaaaaaaa6", "pl-0ffffffffffffffff"
TAGS = [{"Key": "managed-by", "Value": "cfallow"}]
V4 = sorted(str(n) for n in CURRENT if n.version == 4)
V6 = sorted(str(n) for n in CURRENT if n.version == 6)
OLD_V4 = sorted(str(n) for n in OLD if n.version == 4)


class Stubbed:
    """An AwsBackend on a stubbed EC2 client that records each call and its parameters."""

    state = Path("/nonexistent")  # set per test (the autouse fixture)

    def __init__(self, groups: tuple[str, ...] = (G1,), **options: Any) -> None:
        self.client = boto3.client(
            "ec2", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="y"
        )
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.client.meta.events.register(
            "provide-client-params.ec2",
            lambda params, model, **_: self.calls.append((model.name, dict(params))),
        )
        self.stub = Stubber(self.client)
        self.stub.activate()
        section = {"region": "eu-west-1", "security_group_ids": list(groups), "ports": [443]}
        # the backend's state (its mark of the prefix lists it made): the test's temp dir
        self.backend = build("aws", {**section, **options}, Context(state_dir=Stubbed.state))
        self.backend.set_client(self.client)  # type: ignore[attr-defined]

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def writes(self) -> list[str]:
        return [n for n in self.names() if not n.startswith(("Describe", "Get"))]

    def groups(self, *groups: str) -> None:
        self.stub.add_response(
            "describe_security_groups",
            {"SecurityGroups": [{"GroupId": g, "GroupName": g} for g in groups]},
            {"Filters": [{"Name": "group-id", "Values": list(groups)}]},
        )
        # Each group in use by one network interface (else a note says it admits no one).
        self.stub.add_response(
            "describe_network_interfaces",
            {"NetworkInterfaces": [{"Groups": [{"GroupId": g} for g in groups]}]},
            {"Filters": [{"Name": "group-id", "Values": sorted(groups)}]},
        )

    def rules(self, group: str, rules: list[dict[str, Any]]) -> None:
        self.stub.add_response(
            "describe_security_group_rules",
            {"SecurityGroupRules": rules},
            {"Filters": [{"Name": "group-id", "Values": [group]}]},
        )

    def no_lists(self) -> None:
        """cfallow's own prefix lists: none. Looked for only in prefix-list mode (or while a
        rule or this host's state says cfallow has some): with the mode off, no call."""
        if self.backend.prefix_lists:  # type: ignore[attr-defined]
            self.stub.add_response(
                "describe_managed_prefix_lists", {"PrefixLists": []}, {"Filters": ANY}
            )

    def ok(self, operation: str, params: dict[str, Any] | None = None) -> None:
        body = {"Return": True} if operation.endswith("_ingress") else {}
        self.stub.add_response(operation, body, params)

    def error(self, operation: str, code: str, status: int = 400, message: str = "") -> None:
        self.stub.add_client_error(
            operation, service_error_code=code, service_message=message, http_status_code=status
        )


def rule(
    n: int, target: str, *, owned: bool = False, port: int = 443, group: str = G1
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "SecurityGroupRuleId": f"sgr-{n:017x}",
        "GroupId": group,
        "IsEgress": False,
        "IpProtocol": "tcp",
        "FromPort": port,
        "ToPort": port,
        "Description": "cfallow: Cloudflare range" if owned else "admin",
        "Tags": TAGS if owned else [],
    }
    key = (
        "PrefixListId" if target.startswith("pl-") else "CidrIpv6" if ":" in target else "CidrIpv4"
    )
    raw[key] = target
    return raw


def foreign_v4(count: int) -> list[dict[str, Any]]:
    return [rule(1000 + i, f"198.18.{i}.0/24") for i in range(count)]


def foreign_v6(count: int) -> list[dict[str, Any]]:
    return [rule(2000 + i, f"2001:db8:{i:x}::/48") for i in range(count)]


def prefix_list(
    list_id: str, family: str, *, version: int, state: str, size: int = 30
) -> dict[str, Any]:
    return {
        "PrefixListId": list_id,
        "AddressFamily": family,
        "State": state,
        "MaxEntries": size,
        "Version": version,
        "Tags": TAGS,
    }


def authorized(s: Stubbed) -> dict[str, int]:
    """How many rules each authorize call carried, by kind."""
    params = [p for name, p in s.calls if name == "AuthorizeSecurityGroupIngress"][-1]
    perms = params["IpPermissions"]
    return {
        kind: sum(len(p.get(kind, [])) for p in perms)
        for kind in ("IpRanges", "Ipv6Ranges", "PrefixListIds")
    }


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(Stubbed, "state", tmp_path)
    from cfallow.backends.aws.backend import AwsBackend

    monkeypatch.setattr(AwsBackend, "backoff", 0.001)
    monkeypatch.setattr(AwsBackend, "read_workers", 1)  # the stubbed answers come in order
    monkeypatch.setattr(AwsBackend, "poll_interval", 0.001)


def test_forty_ipv4_and_forty_ipv6_rules_fit_a_quota_of_sixty() -> None:
    s = Stubbed()
    s.groups(G1)
    s.rules(G1, foreign_v4(25) + foreign_v6(33))  # + 15 and 7 of cfallow's: 40 and 40
    s.no_lists()
    s.ok("authorize_security_group_ingress")
    result = run_backend(s.backend, CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert s.writes() == ["AuthorizeSecurityGroupIngress"]
    assert authorized(s) == {"IpRanges": 15, "Ipv6Ranges": 7, "PrefixListIds": 0}
    s.stub.assert_no_pending_responses()


@pytest.mark.parametrize(("others", "limit"), [(46, 60), (86, 100)])
def test_one_rule_over_the_ipv4_quota_is_refused_before_any_write(others: int, limit: int) -> None:
    s = Stubbed(rules_per_group=limit)
    s.groups(G1)
    s.rules(G1, foreign_v4(others) + foreign_v6(50))
    s.no_lists()
    for dry_run in (True, False):
        result = run_backend(s.backend, CURRENT, dry_run=dry_run)
        assert result.error == (
            f"{G1} needs {limit + 1} IPv4 rules (15 cfallow + {others} other), quota {limit};"
            " to fit: fewer ports, a security group for cfallow alone, or a quota increase"
            " (then set rules_per_group)"
        )
        if not dry_run:
            break
        s.groups(G1)
        s.rules(G1, foreign_v4(others) + foreign_v6(50))
        s.no_lists()
    s.no_lists()
    assert s.writes() == []


@pytest.mark.parametrize(("size", "fits"), [(45, True), (46, False)])
def test_a_prefix_list_reference_counts_as_its_max_entries(size: int, fits: bool) -> None:
    s = Stubbed()
    s.groups(G1)
    s.rules(G1, [rule(1, FOREIGN)])
    s.no_lists()
    s.stub.add_response(
        "describe_managed_prefix_lists",
        {
            "PrefixLists": [
                prefix_list(FOREIGN, "IPv4", version=1, state="create-complete", size=size)
            ]
        },
        {"PrefixListIds": [FOREIGN]},
    )
    if fits:
        s.ok("authorize_security_group_ingress")
    result = run_backend(s.backend, CURRENT, dry_run=False)
    if fits:
        assert result.error is None, result.error
        assert s.writes() == ["AuthorizeSecurityGroupIngress"]
    else:
        assert result.error is not None
        assert result.error.startswith(f"{G1} needs 61 IPv4 rules (15 cfallow + 46 other)")
        assert s.writes() == []
    s.stub.assert_no_pending_responses()


def test_cfallows_own_lists_count_as_max_entries_per_port() -> None:
    s = Stubbed(ports=[80, 443], prefix_lists=True, prefix_list_max_entries=30)
    s.groups(G1)
    s.rules(G1, foreign_v4(1))
    s.stub.add_response("describe_managed_prefix_lists", {"PrefixLists": []}, {"Filters": ANY})
    result = run_backend(s.backend, CURRENT, dry_run=True)
    assert result.error is not None
    assert result.error == (
        f"{G1} needs 61 IPv4 rules (60 cfallow + 1 other), quota 60; to fit: a smaller"
        " prefix_list_max_entries (new lists), fewer ports, a security group for cfallow alone,"
        " or a quota increase (then set rules_per_group)"
    )


def test_version_mismatch_rereads_and_retries_then_waits_for_modify_complete() -> None:
    s = Stubbed(prefix_lists=True)
    s.groups(G1)
    s.rules(G1, [rule(1, PL4, owned=True), rule(2, PL6, owned=True)])
    s.stub.add_response(
        "describe_managed_prefix_lists",
        {
            "PrefixLists": [
                prefix_list(PL4, "IPv4", version=2, state="modify-complete"),
                prefix_list(PL6, "IPv6", version=1, state="create-complete"),
            ]
        },
        {"Filters": [{"Name": "tag:managed-by", "Values": ["cfallow"]}]},
    )
    entries = [{"Cidr": c} for c in OLD_V4]
    s.stub.add_response(
        "get_managed_prefix_list_entries", {"Entries": entries}, {"PrefixListId": PL4}
    )
    s.stub.add_response(
        "get_managed_prefix_list_entries",
        {"Entries": [{"Cidr": c} for c in V6]},
        {"PrefixListId": PL6},
    )
    s.error("modify_managed_prefix_list", "PrefixListVersionMismatch")
    # Meanwhile another writer added one of the two new ranges (version 3).
    s.stub.add_response(
        "describe_managed_prefix_lists",
        {"PrefixLists": [prefix_list(PL4, "IPv4", version=3, state="modify-complete")]},
        {"PrefixListIds": [PL4]},
    )
    s.stub.add_response(
        "get_managed_prefix_list_entries",
        {"Entries": [*entries, {"Cidr": "104.16.0.0/13"}]},
        {"PrefixListId": PL4},
    )
    s.stub.add_response(
        "modify_managed_prefix_list",
        {},
        {
            "PrefixListId": PL4,
            "CurrentVersion": 3,
            "AddEntries": [{"Cidr": "104.24.0.0/14", "Description": ANY}],
            "RemoveEntries": [{"Cidr": "104.16.0.0/12"}],
        },
    )
    for state in ("modify-in-progress", "modify-in-progress", "modify-complete"):
        s.stub.add_response(
            "describe_managed_prefix_lists",
            {"PrefixLists": [prefix_list(PL4, "IPv4", version=4, state=state)]},
            {"PrefixListIds": [PL4]},
        )
    result = run_backend(s.backend, CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert s.writes() == ["ModifyManagedPrefixList"] * 2
    assert [p["CurrentVersion"] for n, p in s.calls if n == "ModifyManagedPrefixList"] == [2, 3]
    s.stub.assert_no_pending_responses()


def test_throttling_is_retried_with_backoff_then_succeeds() -> None:
    s = Stubbed()
    s.error("describe_security_groups", "RequestLimitExceeded", 503)
    s.groups(G1)
    s.error("describe_security_group_rules", "Throttling", 400)
    s.rules(G1, [])
    s.no_lists()
    s.error("authorize_security_group_ingress", "RequestLimitExceeded", 503)
    s.error("authorize_security_group_ingress", "RequestLimitExceeded", 503)
    s.ok("authorize_security_group_ingress")
    result = run_backend(s.backend, CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert s.names() == [
        "DescribeSecurityGroups",
        "DescribeSecurityGroups",
        "DescribeNetworkInterfaces",
        "DescribeSecurityGroupRules",
        "DescribeSecurityGroupRules",
        *["AuthorizeSecurityGroupIngress"] * 3,
    ]
    s.stub.assert_no_pending_responses()


def test_one_group_failing_does_not_stop_the_other_and_both_are_named() -> None:
    s = Stubbed(groups=(G1, G2))
    s.groups(G1, G2)
    s.rules(G1, [])
    s.rules(G2, [])
    s.no_lists()
    s.error("authorize_security_group_ingress", "UnauthorizedOperation", 403)
    s.ok(
        "authorize_security_group_ingress",
        {"GroupId": G2, "IpPermissions": ANY, "TagSpecifications": ANY},
    )
    result = run_backend(s.backend, CURRENT, dry_run=False)
    assert result.error == (
        f"{G1}: UnauthorizedOperation: ec2:AuthorizeSecurityGroupIngress not allowed (authorize)"
    )
    assert [p["GroupId"] for n, p in s.calls if n.startswith("Authorize")] == [G1, G2]
    s.stub.assert_no_pending_responses()


def test_a_refusal_names_the_action_aws_names() -> None:
    """AWS refuses the tags given at creation (``ec2:CreateTags``, which moto does not
    check): the error names that action, not the call's."""
    s = Stubbed()
    s.groups(G1)
    s.rules(G1, [])
    s.no_lists()
    s.error(
        "authorize_security_group_ingress",
        "UnauthorizedOperation",
        403,
        "You are not authorized to perform this operation. User: arn:aws:iam::111122223333:"
        "user/cfallow is not authorized to perform: ec2:CreateTags on resource: arn:aws:ec2:"
        "eu-west-1:111122223333:security-group-rule/* because no identity-based policy allows"
        " the ec2:CreateTags action. Encoded authorization failure message: AbC-dEf",
    )
    result = run_backend(s.backend, CURRENT, dry_run=False)
    assert result.error == f"{G1}: UnauthorizedOperation: ec2:CreateTags not allowed (authorize)"
    s.stub.assert_no_pending_responses()


def test_throttling_that_never_ends_names_the_group_and_code() -> None:
    s = Stubbed(groups=(G1, G2))
    s.groups(G1, G2)
    s.rules(G1, [])
    s.rules(G2, [])
    s.no_lists()
    for _ in range(s.backend.attempts):  # type: ignore[attr-defined]
        s.error("authorize_security_group_ingress", "RequestLimitExceeded", 503)
    s.ok("authorize_security_group_ingress")
    result = run_backend(s.backend, CURRENT, dry_run=False)
    assert result.error == f"{G1}: RequestLimitExceeded (authorize)"
    s.stub.assert_no_pending_responses()


def test_at_the_quota_the_2021_change_revokes_first() -> None:
    # 14 + 7 owned (the old list) + 45 other IPv4: after the change 15 + 45 = 60
    # fits, but adding the two new ranges before removing the old one would
    # pass through 61.
    owned = [rule(i, c, owned=True) for i, c in enumerate(OLD_V4 + V6)]
    s = Stubbed()
    s.groups(G1)
    s.rules(G1, owned + foreign_v4(45))
    s.no_lists()
    stale = next(r["SecurityGroupRuleId"] for r in owned if r.get("CidrIpv4") == "104.16.0.0/12")
    s.ok("revoke_security_group_ingress", {"GroupId": G1, "SecurityGroupRuleIds": [stale]})
    s.ok("authorize_security_group_ingress")
    result = run_backend(s.backend, CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert s.writes() == ["RevokeSecurityGroupIngress", "AuthorizeSecurityGroupIngress"]
    assert authorized(s) == {"IpRanges": 2, "Ipv6Ranges": 0, "PrefixListIds": 0}
    assert result.plan is not None
    assert f"{G1}: revoking before authorizing (both at once exceed the quota)" in result.plan.drift


def test_every_page_of_rules_is_read_before_deciding() -> None:
    # AWS pages describe_security_group_rules (moto answers in one page): the
    # owned rules sit on two pages; a reader that stopped at the first would
    # authorize the second page's rules again.
    owned = [rule(i, c, owned=True) for i, c in enumerate(V4 + V6)]
    s = Stubbed()
    s.groups(G1)
    flt = {"Filters": [{"Name": "group-id", "Values": [G1]}]}
    s.stub.add_response(
        "describe_security_group_rules",
        {"SecurityGroupRules": owned[:10], "NextToken": "page-2"},
        flt,
    )
    s.stub.add_response(
        "describe_security_group_rules",
        {"SecurityGroupRules": owned[10:]},
        {**flt, "NextToken": "page-2"},
    )
    s.no_lists()
    result = run_backend(s.backend, CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert not result.changed and s.writes() == []
    assert result.plan is not None and result.plan.current == CURRENT
    s.stub.assert_no_pending_responses()


def test_no_permission_to_describe_interfaces_is_a_note_not_a_failure() -> None:
    """An IAM policy from before the attachment check: the sync goes on, and says why not."""
    s = Stubbed()
    s.stub.add_response(
        "describe_security_groups",
        {"SecurityGroups": [{"GroupId": G1, "GroupName": G1}]},
        {"Filters": [{"Name": "group-id", "Values": [G1]}]},
    )
    s.error("describe_network_interfaces", "UnauthorizedOperation", 403)
    s.rules(G1, [])
    s.no_lists()
    s.ok("authorize_security_group_ingress")
    result = run_backend(s.backend, CURRENT, dry_run=False)
    assert result.error is None and result.applied and result.plan is not None
    assert any(
        "cannot tell whether the groups are attached to anything: UnauthorizedOperation" in n
        for n in result.plan.notes
    ), result.plan.notes
    s.stub.assert_no_pending_responses()
