"""The aws backend against a real moto server on 127.0.0.1 (per-CIDR rule mode)."""

from __future__ import annotations

import pytest
from netaddr import IPNetwork
from support.aws.harness import MotoServer, World, WorldHarness, aws_env, shared_server
from support.cfdata import ADDED_2021, CURRENT, OLD, REMOVED_2021

from cfallow.backend import Backend
from cfallow.engine import run_backend
from cfallow.testing import BackendContract, Harness

V4 = sorted(str(n) for n in CURRENT if n.version == 4)
V6 = sorted(str(n) for n in CURRENT if n.version == 6)


@pytest.fixture
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> MotoServer:
    aws_env(monkeypatch)
    return shared_server(request, tmp_path_factory)


@pytest.fixture
def world(server: MotoServer) -> World:
    return World(server, groups=2)


class AwsHarness(WorldHarness):
    def backend(self) -> Backend:
        return self.world.backend()

    def owned(self) -> frozenset[IPNetwork]:
        return frozenset(
            IPNetwork(key[3]) for g in self.world.groups for key in self.world.owned(g)
        )


class TestAwsContract(BackendContract):
    @pytest.fixture
    def harness(self, world: World) -> Harness:
        return AwsHarness(world)


def expected_rules(nets: frozenset[IPNetwork], ports: list[int]) -> set[tuple[str, int, int, str]]:
    return {("tcp", p, p, str(n)) for n in nets for p in ports}


@pytest.mark.parametrize("ports", [[443], [80, 443]])
def test_first_sync_one_batch_per_group_then_nothing(world: World, ports: list[int]) -> None:
    result = run_backend(world.backend(ports=ports), CURRENT, dry_run=False)
    assert result.error is None, result.error
    for g in world.groups:
        owned = world.owned(g)
        assert len([k for k in owned if ":" not in k[3]]) == 15 * len(ports)
        assert len([k for k in owned if ":" in k[3]]) == 7 * len(ports)
        assert owned == expected_rules(CURRENT, ports)
    writes = world.server.cfallow_writes()
    # One authorize per group, nothing else; each carries the tag for its rules.
    assert [(c.action, c.params["GroupId"]) for c in writes] == [
        ("AuthorizeSecurityGroupIngress", g) for g in world.groups
    ]
    assert all(c.params["TagSpecification.1.Tag.1.Key"] == "managed-by" for c in writes)

    world.server.reset_recording()
    again = run_backend(world.backend(ports=ports), CURRENT, dry_run=False)
    assert again.error is None and not again.changed and not again.applied
    calls = [c for c in world.server.calls() if c.by_cfallow]
    assert [c for c in calls if c.mutating] == []
    # Prefix lists off and none made by this host: no DescribeManagedPrefixLists.
    assert [c.action for c in calls] == [
        "DescribeSecurityGroups",
        "DescribeNetworkInterfaces",
        *["DescribeSecurityGroupRules"] * len(world.groups),
    ]


def test_2021_change_adds_before_it_revokes_exactly_the_stale_rules(world: World) -> None:
    assert run_backend(world.backend(), OLD, dry_run=False).error is None
    stale = {
        g: {
            r["SecurityGroupRuleId"]
            for r in world.rules(g)
            if r.get("CidrIpv4") in {str(n) for n in REMOVED_2021}
        }
        for g in world.groups
    }
    assert all(len(ids) == 2 for ids in stale.values())  # ports 80 and 443
    world.server.reset_recording()

    result = run_backend(world.backend(), CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert result.plan is not None
    assert result.plan.add == ADDED_2021 and result.plan.remove == REMOVED_2021
    writes = world.server.cfallow_writes()
    assert [(c.action, c.params["GroupId"]) for c in writes] == [
        (action, g)
        for g in world.groups
        for action in ("AuthorizeSecurityGroupIngress", "RevokeSecurityGroupIngress")
    ]
    for g, (auth, revoke) in zip(world.groups, zip(writes[::2], writes[1::2])):
        added = {v for k, v in auth.params.items() if k.endswith(".CidrIp")}
        assert added == {str(n) for n in ADDED_2021}
        assert {v for k, v in revoke.params.items() if k.startswith("SecurityGroupRuleId.")} == (
            stale[g]
        )
        assert world.owned(g) == expected_rules(CURRENT, [80, 443])


def test_foreign_rules_survive_ten_syncs(world: World) -> None:
    world.add_foreign()
    before = world.unowned()
    assert len(before) == 6 * len(world.groups)
    for i in range(10):
        desired = OLD if i % 2 else CURRENT
        result = run_backend(world.backend(), desired, dry_run=False)
        assert result.error is None, result.error
        assert world.unowned() == before
    for g in world.groups:
        owned = world.owned(g)
        # 173.245.48.0/20 on 443 stays the admin's: cfallow owns it on port 80 only.
        assert ("tcp", 443, 443, "173.245.48.0/20") not in owned
        assert owned == expected_rules(OLD, [80, 443]) - {("tcp", 443, 443, "173.245.48.0/20")}


def test_remove_leaves_each_group_as_before(world: World) -> None:
    world.add_foreign()
    before = {g: world.snapshot(g) for g in world.groups}
    for desired in (OLD, CURRENT):
        assert run_backend(world.backend(), desired, dry_run=False).error is None
    assert all(world.owned(g) for g in world.groups)
    removal = run_backend(world.backend(), None, dry_run=False)
    assert removal.error is None, removal.error
    assert removal.plan is not None and removal.plan.remove == CURRENT
    assert {g: world.snapshot(g) for g in world.groups} == before


def test_a_group_repaired_alone_and_reported_as_drift(world: World) -> None:
    assert run_backend(world.backend(), CURRENT, dry_run=False).error is None
    g0, g1 = world.groups
    victim = next(r for r in world.rules(g1) if r.get("CidrIpv6") == V6[0] and r["FromPort"] == 80)
    world.ec2.revoke_security_group_ingress(
        GroupId=g1, SecurityGroupRuleIds=[victim["SecurityGroupRuleId"]]
    )
    world.server.reset_recording()
    check = run_backend(world.backend(), CURRENT, dry_run=True)
    assert check.plan is not None and check.changed
    assert not check.plan.add and not check.plan.remove
    assert check.plan.drift == (f"{g1}: 1 rule(s) missing on tcp/80",)
    result = run_backend(world.backend(), CURRENT, dry_run=False)
    assert result.error is None
    writes = world.server.cfallow_writes()
    assert [(c.action, c.params["GroupId"]) for c in writes] == [
        ("AuthorizeSecurityGroupIngress", g1)
    ]
    assert world.owned(g1) == world.owned(g0) == expected_rules(CURRENT, [80, 443])


def test_port_change_is_drift_and_swaps_only_the_port(world: World) -> None:
    # moto counts IPv4 and IPv6 together against 60 (AWS: per family), so one port here.
    assert run_backend(world.backend(ports=[80]), CURRENT, dry_run=False).error is None
    result = run_backend(world.backend(ports=[8443]), CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert result.plan is not None and not result.plan.add and not result.plan.remove
    assert set(result.plan.drift) == {
        f"{g}: {what}"
        for g in world.groups
        for what in (
            "22 rule(s) missing on tcp/8443",
            "22 owned rule(s) on tcp/80 no longer wanted",
        )
    }
    for g in world.groups:
        assert world.owned(g) == expected_rules(CURRENT, [8443])


def test_one_missing_group_does_not_stop_the_others(world: World) -> None:
    missing = "sg-0123456789abcdef0"
    result = run_backend(world.backend(groups=[missing, *world.groups]), CURRENT, dry_run=False)
    assert result.error == f"{missing}: InvalidGroup.NotFound (describe)"
    assert result.applied is False  # the engine saw the error
    for g in world.groups:
        assert world.owned(g) == expected_rules(CURRENT, [80, 443])


def test_a_rule_appearing_between_plan_and_apply_is_not_a_failure(world: World) -> None:
    backend = world.backend()
    plan = backend.plan(CURRENT)
    g0 = world.groups[0]
    world.authorize(g0, 443, V4[3], "added by a colleague meanwhile")
    world.server.reset_recording()
    backend.apply(plan)
    actions = [c.action for c in world.server.cfallow_writes()]
    # g0: the batch is rejected as a duplicate, re-read, retried once without it.
    assert actions[:2] == ["AuthorizeSecurityGroupIngress"] * 2
    assert ("tcp", 443, 443, V4[3]) not in world.owned(g0)
    assert len(world.owned(g0)) == 43
    assert world.owned(world.groups[1]) == expected_rules(CURRENT, [80, 443])
    assert not world.backend().plan(CURRENT).changed


def test_a_port_range_and_udp_make_one_rule_per_range(world: World) -> None:
    backend = world.backend(ports=["8000-8080"], protocol="udp")
    assert run_backend(backend, CURRENT, dry_run=False).error is None
    for g in world.groups:
        assert world.owned(g) == {("udp", 8000, 8080, str(n)) for n in CURRENT}
    again = run_backend(world.backend(ports=["8000-8080"], protocol="udp"), CURRENT, dry_run=True)
    assert not again.changed


def _attached_notes(notes: tuple[str, ...]) -> set[str]:
    return {n.split(":")[0] for n in notes if "attached to no network interface" in n}


def test_a_group_no_interface_uses_is_named_until_one_does(world: World) -> None:
    """Rules in a group nothing uses admit no one: the plan says so, per group."""
    first = run_backend(world.backend(), CURRENT, dry_run=False)
    assert first.error is None and first.plan is not None
    assert _attached_notes(first.plan.notes) == set(world.groups)
    vpc = world.ec2.describe_security_groups(GroupIds=[world.groups[0]])["SecurityGroups"][0]
    subnet = world.ec2.create_subnet(VpcId=vpc["VpcId"], CidrBlock="10.0.1.0/24")["Subnet"]
    world.ec2.create_network_interface(SubnetId=subnet["SubnetId"], Groups=[world.groups[0]])
    plan = world.backend().plan(CURRENT)
    assert not plan.changed
    assert _attached_notes(plan.notes) == {world.groups[1]}


def test_an_admin_rule_open_to_everyone_on_a_managed_port_is_named(world: World) -> None:
    """Security groups only allow: "HTTPS from anywhere" beside cfallow's rules lets all in."""
    g0 = world.groups[0]
    world.authorize(g0, 443, "0.0.0.0/0", "HTTPS from anywhere")
    world.authorize(g0, 80, "::/0", "HTTP from anywhere")
    world.authorize(g0, 22, "0.0.0.0/0", "SSH")  # not a managed port: not cfallow's business
    result = run_backend(world.backend(), CURRENT, dry_run=False)
    assert result.error is None and result.plan is not None
    world_open = sorted(n for n in result.plan.notes if "anyone reaches the port" in n)
    assert [n.split(" by rule ")[0] for n in world_open] == [
        f"{g0}: tcp/443 is open to 0.0.0.0/0",
        f"{g0}: tcp/80 is open to ::/0",
    ]
    # Said, never touched: the admin's rules stay, and cfallow's are all in place.
    targets = {(r.get("FromPort"), r.get("CidrIpv4") or r.get("CidrIpv6")) for r in world.rules(g0)}
    assert {(443, "0.0.0.0/0"), (80, "::/0"), (22, "0.0.0.0/0")} <= targets
    assert world.owned(g0) == expected_rules(CURRENT, [80, 443])
