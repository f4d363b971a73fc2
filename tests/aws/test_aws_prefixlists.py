"""The aws backend's prefix-list mode against a real moto server on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import pytest
from netaddr import IPNetwork
from support.aws.harness import MotoServer, World, WorldHarness, aws_env, rule_key, shared_server
from support.cfdata import ADDED_2021, CURRENT, OLD, REMOVED_2021

from cfallow.backend import Backend
from cfallow.engine import run_backend
from cfallow.testing import BackendContract, Harness

PL: dict[str, Any] = {"prefix_lists": True, "prefix_list_max_entries": 20}


@pytest.fixture
def world(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> World:
    aws_env(monkeypatch)
    server: MotoServer = shared_server(request, tmp_path_factory)
    return World(server, groups=2)


def cfallow_lists(world: World) -> dict[str, dict[str, Any]]:
    raw = world.ec2.describe_managed_prefix_lists(
        Filters=[{"Name": "tag:managed-by", "Values": ["cfallow"]}]
    )["PrefixLists"]
    return {
        pl["AddressFamily"]: pl
        for pl in raw
        if pl["State"] not in ("delete-in-progress", "delete-complete")
    }


def entries(world: World, list_id: str) -> set[str]:
    raw = world.ec2.get_managed_prefix_list_entries(PrefixListId=list_id)["Entries"]
    return {e["Cidr"] for e in raw}


class PrefixListHarness(WorldHarness):
    def backend(self) -> Backend:
        return self.world.backend(**PL)

    def owned(self) -> frozenset[IPNetwork]:
        return frozenset(
            IPNetwork(c)
            for pl in cfallow_lists(self.world).values()
            for c in entries(self.world, pl["PrefixListId"])
        )


class TestPrefixListContract(BackendContract):
    @pytest.fixture
    def harness(self, world: World) -> Harness:
        return PrefixListHarness(world)


def test_lists_created_referenced_once_per_port_and_left_alone(world: World) -> None:
    result = run_backend(world.backend(**PL), CURRENT, dry_run=False)
    assert result.error is None, result.error
    lists = cfallow_lists(world)
    assert set(lists) == {"IPv4", "IPv6"}
    for family, version in (("IPv4", 4), ("IPv6", 6)):
        pl = lists[family]
        assert pl["MaxEntries"] == 20
        assert pl["PrefixListName"] == f"cfallow-cloudflare-{family.lower()}"
        assert entries(world, pl["PrefixListId"]) == {
            str(n) for n in CURRENT if n.version == version
        }
    ids = {pl["PrefixListId"] for pl in lists.values()}
    for g in world.groups:
        assert world.owned(g) == {("tcp", p, p, i) for p in (80, 443) for i in ids}
    writes = [c.action for c in world.server.cfallow_writes()]
    assert writes == ["CreateManagedPrefixList"] * 2 + ["AuthorizeSecurityGroupIngress"] * 2

    world.server.reset_recording()
    again = run_backend(world.backend(**PL), CURRENT, dry_run=False)
    assert again.error is None and not again.changed
    assert world.server.cfallow_writes() == []


def test_2021_change_is_one_modify_of_the_ipv4_list(world: World) -> None:
    assert run_backend(world.backend(**PL), OLD, dry_run=False).error is None
    v4 = cfallow_lists(world)["IPv4"]
    world.server.reset_recording()
    result = run_backend(world.backend(**PL), CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert result.plan is not None
    assert (result.plan.add, result.plan.remove, result.plan.drift) == (
        ADDED_2021,
        REMOVED_2021,
        (),
    )
    writes = world.server.cfallow_writes()
    assert [c.action for c in writes] == ["ModifyManagedPrefixList"]
    params = writes[0].params
    assert params["PrefixListId"] == v4["PrefixListId"]
    assert params["CurrentVersion"] == str(v4["Version"])
    assert {v for k, v in params.items() if k.startswith("AddEntry.") and k.endswith(".Cidr")} == {
        str(n) for n in ADDED_2021
    }
    assert {v for k, v in params.items() if k.startswith("RemoveEntry.")} == {
        str(n) for n in REMOVED_2021
    }
    assert entries(world, v4["PrefixListId"]) == {str(n) for n in CURRENT if n.version == 4}


@pytest.mark.parametrize("ports", [[443], [80, 443]])
def test_mode_switch_both_ways_then_remove_restores_the_groups(
    world: World, ports: list[int]
) -> None:
    world.add_foreign()
    before = {g: world.snapshot(g) for g in world.groups}
    assert run_backend(world.backend(ports=ports), CURRENT, dry_run=False).error is None

    world.server.reset_recording()
    to_lists = run_backend(world.backend(ports=ports, **PL), CURRENT, dry_run=False)
    assert to_lists.error is None, to_lists.error
    assert to_lists.plan is not None
    g0 = world.groups[0]
    assert f"{g0}: 21 owned rule(s) on tcp/443 no longer wanted" in to_lists.plan.drift
    # Per family, AWS counts the lists at MaxEntries (20 a port) next to the
    # 15 IPv4 rules per port and the admin's 5 IPv4 rules: with one port,
    # 15 + 20 + 5 fits 60, so the lists' rules go in before the old ones go;
    # with two, 30 + 40 + 5 does not, so the old ones go first (and the plan
    # says so).
    squeezed = len(ports) == 2
    assert (
        f"{g0}: revoking before authorizing (both at once exceed the quota)" in to_lists.plan.drift
    ) is squeezed
    order = ("AuthorizeSecurityGroupIngress", "RevokeSecurityGroupIngress")
    actions = [(c.action, c.params.get("GroupId")) for c in world.server.cfallow_writes()]
    assert actions == [("CreateManagedPrefixList", None)] * 2 + [
        (a, g) for g in world.groups for a in (order[::-1] if squeezed else order)
    ]
    ids = {pl["PrefixListId"] for pl in cfallow_lists(world).values()}
    for g in world.groups:
        assert world.owned(g) == {("tcp", p, p, i) for p in ports for i in ids}

    back = run_backend(world.backend(ports=ports), CURRENT, dry_run=False)
    assert back.error is None, back.error
    for g in world.groups:
        assert all(not k[3].startswith("pl-") for k in world.owned(g))
    assert set(cfallow_lists(world)) == {"IPv4", "IPv6"}  # kept until `remove`

    removal = run_backend(world.backend(ports=ports), None, dry_run=False)
    assert removal.error is None, removal.error
    assert cfallow_lists(world) == {}
    assert {g: world.snapshot(g) for g in world.groups} == before


def test_an_admins_prefix_list_rule_is_left_alone(world: World) -> None:
    own = world.ec2.create_managed_prefix_list(
        PrefixListName="office",
        AddressFamily="IPv4",
        MaxEntries=5,
        Entries=[{"Cidr": "203.0.113.0/24"}],
    )["PrefixList"]["PrefixListId"]
    g0 = world.groups[0]
    world.ec2.authorize_security_group_ingress(
        GroupId=g0,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 443,
                "ToPort": 443,
                "PrefixListIds": [{"PrefixListId": own, "Description": "office list"}],
            }
        ],
    )
    before = world.snapshot(g0)
    for desired in (CURRENT, OLD):
        assert run_backend(world.backend(**PL), desired, dry_run=False).error is None
    assert run_backend(world.backend(**PL), None, dry_run=False).error is None
    assert world.snapshot(g0) == before
    assert any(rule_key(r)[3] == own for r in world.rules(g0))
    assert world.ec2.describe_managed_prefix_lists(PrefixListIds=[own])["PrefixLists"][0][
        "State"
    ].endswith("-complete")


def test_ranges_that_do_not_fit_the_list_are_refused_before_any_write(world: World) -> None:
    result = run_backend(
        world.backend(prefix_lists=True, prefix_list_max_entries=10), CURRENT, dry_run=False
    )
    assert result.error == (
        "15 IPv4 ranges do not fit a new prefix list (MaxEntries 10):"
        " raise prefix_list_max_entries (a new list) or resize the list"
    )
    assert world.server.cfallow_writes() == []
    assert cfallow_lists(world) == {}
