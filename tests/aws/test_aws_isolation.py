"""The aws backend (security groups): one group's trouble stays its own; the cadence.

On moto_server, ten groups with one over its quota: before, the quota
pre-flight of that one group stopped the run for all ten (0 of 10 written).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from support.aws.harness import MotoServer, World, aws_env, shared_server
from support.cfdata import CURRENT

from cfallow.engine import run_backend


@pytest.fixture
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> MotoServer:
    aws_env(monkeypatch)
    return shared_server(request, tmp_path_factory)


def test_a_group_over_its_quota_fails_alone_and_the_others_are_written(server: MotoServer) -> None:
    world = World(server, groups=10)
    full = world.groups[3]
    for i in range(31):  # 31 of the admin's + 30 of cfallow's (15 x 2 ports) > 60 IPv4
        world.authorize(full, 10000 + i, f"198.18.{i}.0/24", "admin")
    for dry_run in (True, False):
        result = run_backend(world.backend(), CURRENT, dry_run=dry_run)
        assert result.error == (
            f"{full} needs 61 IPv4 rules (30 cfallow + 31 other), quota 60; to fit: fewer"
            " ports, a security group for cfallow alone, or a quota increase (then set"
            " rules_per_group)"
        )
    written = [g for g in world.groups if world.owned(g)]
    assert written == [g for g in world.groups if g != full]
    assert world.owned(full) == set()
    assert [c.params["GroupId"] for c in server.cfallow_writes()] == written


def test_a_scheduled_run_reads_the_groups_only_every_interval(
    server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    world = World(server, groups=2)

    def run(**options: Any) -> Any:
        backend = world.backend(interval="2h", **options)
        backend.ctx = dataclasses.replace(backend.ctx, scheduled=True)
        return run_backend(backend, CURRENT, dry_run=False)

    monkeypatch.setenv("CFALLOW_NOW", "5000000")
    assert run().error is None
    server.reset_recording()
    monkeypatch.setenv("CFALLOW_NOW", str(5000000 + 3600))
    skipped = run()
    assert skipped.error is None and skipped.plan is not None and not skipped.changed
    assert skipped.plan.notes[0].startswith("not due: AWS last read 60 min ago, interval 2 h")
    assert [c for c in server.calls() if c.by_cfallow] == []
    monkeypatch.setenv("CFALLOW_NOW", str(5000000 + 2 * 3600))
    assert run().error is None
    assert next(c for c in server.calls() if c.by_cfallow).action == "DescribeSecurityGroups"


def _groups(server: MotoServer, region: str, role_arn: str = "") -> tuple[Any, str]:
    import boto3

    keys: dict[str, str] = {}
    if role_arn:
        sts = boto3.client("sts", region_name=region, endpoint_url=server.url)
        creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="setup")["Credentials"]
        keys = {
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
        }
    ec2 = boto3.client("ec2", region_name=region, endpoint_url=server.url, **keys)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    group = ec2.create_security_group(GroupName="web", Description="web", VpcId=vpc)["GroupId"]
    return ec2, group


def test_targets_in_regions_and_accounts_one_failing_alone(
    server: MotoServer, tmp_path: Path
) -> None:
    from cfallow.backend import Context, build

    role = "arn:aws:iam::222233334444:role/cfallow"
    eu, g_eu = _groups(server, "eu-west-1")
    us, g_us = _groups(server, "us-east-1")
    b_eu, g_b = _groups(server, "eu-west-1", role)
    missing = "sg-0123456789abcdef0"
    targets = [
        {"region": "eu-west-1", "security_group_ids": [g_eu]},
        {"region": "us-east-1", "security_group_ids": [g_us]},
        {"region": "eu-west-1", "role_arn": role, "security_group_ids": [g_b]},
        {"region": "ap-southeast-2", "security_group_ids": [missing]},
    ]
    section = {"targets": targets, "ports": [443], "endpoint_url": server.url}

    def run(desired: Any) -> Any:
        backend = build("aws", section, Context(state_dir=tmp_path))
        return backend, run_backend(backend, desired, dry_run=False)

    backend, result = run(CURRENT)
    assert result.error == f"ap-southeast-2: {missing}: InvalidGroup.NotFound (describe)"
    for ec2, group in ((eu, g_eu), (us, g_us), (b_eu, g_b)):
        rules = ec2.describe_security_group_rules(
            Filters=[{"Name": "group-id", "Values": [group]}]
        )["SecurityGroupRules"]
        assert len([r for r in rules if not r["IsEgress"]]) == 22
    server.reset_recording()
    backend, again = run(CURRENT)
    assert again.plan is not None and not again.changed
    assert server.cfallow_writes() == []
    # per target: groups, interfaces, rules (+ the role's AssumeRole): at most 4 calls each
    assert dict(backend.clients.calls) == {
        "eu-west-1": 3,
        "us-east-1": 3,
        "eu-west-1/222233334444": 4,
        "ap-southeast-2": 1,
    }
    backend, removal = run(None)
    assert removal.error == f"ap-southeast-2: {missing}: InvalidGroup.NotFound (describe)"
    for ec2, group in ((eu, g_eu), (us, g_us), (b_eu, g_b)):
        rules = ec2.describe_security_group_rules(
            Filters=[{"Name": "group-id", "Values": [group]}]
        )["SecurityGroupRules"]
        assert [r for r in rules if not r["IsEgress"]] == []
