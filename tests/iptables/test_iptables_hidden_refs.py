"""A jump into cfallow's chain that iptables cannot show: an nft verdict map in
iptables-nft's own table (``tcp dport vmap { 8080 : jump CFALLOW }``) prints as
``-A INPUT -p tcp`` in ``iptables-nft-save``, so no read of rules finds it, while the
chain (a lockdown's drop at its end) judges that traffic too. The kernel counts every
reference into a chain: the plan says how many it cannot show, as long as they last.
Traffic through a veth pair decides.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ns_exec
from support.cfdata import CURRENT
from support.iptables.helpers import Fw
from support.iptables.traffic import OTHER, OUTSIDE, Pair, pair

from cfallow.engine import run_backend

pytestmark = pytest.mark.root

NOTE = (
    "IPv4: 1 reference(s) into chain CFALLOW that iptables does not show (an nft verdict "
    "map or rule in the same table: nft list table ip filter shows it): the chain judges "
    "that traffic too"
)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Pair, Fw]]:
    with pair() as p:
        yield p, Fw(p.server, "nft", tmp_path)


def nft(fw: Fw, *args: str) -> str:
    argv = ns_exec(fw.ns, "nft", *args)
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def test_a_verdict_map_into_cfallows_chain_is_said(lab: tuple[Pair, Fw]) -> None:
    p, fw = lab
    assert run_backend(fw.backend(mode="lockdown"), CURRENT, dry_run=False).error is None
    assert p.can_connect(OUTSIDE[0], port=OTHER), "lockdown covers 80 and 443 only"
    nft(
        fw,
        "add",
        "rule",
        "ip",
        "filter",
        "INPUT",
        "tcp",
        "dport",
        "vmap",
        "{ 8080 : jump CFALLOW }",
    )
    assert not p.can_connect(OUTSIDE[0], port=OTHER), "the map sends 8080 to the chain's drop"
    for _ in range(2):  # the second at the same generation (the count is kept with it)
        result = run_backend(fw.backend(mode="lockdown"), CURRENT, dry_run=True)
        assert result.error is None and result.plan is not None, result.error
        assert NOTE in result.plan.notes, result.plan.notes
    handle = next(
        r["rule"]["handle"]
        for r in json.loads(nft(fw, "-j", "list", "chain", "ip", "filter", "INPUT"))["nftables"]
        if "rule" in r and "vmap" in json.dumps(r)
    )
    nft(fw, "delete", "rule", "ip", "filter", "INPUT", "handle", str(handle))
    result = run_backend(fw.backend(mode="lockdown"), CURRENT, dry_run=True)
    assert result.error is None and result.plan is not None, result.error
    assert not any("does not show" in n for n in result.plan.notes), result.plan.notes
    assert p.can_connect(OUTSIDE[0], port=OTHER)


def test_a_renamed_chain_left_behind_is_said_until_removed(lab: tuple[Pair, Fw]) -> None:
    """``chain`` renamed: the old chain and its jumps (cfallow's comment) stay, and a
    lockdown there still drops outsiders under the new allow-mode configuration. Each
    plan says so, until ``remove`` with the old name takes it away."""
    p, fw = lab
    assert run_backend(fw.backend(mode="lockdown"), CURRENT, dry_run=False).error is None
    result = run_backend(fw.backend(chain="CFNEW"), CURRENT, dry_run=False)
    assert result.error is None and result.plan is not None, result.error
    note = (
        "IPv4: INPUT jumps to chain CFALLOW with cfallow's comment: not this configuration's "
        "chain (CFNEW), so it stays and still judges that traffic (renamed? `cfallow remove` "
        "with the old chain name removes it)"
    )
    assert note in result.plan.notes, result.plan.notes
    assert not p.can_connect(OUTSIDE[0]), "the old lockdown still drops the outsider"
    assert run_backend(fw.backend(chain="CFALLOW"), None, dry_run=False).error is None
    result = run_backend(fw.backend(chain="CFNEW"), CURRENT, dry_run=True)
    assert result.plan is not None and not result.plan.changed
    assert not any("with cfallow's comment" in n for n in result.plan.notes), result.plan.notes
    assert p.can_connect(OUTSIDE[0]), "allow mode alone: policy ACCEPT lets everyone in"
