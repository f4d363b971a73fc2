"""iptables-nft's tables are nf_tables tables, and an nf_tables table can be put to sleep
(``nft add table ip filter '{ flags dormant; }'``): its base chains leave their hooks and
none of its rules sees a packet, cfallow's included, while ``iptables-nft-save`` prints
them as before. A lockdown there lets everyone in: the run fails saying so; allow mode
says its accept does nothing there. Traffic through a veth pair decides.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ns_exec
from support.cfdata import CURRENT
from support.iptables.helpers import Fw
from support.iptables.traffic import CF, OUTSIDE, POLICY_DROP, Pair, pair, reach

from cfallow.engine import run_backend

pytestmark = pytest.mark.root

LOCKED = {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Pair, Fw]]:
    with pair() as p:
        yield p, Fw(p.server, "nft", tmp_path)


def nft(fw: Fw, *args: str) -> None:
    subprocess.run(ns_exec(fw.ns, "nft", *args), check=True, capture_output=True)


def test_a_lockdown_in_a_dormant_table_fails_the_run(lab: tuple[Pair, Fw]) -> None:
    p, fw = lab
    result = run_backend(fw.backend(mode="lockdown"), CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert reach(p) == LOCKED
    nft(fw, "add", "table", "ip", "filter", "{ flags dormant; }")
    assert reach(p)[OUTSIDE[0]], "a dormant table drops nothing: the outsider gets in"
    for dry_run in (True, False):
        result = run_backend(fw.backend(mode="lockdown"), CURRENT, dry_run=dry_run)
        assert result.error == (
            "table ip filter is dormant (flags dormant): none of its rules sees a packet, "
            "so the lockdown lets everyone in (nft add table ip filter wakes it)"
        ), result.error
    nft(fw, "add", "table", "ip", "filter")  # what the message says
    result = run_backend(fw.backend(mode="lockdown"), CURRENT, dry_run=False)
    assert result.error is None and result.plan is not None, result.error
    assert not result.plan.changed, result.plan
    assert not any("dormant" in n for n in result.plan.notes), result.plan.notes
    assert reach(p) == LOCKED


def test_allow_mode_says_its_accept_does_nothing_in_a_dormant_table(
    lab: tuple[Pair, Fw],
) -> None:
    p, fw = lab
    for version in (4, 6):
        fw.restore(version, POLICY_DROP[version])
    run_backend(fw.backend(), CURRENT, dry_run=False)
    assert reach(p) == LOCKED
    nft(fw, "add", "table", "ip6", "filter", "{ flags dormant; }")
    result = run_backend(fw.backend(), CURRENT, dry_run=True)
    assert result.error is None and result.plan is not None, result.error
    note = (
        "table ip6 filter is dormant (flags dormant): none of its rules sees a packet, "
        "cfallow's accept among them (nft add table ip6 filter wakes it)"
    )
    assert note in result.plan.notes, result.plan.notes
    assert reach(p)[OUTSIDE[1]], "the admin's policy DROP sleeps too: everyone gets in"


def test_cfallow_sync_exits_1_while_the_lockdowns_table_sleeps(lab: tuple[Pair, Fw]) -> None:
    """As the timer runs it (``cfallow sync`` in the namespace): a run after the table
    went to sleep, and every run after it while it sleeps, fails on stderr."""
    from test_iptables_carry import Host

    p, fw = lab
    host = Host(fw, 'mode = "lockdown"\n')
    for _ in range(2):
        assert host.sync(CURRENT).returncode == 0
    nft(fw, "add", "table", "ip", "filter", "{ flags dormant; }")
    for _ in range(2):  # the second with the generation unchanged since the first
        proc = host.sync(CURRENT)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "table ip filter is dormant" in proc.stderr, proc.stderr
    assert reach(p)[OUTSIDE[0]]
