"""The iptables backend against real iptables (nft and legacy) in a fresh namespace per test.

Every assertion reads the namespace's tables with the variant's own
``*-save``, never through the backend.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import namespace, ns_exec
from support.cfdata import ADDED_2021, CURRENT, OLD, REMOVED_2021
from support.iptables.helpers import JUMPS, VARIANTS, Fw, jumps_for, tool

from cfallow.engine import BackendResult, run_backend
from cfallow.model import as_strings
from cfallow.testing import Nets

pytestmark = pytest.mark.root


def v4(nets: Nets) -> list[str]:
    return [n for n in as_strings(nets) if ":" not in n]


def v6(nets: Nets) -> list[str]:
    return [n for n in as_strings(nets) if ":" in n]


@pytest.fixture(params=VARIANTS)
def fw(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fw]:
    with namespace("ipt") as ns:
        yield Fw(ns, request.param, tmp_path)


def sync(fw: Fw, desired: Nets | None = CURRENT, **cfg: object) -> BackendResult:
    result = run_backend(fw.backend(**cfg), desired, dry_run=False)
    assert result.error is None, result.error
    return result


def test_first_sync_in_an_empty_namespace(fw: Fw) -> None:
    result = sync(fw)
    assert result.applied and result.plan is not None
    assert result.plan.add == CURRENT and not result.plan.remove and not result.plan.drift
    for version, nets in ((4, v4(CURRENT)), (6, v6(CURRENT))):
        assert fw.save(version) == (
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
            ":CFALLOW - [0:0]\n"
            + "".join(f"-A INPUT {j}\n" for j in JUMPS)
            + "".join(f"-A CFALLOW -s {n} -j ACCEPT\n" for n in nets)
            + "COMMIT\n"
        )
    assert len(v4(CURRENT)) == 15 and len(v6(CURRENT)) == 7
    assert fw.other_variant() == "", "rules landed in the variant this host does not use"


def test_second_sync_writes_nothing(fw: Fw) -> None:
    sync(fw)
    before = fw.both(counters=True)
    writes = fw.writes()
    calls = len(fw.runner.calls)
    # Hold the xtables lock: a legacy write would have to wait for it; a no-change run never asks.
    fd = os.open(fw.lock, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = sync(fw)
    finally:
        os.close(fd)
    assert result.plan is not None and not result.changed and not result.applied
    assert fw.writes() == writes
    assert not [argv for argv in fw.runner.calls[calls:] if argv[0].endswith("-restore")]
    assert fw.both(counters=True) == before


def test_2021_then_current_is_exactly_the_diff(fw: Fw) -> None:
    sync(fw, OLD)
    ipv6_before = fw.save(6, counters=True)
    result = sync(fw, CURRENT)
    assert result.plan is not None
    assert result.plan.add == ADDED_2021 and result.plan.remove == REMOVED_2021
    (step,) = result.plan.steps  # IPv4 only
    assert step.script.splitlines()[1:-1] == [  # type: ignore[attr-defined]
        "-D CFALLOW -s 104.16.0.0/12 -j ACCEPT",
        "-I CFALLOW 1 -s 104.16.0.0/13 -j ACCEPT",
        "-I CFALLOW 2 -s 104.24.0.0/14 -j ACCEPT",
    ]
    assert sorted(fw.chain(4)) == sorted(f"-s {n} -j ACCEPT" for n in v4(CURRENT))
    assert fw.save(6, counters=True) == ipv6_before
    assert fw.owned() == CURRENT


def test_admin_rules_untouched_after_ten_syncs(fw: Fw) -> None:
    fw.add_admin()
    foreign = fw.foreign()
    for i in range(10):
        sync(fw, OLD if i % 3 == 1 else CURRENT)
        assert fw.foreign() == foreign
        for version in (4, 6):
            assert fw.save(version).split("\n-A ")[1:4] == [f"INPUT {j}" for j in JUMPS], (
                "jumps not first"
            )
            assert len(fw.jumps(version)) == 3
    assert fw.other_variant() == ""


def test_foreign_rules_in_the_chain_are_reported_and_rewritten(fw: Fw) -> None:
    fw.add_admin()
    sync(fw)
    fw.ipt(4, "-I", "CFALLOW", "3", "-s", "10.0.0.0/8", "-p", "tcp", "-j", "ACCEPT")
    fw.ipt(4, "-A", "CFALLOW", "-j", "LOG")
    fw.ipt(6, "-I", "CFALLOW", "1", "-s", "fd00::/8", "-j", "ACCEPT")  # looks like a range
    # After the hand edits: iptables-legacy itself resets the policy counters when it writes.
    foreign = fw.foreign()
    plan = fw.backend().plan(CURRENT)
    assert plan.changed
    assert "IPv4: foreign rule: -s 10.0.0.0/8 -p tcp -j ACCEPT" in plan.drift
    assert "IPv4: foreign rule: -j LOG" in plan.drift
    assert {str(n) for n in plan.remove} == {"fd00::/8"}
    sync(fw)
    assert fw.chain(4) == [f"-s {n} -j ACCEPT" for n in v4(CURRENT)]
    assert sorted(fw.chain(6)) == sorted(f"-s {n} -j ACCEPT" for n in v6(CURRENT))
    assert fw.foreign() == foreign
    assert not sync(fw).changed


def test_duplicate_and_stray_jumps_are_normalised(fw: Fw) -> None:
    fw.add_admin()
    sync(fw)
    fw.ipt(4, "-A", "INPUT", *JUMPS[1].split())  # a second, identical jump at the end
    fw.ipt(
        4, "-I", "INPUT", "2", "-p", "tcp", "-m", "multiport", "--dports", "8080", "-j", "CFALLOW"
    )
    fw.ipt(4, "-I", "FORWARD", "-j", "CFALLOW")
    fw.ipt(6, "-I", "INPUT", "1", "-s", "2001:db8:2::/48", "-j", "ACCEPT")  # the admin, above us
    foreign = fw.foreign()  # jumps into CFALLOW are cfallow's, so not part of this
    plan = fw.backend().plan(CURRENT)
    assert not plan.add and not plan.remove
    assert plan.drift[0] == "IPv4: 6 jumps into CFALLOW, 3 wanted"  # and five more lines at most
    assert "IPv6: jump at position 2 of INPUT, not 1" in plan.drift
    sync(fw)
    for version in (4, 6):
        assert fw.jumps(version) == [f"-A INPUT {j}" for j in JUMPS]
        assert fw.save(version).split("\n-A ")[1:4] == [f"INPUT {j}" for j in JUMPS]
    assert fw.foreign() == foreign
    assert fw.save(6).split("\n-A ")[4] == "INPUT -s 2001:db8:2::/48 -j ACCEPT"
    assert not sync(fw).changed


def test_settings_changes_show_as_drift_and_apply(fw: Fw) -> None:
    fw.add_admin()
    sync(fw)
    foreign = fw.foreign()
    cfg: dict[str, object] = {
        "ports": [443, "8000-8080"],
        "mode": "lockdown",
        "also_allow": ["192.0.2.0/24", "2001:db8:7::/48"],
    }
    plan = fw.backend(**cfg).plan(CURRENT)
    assert not plan.add and not plan.remove
    assert "IPv4: mode: chain is allow, config says lockdown" in plan.drift
    assert "IPv4: also_allow: chain has none, config says 192.0.2.0/24" in plan.drift
    assert any(d.startswith("IPv6: jump differs from config") for d in plan.drift)
    sync(fw, **cfg)
    jumps = jumps_for("443,8000:8080")
    tail = [
        "-i lo -j RETURN",
        "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "-j DROP",
    ]
    assert fw.jumps(4) == [f"-A INPUT {j}" for j in jumps]
    assert fw.chain(4)[15:] == [
        "-s 192.0.2.0/24 -m comment --comment cfallow-also-allow -j ACCEPT",
        *tail,
    ]
    assert fw.chain(6)[7:] == [
        "-s 2001:db8:7::/48 -m comment --comment cfallow-also-allow -j ACCEPT",
        *tail,
    ]
    assert fw.foreign() == foreign
    assert not sync(fw, **cfg).changed
    back = sync(fw)  # and back to the defaults
    assert (
        back.plan is not None
        and "IPv4: mode: chain is lockdown, config says allow" in back.plan.drift
    )
    assert fw.chain(4) == [f"-s {n} -j ACCEPT" for n in v4(CURRENT)]


DOCKER_JUMP = (
    "-p tcp -m multiport --dports 80,443 -m conntrack --ctstate DNAT -m comment --comment cfallow "
    "-j CFALLOW"
)


def test_parent_docker_user(fw: Fw) -> None:
    for version in (4, 6):  # what Docker sets up
        fw.restore(version, "*filter\n:DOCKER-USER - [0:0]\n-A DOCKER-USER -j RETURN\nCOMMIT\n")
    sync(fw, parent="DOCKER-USER")
    # Only connections to published ports (DNAT): not the containers' own outgoing ones.
    jump = DOCKER_JUMP
    for version in (4, 6):
        assert fw.jumps(version) == [f"-A DOCKER-USER {jump}"]
        assert fw.chain(version, "DOCKER-USER") == [jump, "-j RETURN"]
    assert not sync(fw, parent="DOCKER-USER").changed


def test_docker_user_before_docker_starts_is_created_and_docker_keeps_it(fw: Fw) -> None:
    """At boot cfallow runs before dockerd: it creates DOCKER-USER (and FORWARD's jump
    into it) as Docker would; Docker then keeps the chain and cfallow's jump in it."""
    first = sync(fw, parent="DOCKER-USER")
    assert first.plan is not None
    assert "IPv4: no DOCKER-USER chain yet (created, as Docker would)" in first.plan.drift
    jump = DOCKER_JUMP
    for version in (4, 6):
        assert fw.chain(version, "FORWARD") == ["-j DOCKER-USER"]
        assert fw.chain(version, "DOCKER-USER") == [jump]
        fw.docker_starts(version)
        assert fw.chain(version, "FORWARD") == ["-j DOCKER-USER"]
        assert fw.chain(version, "DOCKER-USER") == [jump, "-j RETURN"]
    assert not sync(fw, parent="DOCKER-USER").changed  # nothing to repair after Docker


GUARDED = {"parent": "DOCKER-USER", "mode": "lockdown"}


def test_lockdown_in_docker_user_is_guarded_in_mangle_forward(fw: Fw) -> None:
    """The same chain in the mangle table, jumped to first from mangle's FORWARD, written in
    the same restore batch (one per family), read back and diffed like the filter part."""
    for version in (4, 6):  # an admin's own mangle rule, kept where it is
        fw.restore(version, "*mangle\n-A FORWARD -p udp -j MARK --set-mark 7\nCOMMIT\n")
    mangle_before = [fw.save(v, counters=True, table="mangle") for v in (4, 6)]
    writes = fw.writes()
    sync(fw, **GUARDED)
    assert fw.writes() - writes == 2  # filter and mangle together, one batch per family
    for version in (4, 6):
        assert fw.chain(version, "FORWARD", "mangle") == [
            DOCKER_JUMP,
            "-p udp -j MARK --set-xmark 0x7/0xffffffff",
        ]
        assert fw.chain(version, "CFALLOW", "mangle") == fw.chain(version, "CFALLOW")
        assert fw.chain(version, "CFALLOW")[-1] == "-j DROP"
    writes = fw.writes()
    assert not sync(fw, **GUARDED).changed
    assert fw.writes() == writes  # the second sync writes nothing
    # A lockdown without its guard (what an earlier cfallow wrote): drift, added.
    for version in (4, 6):
        fw.restore(version, f"*mangle\n-D FORWARD {DOCKER_JUMP}\n-F CFALLOW\n-X CFALLOW\nCOMMIT\n")
    upgrade = sync(fw, **GUARDED)
    assert upgrade.plan is not None and upgrade.plan.add == frozenset()
    assert upgrade.plan.drift == tuple(
        f"IPv{v} mangle: no CFALLOW chain guarding FORWARD (added: Docker cannot reorder it)"
        for v in (4, 6)
    )
    # Edited by hand in mangle only: drift, put back.
    fw.ipt(6, "-t", "mangle", "-D", "CFALLOW", "-j", "DROP")
    fw.ipt(4, "-t", "mangle", "-D", "FORWARD", "1")
    again = sync(fw, **GUARDED)
    assert again.plan is not None and again.plan.add == frozenset() and again.changed
    assert any(d.startswith("IPv6 mangle: lockdown rules") for d in again.plan.drift), again.plan
    assert "IPv4 mangle: no jump from FORWARD" in again.plan.drift, again.plan.drift
    for version in (4, 6):
        assert fw.chain(version, "FORWARD", "mangle")[0] == DOCKER_JUMP
        assert fw.chain(version, "CFALLOW", "mangle") == fw.chain(version, "CFALLOW")
    # allow mode needs no guard (an accept restricts nothing): the guard goes.
    allow = sync(fw, parent="DOCKER-USER")
    assert allow.plan is not None
    assert "IPv4 mangle: delete 1 jump(s) and chain CFALLOW (" in " ".join(allow.plan.drift)
    for version in (4, 6):
        assert "CFALLOW" not in fw.save(version, table="mangle")
    sync(fw, **GUARDED)
    removal = run_backend(fw.backend(**GUARDED), None, dry_run=False)
    assert removal.error is None and removal.applied
    mangle_after = [fw.save(v, counters=True, table="mangle") for v in (4, 6)]
    assert mangle_after == mangle_before  # no trace in mangle, the admin's rule untouched
    assert not run_backend(fw.backend(**GUARDED), None, dry_run=False).changed


def test_a_foreign_mangle_chain_of_that_name_is_refused(fw: Fw) -> None:
    fw.restore(6, "*mangle\n:CFALLOW - [0:0]\n-A CFALLOW -p udp -j MARK --set-mark 7\nCOMMIT\n")
    result = run_backend(fw.backend(**GUARDED), CURRENT, dry_run=False)
    assert result.error is not None
    assert str(result.error).startswith("mangle table: IPv6: chain CFALLOW exists and is not")
    assert fw.chain(6, "CFALLOW", "mangle") == ["-p udp -j MARK --set-xmark 0x7/0xffffffff"]


def test_allow_in_docker_user_brings_no_mangle_table_into_being(fw: Fw) -> None:
    """Allow mode restricts nothing, so it has no guard; reading for a leftover one does
    not create the table (legacy: only a listed table is read)."""
    sync(fw, parent="DOCKER-USER")
    for version in (4, 6):
        tables = subprocess.run(
            ns_exec(fw.ns, tool(fw.variant, version, "-save")),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "*filter" in tables and "*mangle" not in tables, tables


def test_removal_restores_the_ruleset_exactly(fw: Fw) -> None:
    fw.add_admin()
    before = fw.both(counters=True)
    sync(fw, OLD)
    sync(fw, CURRENT, mode="lockdown", also_allow=["192.0.2.0/24"])
    removal = run_backend(fw.backend(), None, dry_run=False)
    assert removal.error is None and removal.applied and removal.plan is not None
    assert removal.plan.remove == CURRENT
    assert fw.both(counters=True) == before
    again = run_backend(fw.backend(), None, dry_run=False)
    assert again.error is None and not again.changed


def test_ipv6_false_leaves_ipv6_alone(fw: Fw) -> None:
    result = sync(fw, ipv6=False)
    assert result.plan is not None and result.plan.add == frozenset(
        n for n in CURRENT if n.version == 4
    )
    assert "IPv6 ranges left alone (ipv6 = false)" in result.plan.notes
    assert "CFALLOW" not in fw.save(6)
    assert len(fw.chain(4)) == 15
