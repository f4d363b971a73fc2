"""The aws-wafv2 backend against a real moto server on 127.0.0.1 (moto models lock tokens)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from support.aws.harness import MotoServer, aws_env, shared_server
from support.aws.waf import SCOPE, WafHarness, WafWorld
from support.cfdata import CURRENT, OLD

from cfallow.engine import run_backend
from cfallow.model import as_strings
from cfallow.testing import BackendContract, Harness

V4 = sorted(as_strings(n for n in CURRENT if n.version == 4))


@pytest.fixture
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> MotoServer:
    aws_env(monkeypatch)
    return shared_server(request, tmp_path_factory)


@pytest.fixture
def world(server: MotoServer) -> WafWorld:
    return WafWorld(server)


class TestWafv2Contract(BackendContract):
    @pytest.fixture
    def harness(self, world: WafWorld) -> Harness:
        return WafHarness(world)


def test_one_set_per_family_then_three_reads_and_no_write(world: WafWorld) -> None:
    assert run_backend(world.backend(), CURRENT, dry_run=False).error is None
    sets = world.sets()
    assert sorted(sets) == ["cfallow-cloudflare-ipv4", "cfallow-cloudflare-ipv6"]
    assert sets["cfallow-cloudflare-ipv4"]["addresses"] == V4
    assert sets["cfallow-cloudflare-ipv6"]["tags"] == {"managed-by": "cfallow"}
    world.server.reset_recording()
    backend = world.backend()
    # as the timer runs it (its interval not yet stamped)
    backend.ctx = dataclasses.replace(backend.ctx, scheduled=True)
    again = run_backend(backend, CURRENT, dry_run=False)
    assert again.error is None and not again.changed
    calls = [c.action for c in world.server.calls() if c.by_cfallow]
    assert calls == ["ListIPSets", "GetIPSet", "GetIPSet"]


def test_a_change_between_read_and_update_is_caught_by_the_lock_and_converges(
    world: WafWorld,
) -> None:
    assert run_backend(world.backend(), OLD, dry_run=False).error is None
    backend = world.backend()
    plan = backend.plan(CURRENT)  # read: lock token T1
    # another writer updates the set meanwhile (token T1 -> T2)
    s = world.sets()["cfallow-cloudflare-ipv4"]
    got = world.waf.get_ip_set(Name="cfallow-cloudflare-ipv4", Scope=SCOPE, Id=s["id"])
    world.waf.update_ip_set(
        Name="cfallow-cloudflare-ipv4",
        Scope=SCOPE,
        Id=s["id"],
        Addresses=[*got["IPSet"]["Addresses"], "192.0.2.0/24"],
        LockToken=got["LockToken"],
    )
    world.server.reset_recording()
    backend.apply(plan)
    calls = [c.action for c in world.server.calls() if c.by_cfallow]
    assert calls == [
        "ListTagsForResource",
        "UpdateIPSet",  # refused: WAFOptimisticLockException
        "GetIPSet",  # read again, plan again
        "UpdateIPSet",
    ]
    assert world.sets()["cfallow-cloudflare-ipv4"]["addresses"] == V4
    assert not world.backend().plan(CURRENT).changed


def test_removal_deletes_only_cfallows_sets_and_refuses_while_referenced(
    world: WafWorld,
) -> None:
    office = world.admin_set()
    assert run_backend(world.backend(), CURRENT, dry_run=False).error is None
    ours = world.sets()["cfallow-cloudflare-ipv4"]["arn"]
    acl = world.web_acl("shop", office, ours)
    status = run_backend(world.backend(), CURRENT, dry_run=True)
    assert status.plan is not None
    assert "eu-west-1: IP set cfallow-cloudflare-ipv4 is referenced by web ACL shop" in (
        status.plan.notes
    )
    assert (
        "eu-west-1: IP set cfallow-cloudflare-ipv6 is referenced by no web ACL: it filters"
        " nothing until a web ACL rule references it"
    ) in status.plan.notes
    world.server.reset_recording()
    refused = run_backend(world.backend(), None, dry_run=False)
    assert refused.error == (
        "eu-west-1: IP set cfallow-cloudflare-ipv4 is referenced by web ACL shop: remove it"
        " there first (cfallow never edits web ACLs)"
    )
    assert world.server.cfallow_writes() == []
    assert sorted(world.sets()) == ["cfallow-cloudflare-ipv4", "cfallow-cloudflare-ipv6", "office"]
    world.drop_web_acl("shop", acl)
    assert run_backend(world.backend(), None, dry_run=False).error is None
    assert sorted(world.sets()) == ["office"]


def test_a_set_named_like_cfallows_but_not_tagged_is_never_written(world: WafWorld) -> None:
    world.waf.create_ip_set(
        Name="cfallow-cloudflare-ipv4",
        Scope=SCOPE,
        IPAddressVersion="IPV4",
        Addresses=["203.0.113.0/24"],
        Description="cfallow look-alike",
    )
    before = world.sets()["cfallow-cloudflare-ipv4"]
    result: Any = run_backend(world.backend(), CURRENT, dry_run=False)
    assert result.error is not None
    assert "cfallow-cloudflare-ipv4: named like cfallow's but not tagged" in result.error
    assert world.sets()["cfallow-cloudflare-ipv4"] == before


def test_targets_in_two_accounts_and_the_cloudfront_scope(server: MotoServer) -> None:
    """One run writes one region of this account and us-east-1 of another (STS); CloudFront's
    scope lives in us-east-1 whatever the target says."""
    import boto3

    from cfallow.backend import Context, build

    role = "arn:aws:iam::222233334444:role/cfallow"
    targets = [{"region": "eu-west-1"}, {"region": "us-east-1", "role_arn": role}]
    section = {"targets": targets, "endpoint_url": server.url}
    backend: Any = build("aws-wafv2", section, Context())
    assert run_backend(backend, CURRENT, dry_run=False).error is None
    assert (
        world_sets(server, "eu-west-1")
        == world_sets(server, "us-east-1", role)
        == [
            "cfallow-cloudflare-ipv4",
            "cfallow-cloudflare-ipv6",
        ]
    )
    assert world_sets(server, "us-east-1") == []  # this account's us-east-1: untouched
    assert dict(backend.clients.calls) == {
        "eu-west-1": 1 + 2 * 1,  # list, then a create per family
        "us-east-1/222233334444": 1 + 1 + 2,  # the role, the list, two creates
    }
    cloudfront: Any = build(
        "aws-wafv2", {"scope": "CLOUDFRONT", "endpoint_url": server.url}, Context()
    )
    assert run_backend(cloudfront, CURRENT, dry_run=False).error is None
    waf = boto3.client("wafv2", region_name="us-east-1", endpoint_url=server.url)
    names = sorted(s["Name"] for s in waf.list_ip_sets(Scope="CLOUDFRONT")["IPSets"])
    assert names == ["cfallow-cloudflare-ipv4", "cfallow-cloudflare-ipv6"]


def world_sets(server: MotoServer, region: str, role_arn: str = "") -> list[str]:
    import boto3

    keys: dict[str, str] = {}
    if role_arn:
        sts = boto3.client("sts", region_name=region, endpoint_url=server.url)
        creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="check")["Credentials"]
        keys = {
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
        }
    waf = boto3.client("wafv2", region_name=region, endpoint_url=server.url, **keys)
    return sorted(s["Name"] for s in waf.list_ip_sets(Scope=SCOPE)["IPSets"])
