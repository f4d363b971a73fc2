"""The carry past cfallow's own commit (iptables-nft) for the configurations and config
changes the first tests did not write: a protocol other than tcp, port ranges, one port,
``also_allow`` in both families, and a configuration changed between two runs (the batch
then deletes and inserts the jumps in INPUT, or rewrites the whole chain).

What a run keeps must be what a fresh ``*-nft-save`` prints, byte for byte (timestamps
aside), and the run after it must be in sync with no read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import namespace
from support.cfdata import CURRENT, OLD
from support.iptables.helpers import Fw
from test_iptables_carry import Host, carried_and_afresh, settle

pytestmark = pytest.mark.root

LOCK = 'mode = "lockdown"\n'
DOCKER = 'parent = "DOCKER-USER"\n'
ALSO = 'also_allow = ["192.0.2.1/32", "2001:DB8:0:0::/64", "198.51.100.0/24"]\n'
CONFIGS = {
    "udp, a range and a port": LOCK + 'protocol = "udp"\nports = [443, "8000-8100"]\n',
    "sctp, one port": LOCK + 'protocol = "sctp"\nports = [9000]\n',
    "also_allow, lockdown": LOCK + ALSO,
    "allow, a range": 'ports = ["1-65535"]\n',
}
#: A configuration, then another one the next run moves to (no restart, no removal).
CHANGES = {
    "ports added": (LOCK + "ports = [443]\n", LOCK + "ports = [80, 443, 8443]\n"),
    "ports removed": (LOCK + "ports = [80, 443, 8443]\n", LOCK + "ports = [443]\n"),
    "allow to lockdown": ("", LOCK),
    "lockdown to allow": (LOCK, ""),
    "also_allow added": (LOCK, LOCK + ALSO),
    "protocol changed": (LOCK, LOCK + 'protocol = "udp"\n'),
    "DOCKER-USER, ports added": (
        LOCK + DOCKER + "ports = [443]\n",
        LOCK + DOCKER + "ports = [80, 443, 8443]\n",
    ),
    "DOCKER-USER, also_allow added": (
        LOCK + DOCKER,
        LOCK + DOCKER + ALSO.replace("2001:DB8", "2001:DB9"),
    ),
}


@pytest.fixture
def fw(tmp_path: Path) -> Iterator[Fw]:
    with namespace("carryc") as ns:
        yield Fw(ns, "nft", tmp_path)


def _changed_then_in_sync(host: Host, networks: object) -> None:
    tables = ("filter", "mangle") if "DOCKER-USER" in host.conf.read_text() else ("filter",)
    proc = host.sync(networks)  # type: ignore[arg-type]
    assert proc.returncode == 0 and "changed" in proc.stdout, proc.stdout + proc.stderr
    assert host.kept() == host.fresh(*tables), "what is kept is not what the kernel holds"
    proc = host.sync(networks)  # type: ignore[arg-type]
    assert proc.returncode == 0 and "in sync" in proc.stdout, proc.stdout + proc.stderr
    assert host.kept() == host.fresh(*tables)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_a_changing_sync_of_each_configuration_keeps_what_the_kernel_holds(
    fw: Fw, config: str
) -> None:
    host = Host(fw, CONFIGS[config])
    settle(host, CURRENT)
    for networks in (OLD, CURRENT):
        _changed_then_in_sync(host, networks)
        assert host.calls("-save") == 0, "carried"
        host.in_step(networks)


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_configuration_changed_between_runs(fw: Fw, change: str) -> None:
    first, second = CHANGES[change]
    host = Host(fw, first)
    settle(host, CURRENT)
    host.conf.write_text('[backends.iptables]\nvariant = "nft"\n' + second)
    _changed_then_in_sync(host, CURRENT)
    assert host.calls("-save") == 0, "the new configuration's batch carried"
    host.in_step(CURRENT)
    _changed_then_in_sync(host, OLD)
    assert host.calls("-save") == 0
    host.in_step(OLD)


def test_lockdowns_nat_note_carried_is_the_one_made_afresh(fw: Fw) -> None:
    """A DNAT onto the locked port: the note a carried run prints is the one an analysis
    made from scratch prints (the NAT tables are not cfallow's to write)."""
    dnat = ["-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "8443"]
    fw.ipt(4, *dnat, "-j", "REDIRECT", "--to-ports", "443")
    host = Host(fw, LOCK + "ports = [443]\n")
    settle(host, CURRENT)
    notes = carried_and_afresh(host)
    assert host.calls("-save") > 0
    assert notes[0] == notes[1] and "onto locked port 443" in notes[0], notes
