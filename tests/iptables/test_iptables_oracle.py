"""The byte-level oracle: what cfallow writes on legacy is exactly what its rule text means.

For every rule shape cfallow writes (both modes, both parents, the ports
forms, ``also_allow``, both families), one namespace gets the rules from
cfallow's own sync and another gets the same rules from
``ip(6)tables-legacy-restore`` of the documented rule text. The kernel's
entries of the two filter tables are then compared byte for byte, field by
field (:mod:`cfallow.backends.iptables.entries`; only packet counters are left
out): a difference fails naming the chain, the rule and the field
(``iniface_mask``, ``proto``, ``match 1 (multiport rev 1) data``, ...).
``iptables-legacy-save`` cannot do this: it prints a rule with a wrong
interface mask exactly like a right one.

The last tests put the former python-iptables writer back behind the
writer seam and show the oracle catches its IPv6 interface mask.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfallow.backends.iptables.backend import IptablesBackend
from cfallow.backends.iptables.entries import Entries, read_entries
from netaddr import IPNetwork
from support import namespace
from support.cfdata import CURRENT, OLD
from support.iptables.entries import differences
from support.iptables.helpers import Fw
from support.iptables.iptc import IptcWriter
from support.iptables.netns import in_netns

from cfallow.backend import Context, build
from cfallow.engine import run_backend
from cfallow.model import Networks

pytestmark = pytest.mark.root

ALSO = ["198.51.100.0/24", "192.0.2.128/25", "2001:db8:1::/48"]
DOCKER = (
    "*filter\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\nCOMMIT\n"
)

#: Every shape: (mode, parent, protocol, ports, also_allow).
SHAPES = [
    (mode, parent, protocol, ports, also)
    for mode in ("allow", "lockdown")
    for parent in ("INPUT", "DOCKER-USER")
    for protocol, ports in (("tcp", [80, 443]), ("tcp", [443]), ("udp", ["8000-8080", 443, 53]))
    for also in ([], ALSO)
]


def _id(shape: tuple[Any, ...]) -> str:
    mode, parent, protocol, ports, also = shape
    return f"{mode}-{parent}-{protocol}{'_'.join(map(str, ports))}{'-also' if also else ''}"


def rule_text(version: int, shape: tuple[Any, ...], nets: Networks) -> list[str]:
    """The documented rule text (docs/iptables.md, "What it writes"), written out independently."""
    mode, parent, protocol, ports, also = shape
    ascending = sorted(ports, key=lambda p: int(str(p).split("-")[0]))  # as the config sorts them
    dports = ",".join(str(p).replace("-", ":") for p in ascending)
    dnat = "-m conntrack --ctstate DNAT " if parent == "DOCKER-USER" else ""
    own = "-m comment --comment cfallow -j CFALLOW"
    if parent == "DOCKER-USER":
        lines = [f"-A {parent} -p {protocol} -m multiport --dports {dports} {dnat}{own}"]
    else:  # one per port, on the port before NAT; then untracked packets on their port
        lines = [
            f"-A {parent} -p {protocol} -m conntrack --ctorigdstport {p} {own}"
            for p in dports.split(",")
        ]
        untracked = "-m conntrack --ctstate UNTRACKED"
        lines.append(f"-A {parent} -p {protocol} -m multiport --dports {dports} {untracked} {own}")
    mine = sorted((n for n in nets if n.version == version), key=lambda n: (n.value, n.prefixlen))
    lines += [f"-A CFALLOW -s {n} -j ACCEPT" for n in mine]
    extra = sorted(
        (IPNetwork(c) for c in also if IPNetwork(c).version == version), key=lambda n: n.value
    )
    lines += [f"-A CFALLOW -s {n} -m comment --comment cfallow-also-allow -j ACCEPT" for n in extra]
    if mode == "lockdown":
        lines += [
            "-A CFALLOW -i lo -j RETURN",
            "-A CFALLOW -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
            "-A CFALLOW -j DROP",
        ]
    return lines


class Oracle:
    """Two namespaces: ``cfallow`` (synced by cfallow) and ``reference`` (restored from text)."""

    def __init__(self, mine: str, ref: str, tmp: Path) -> None:
        self.fw = Fw(mine, "legacy", tmp)
        self.ref = Fw(ref, "legacy", tmp / "ref")

    def setup(self, shape: tuple[Any, ...]) -> None:
        if shape[1] == "DOCKER-USER":
            for fw in (self.fw, self.ref):
                fw.restore(4, DOCKER)
                fw.restore(6, DOCKER)

    def sync(self, shape: tuple[Any, ...], nets: Networks, writer: Any = None) -> None:
        mode, parent, protocol, ports, also = shape
        cfg = dict(mode=mode, parent=parent, protocol=protocol, ports=ports, also_allow=also)
        inner = build("iptables", cfg, Context(runner=self.fw.runner, state_dir=self.fw.tmp))
        assert isinstance(inner, IptablesBackend)

        def child() -> str | None:
            inner.legacy_writer = writer
            return run_backend(inner, nets, dry_run=False).error

        error = in_netns(self.fw.ns, child, {"XTABLES_LOCKFILE": self.fw.lock})
        assert error is None, error

    def write_reference(self, version: int, lines: list[str]) -> None:
        """One noflush restore of the text; the jump goes to position 1 of its parent."""
        _, parent, jump = lines[0].split(" ", 2)
        text = [f"-I {parent} 1 {jump}", *lines[1:]]
        self.ref.restore(version, "*filter\n:CFALLOW - [0:0]\n" + "\n".join(text) + "\nCOMMIT\n")

    def write_guard(self, version: int, lines: list[str]) -> None:
        """The mangle guard from the same text: the jump first in mangle's FORWARD."""
        _, _, jump = lines[0].split(" ", 2)
        text = [f"-I FORWARD 1 {jump}", *lines[1:]]
        self.ref.restore(version, "*mangle\n:CFALLOW - [0:0]\n" + "\n".join(text) + "\nCOMMIT\n")

    def entries(self, ns: str, version: int, table: str = "filter") -> Entries:
        return in_netns(ns, lambda: read_entries(version, table))

    def compare(self, version: int, table: str = "filter") -> list[str]:
        mine = self.entries(self.fw.ns, version, table)
        ref = self.entries(self.ref.ns, version, table)
        return differences(mine, ref, ("cfallow", "iptables-legacy-restore"))


@pytest.fixture
def oracle(tmp_path: Path) -> Iterator[Oracle]:
    (tmp_path / "ref").mkdir()
    with namespace("orc") as mine, namespace("orr") as ref:
        yield Oracle(mine, ref, tmp_path)


def saved(fw: Fw, version: int) -> list[str]:
    """The rules ``*-legacy-save`` prints, without the Docker setup's own two."""
    docker = {ln for ln in DOCKER.splitlines() if ln.startswith("-A ")}
    return [ln for ln in fw.save(version).splitlines() if ln.startswith("-A ") and ln not in docker]


def in_save_order(lines: list[str]) -> list[str]:
    """Built-in chains first, then the others by name (each chain's rules in order)."""
    return sorted(lines, key=lambda ln: (ln.split()[1] not in ("INPUT", "FORWARD"), ln.split()[1]))


@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_every_shape_is_byte_for_byte_what_its_text_means(
    oracle: Oracle, shape: tuple[Any, ...]
) -> None:
    oracle.setup(shape)
    oracle.sync(shape, CURRENT)
    for version in (4, 6):
        lines = rule_text(version, shape, CURRENT)
        assert saved(oracle.fw, version) == in_save_order(lines)  # what the admin's save shows
        oracle.write_reference(version, lines)
        assert saved(oracle.ref, version) == in_save_order(lines)
        assert oracle.compare(version) == []
        if shape[:2] == ("lockdown", "DOCKER-USER"):  # the guard in mangle's FORWARD too
            oracle.write_guard(version, lines)
            assert oracle.compare(version, "mangle") == []


def test_the_2021_range_swap_is_what_its_text_means(oracle: Oracle) -> None:
    """An incremental write (``-D`` the old range, ``-I`` the new ones at the top) too."""
    shape = ("lockdown", "INPUT", "tcp", [80, 443], ALSO)
    oracle.sync(shape, OLD)
    oracle.sync(shape, CURRENT)
    for version in (4, 6):
        old = rule_text(version, shape, OLD)
        new = rule_text(version, shape, CURRENT)
        jumps = [ln for ln in new if ln.startswith("-A INPUT ")]
        added = [ln for ln in new if ln not in old]
        lines = [*jumps, *added, *(ln for ln in old[len(jumps) :] if ln in new)]
        assert saved(oracle.fw, version) == lines
        oracle.write_reference(version, lines)
        assert oracle.compare(version) == []


MASK = " ".join(["00"] * 13)
WRONG_MASK = f"iniface_mask: cfallow 01 01 01 {MASK}, iptables-legacy-restore ff ff ff {MASK}"


@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_the_oracle_catches_the_python_iptables_writer(
    oracle: Oracle, shape: tuple[Any, ...]
) -> None:
    """The former writer put back: its IPv6 ``-i lo`` mask is named; nothing else differs."""
    oracle.setup(shape)
    oracle.sync(shape, CURRENT, writer=IptcWriter())
    for version in (4, 6):
        lines = rule_text(version, shape, CURRENT)
        assert saved(oracle.fw, version) == in_save_order(lines)  # save cannot tell
        oracle.write_reference(version, lines)
        found = oracle.compare(version)
        if version == 6 and shape[0] == "lockdown":
            lo = [ln for ln in lines if ln.startswith("-A CFALLOW ")].index(
                "-A CFALLOW -i lo -j RETURN"
            )
            assert found == [f"CFALLOW rule {lo + 1}: {WRONG_MASK}"]
        else:
            assert found == []
