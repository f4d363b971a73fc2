"""The aws-nacl backend against a real moto server on 127.0.0.1."""

from __future__ import annotations

from typing import Any

import pytest
from netaddr import IPNetwork
from support.aws.harness import MotoServer, aws_env, shared_server
from support.aws.nacl import NaclHarness, NaclWorld, verdict
from support.cfdata import ADDED_2021, CURRENT, OLD, REMOVED_2021

from cfallow.engine import run_backend
from cfallow.testing import BackendContract, Harness

KEPT = OLD & CURRENT
OUTSIDER = "198.51.100.77"  # not Cloudflare's, and not the admin's ssh office either


@pytest.fixture
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> MotoServer:
    aws_env(monkeypatch)
    return shared_server(request, tmp_path_factory)


@pytest.fixture
def world(server: MotoServer) -> NaclWorld:
    return NaclWorld(server)


class TestNaclContract(BackendContract):
    @pytest.fixture
    def harness(self, world: NaclWorld) -> Harness:
        return NaclHarness(world)


def first_address(net: IPNetwork) -> str:
    return str(net[1])


def test_first_sync_then_zero_writes_and_two_reads(world: NaclWorld) -> None:
    world.add_foreign()
    acl = world.acls[0]
    assert verdict(world.entries(acl), OUTSIDER, 443) == "allow"  # the admin's allow-all
    result = run_backend(world.backend(), CURRENT, dry_run=False)
    assert result.error is None, result.error
    entries = world.entries(acl)
    for net in CURRENT:
        assert verdict(entries, first_address(net), 443) == "allow", net
        assert verdict(entries, str(net[-1]), 443) == "allow", net
    assert verdict(entries, OUTSIDER, 443) == "deny"
    assert verdict(entries, "2001:db8::1", 443) == "deny"
    assert verdict(entries, OUTSIDER, 80) == "allow"  # a port cfallow does not manage
    assert verdict(entries, "198.51.100.9", 22) == "allow"
    assert world.band(acl) == (1, 99)
    assert all(e[0] <= 99 for e in world.owned(acl)) and len(world.owned(acl)) == 22 + 2

    world.server.reset_recording()
    again = run_backend(world.backend(), CURRENT, dry_run=False)
    assert again.error is None and not again.changed and not again.applied
    calls = [c for c in world.server.calls() if c.by_cfallow]
    # rules_per_acl is set: one read, nothing else
    assert [c.action for c in calls] == ["DescribeNetworkAcls"]


def _watch(world: NaclWorld, backend: Any, check: Any) -> list[str]:
    """Call ``check(entries)`` after every write cfallow's client makes (read back from moto
    with the world's own client); returns the writes in order."""
    done: list[str] = []
    make = backend.clients.factory

    def factory(target: Any, service: str, region: str) -> Any:
        client = make(target, service, region)

        def after(model: Any, **_: Any) -> None:
            if not model.name.startswith("Describe"):
                done.append(model.name)
                check(world.entries(world.acls[0]))

        client.meta.events.register("after-call.ec2", after)
        return client

    backend.clients.factory = factory
    return done


def test_2021_change_never_leaves_a_kept_range_out(world: NaclWorld) -> None:
    world.add_foreign()
    acl = world.acls[0]
    assert run_backend(world.backend(), OLD, dry_run=False).error is None
    old_only = "104.28.0.1"  # in 104.16.0.0/12, in neither new range
    assert verdict(world.entries(acl), old_only, 443) == "allow"
    states: list[list[str]] = []

    def check(entries: Any) -> None:
        missing = [str(n) for n in KEPT if verdict(entries, first_address(n), 443) != "allow"]
        assert missing == [], f"kept ranges refused after write {len(states)}: {missing}"
        assert verdict(entries, OUTSIDER, 443) == "deny"
        states.append([n for n in ("allow", "deny")])

    backend = world.backend()
    writes = _watch(world, backend, check)
    result = run_backend(backend, CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert result.plan is not None
    assert (result.plan.add, result.plan.remove) == (ADDED_2021, REMOVED_2021)
    # make before break: both new ranges first, then the old one
    assert writes == ["CreateNetworkAclEntry"] * 2 + ["DeleteNetworkAclEntry"]
    assert len(states) == 3
    entries = world.entries(acl)
    for net in CURRENT:
        assert verdict(entries, first_address(net), 443) == "allow"
    assert verdict(entries, old_only, 443) == "deny"
    assert world.allowed(acl) == CURRENT


def test_removal_restores_the_acl_and_leaves_the_admins_entries(world: NaclWorld) -> None:
    world.add_foreign()
    acl = world.acls[0]
    before = (world.entries(acl), world.snapshot(acl))
    for desired in (OLD, CURRENT):
        assert run_backend(world.backend(), desired, dry_run=False).error is None
        assert world.snapshot(acl) == before[1]
    removal = run_backend(world.backend(), None, dry_run=False)
    assert removal.error is None, removal.error
    assert (world.entries(acl), world.snapshot(acl)) == before
    assert world.band(acl) is None  # the tag went too
    assert verdict(world.entries(acl), OUTSIDER, 443) == "allow"


def test_quota_read_from_service_quotas_refuses_with_the_exact_count(world: NaclWorld) -> None:
    world.add_foreign()
    other = world.new_acl()
    world.entry(other, 100, "-1", "0.0.0.0/0", "allow")
    # [443]: 22 allows + 2 denies; the admin's 3 inbound entries; 2 default denies = 29 > 20
    result = run_backend(
        world.backend(acls=[world.acls[0]], rules_per_acl=0, ports=[80, 443]),
        CURRENT,
        dry_run=False,
    )
    assert result.error == (
        f"{world.acls[0]} (eu-west-1): 53 inbound rules needed (48 cfallow + 3 other + 2"
        " default deny), quota 20: request 'Rules per network ACL' (Service Quotas vpc"
        " L-2AEEBF1A) of 53 (AWS allows at most 40: fewer ports), or the densest layout:"
        ' layout = "span" needs 31 (also opens 81-442 to Cloudflare)'
    )
    assert world.server.cfallow_writes() == []
    assert world.owned(world.acls[0]) == []


def test_an_admin_entry_inside_the_band_is_refused_not_taken(world: NaclWorld) -> None:
    acl = world.acls[0]
    world.entry(acl, 50, "6", "203.0.113.0/24", "allow", ports=(443, 443))
    before = world.entries(acl)
    result = run_backend(world.backend(), CURRENT, dry_run=False)
    assert result.error == (
        f"{acl} (eu-west-1): rule(s) 50 inside band 1-99 are not cfallow's (the ACL has no"
        " cfallow tag): choose free rule_numbers"
    )
    assert world.entries(acl) == before and world.band(acl) is None
    ok = run_backend(world.backend(rule_numbers="1000-1099"), CURRENT, dry_run=False)
    assert ok.error is None, ok.error
    assert (50, False, "6", 443, 443, "203.0.113.0/24", "allow") in world.entries(acl)


def test_a_band_too_small_for_make_before_break_is_refused(world: NaclWorld) -> None:
    acl = world.acls[0]
    # OLD: 21 allows + 2 denies = 23 of the band's 24 numbers; the 2021 change makes 2 first
    assert run_backend(world.backend(rule_numbers="1-24"), OLD, dry_run=False).error is None
    world.server.reset_recording()
    result = run_backend(world.backend(rule_numbers="1-24"), CURRENT, dry_run=False)
    assert result.error == (
        f"{acl} (eu-west-1): band 1-24 has 1 free rule numbers, the change needs 2 beside"
        " the 23 in use (make-before-break): widen rule_numbers"
    )
    assert world.server.cfallow_writes() == [] and world.allowed(acl) == OLD
    # widened: the entries move with the band's tag (the denies made anew above the allows)
    wide = run_backend(world.backend(rule_numbers="1-30"), CURRENT, dry_run=False)
    assert wide.error is None, wide.error
    assert world.allowed(acl) == CURRENT and world.band(acl) == (1, 30)
    assert all(verdict(world.entries(acl), first_address(n), 443) == "allow" for n in CURRENT)
    assert verdict(world.entries(acl), OUTSIDER, 443) == "deny"


def test_return_traffic_is_checked_and_said(world: NaclWorld) -> None:
    acl = world.acls[0]
    plan = world.backend().plan(CURRENT)
    [note] = [n for n in plan.notes if "outbound" in n]
    assert note.startswith(f"{acl} (eu-west-1): outbound entries do not let replies reach 22")
    assert "allowing tcp 1024-65535" in note
    world.entry(acl, 100, "6", "0.0.0.0/0", "allow", egress=True, ports=(1024, 65535))
    plan = world.backend().plan(CURRENT)
    [note] = [n for n in plan.notes if "outbound" in n]
    assert "reach 7 Cloudflare range(s) (e.g. 2400:cb00::/32)" in note
    world.entry(acl, 101, "6", "::/0", "allow", egress=True, ports=(1024, 65535))
    assert [n for n in world.backend().plan(CURRENT).notes if "outbound" in n] == []


def test_a_port_change_is_drift_and_made_before_it_is_broken(world: NaclWorld) -> None:
    acl = world.acls[0]
    assert run_backend(world.backend(ports=[443]), CURRENT, dry_run=False).error is None
    result = run_backend(world.backend(ports=[8443]), CURRENT, dry_run=False)
    assert result.error is None and result.plan is not None
    assert not result.plan.add and not result.plan.remove and result.plan.drift
    entries = world.entries(acl)
    assert verdict(entries, OUTSIDER, 8443) == "deny"
    assert verdict(entries, OUTSIDER, 443) == "deny"  # the default deny: no admin allow here
    assert all(verdict(entries, first_address(n), 8443) == "allow" for n in CURRENT)
    assert {e[3] for e in world.owned(acl)} == {8443}


def test_at_the_quota_the_2021_change_deletes_first_and_says_so(world: NaclWorld) -> None:
    """23 of cfallow's + 2 default denies = 25; after the change 26 fits a quota of 26, but
    making the two new entries before deleting the old one would pass through 27."""
    acl = world.acls[0]
    assert run_backend(world.backend(), OLD, dry_run=False).error is None
    backend = world.backend(rules_per_acl=26)
    writes = _watch(world, backend, lambda _: None)
    result = run_backend(backend, CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert result.plan is not None
    assert f"{acl} (eu-west-1): deleting before creating (quota)" in result.plan.drift
    assert writes == ["DeleteNetworkAclEntry"] + ["CreateNetworkAclEntry"] * 2
    assert world.allowed(acl) == CURRENT
