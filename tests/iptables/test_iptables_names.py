"""Traffic with the uplink names real origins have, for both variants and both families.

The lockdown chain's ``-i lo -j RETURN`` must match loopback and nothing else.
The former legacy writer (python-iptables' ``Rule6``) wrote its IPv6
interface mask as ``0x01`` bytes, so on an uplink called ``bond0`` (also
``tun0``, ``veth0``, ``vmbr0``, ...) every outsider's IPv6 packet "came from
lo" and was let through; ``eth0`` and ``ens3`` happen not to collide, which is
why the other traffic tests never saw it. One namespace pair per name and
variant; lockdown (policy ACCEPT) and then allow (policy DROP) in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfallow.backends.iptables.backend import IptablesBackend
from support.cfdata import CURRENT
from support.iptables.helpers import VARIANTS, Fw
from support.iptables.iptc import IptcWriter
from support.iptables.netns import in_netns
from support.iptables.traffic import CF, OUTSIDE, POLICY_DROP, Pair, pair, reach

from cfallow.backend import Context, build
from cfallow.engine import run_backend

pytestmark = [pytest.mark.root, pytest.mark.slow]

#: Uplink names on the origin side; the last is 15 characters (IFNAMSIZ - 1).
NAMES = ("eth0", "ens3", "enp1s0", "bond0", "vo1", "enx00163e5a1b2c")
ONLY_CLOUDFLARE = {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}


def sync(fw: Fw, **cfg: object) -> None:
    result = run_backend(fw.backend(**cfg), CURRENT, dry_run=False)
    assert result.error is None, result.error


@pytest.fixture(params=[(v, n) for v in VARIANTS for n in NAMES], ids=lambda p: f"{p[0]}-{p[1]}")
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Pair, Fw]]:
    variant, name = request.param
    with pair(server_if=name) as p:
        yield p, Fw(p.server, variant, tmp_path)


def test_only_cloudflare_gets_in_whatever_the_uplink_is_called(lab: tuple[Pair, Fw]) -> None:
    p, fw = lab
    assert all(reach(p).values()), "policy ACCEPT: everyone reaches 443 before cfallow"
    sync(fw, mode="lockdown")
    assert reach(p) == ONLY_CLOUDFLARE, "lockdown"
    loop = Pair(p.server, p.server)
    assert loop.can_connect("127.0.0.1") and loop.can_connect("::1"), "lockdown cut loopback"
    for version in (4, 6):
        fw.restore(version, POLICY_DROP[version])
    sync(fw, mode="allow")
    assert reach(p) == ONLY_CLOUDFLARE, "allow under policy DROP"


@pytest.mark.parametrize("name", ["bond0"])
def test_the_former_writer_let_every_ipv6_outsider_in_on_bond0(tmp_path: Path, name: str) -> None:
    """The bug, shown with traffic: the python-iptables writer put back behind the seam."""
    with pair(server_if=name) as p:
        fw = Fw(p.server, "legacy", tmp_path)
        inner = build("iptables", {"mode": "lockdown"}, Context(runner=fw.runner, state_dir=fw.tmp))
        assert isinstance(inner, IptablesBackend)

        def child() -> Any:
            inner.legacy_writer = IptcWriter()
            return run_backend(inner, CURRENT, dry_run=False).error

        assert in_netns(fw.ns, child, {"XTABLES_LOCKFILE": fw.lock}) is None
        assert reach(p) == {**ONLY_CLOUDFLARE, OUTSIDE[1]: True}  # 2001:db8:ff::7 gets in
        # A host upgraded from that writer: the save text looks right, the entry is not.
        plan = fw.backend(mode="lockdown").plan(CURRENT)
        assert plan.drift == (
            "IPv6: lockdown rules incomplete or out of order",
            "IPv6: foreign rule: -i lo -j RETURN (kernel interface mask 01 01 01 "
            + " ".join(["00"] * 13)
            + ": matches more than the name)",
        )
        sync(fw, mode="lockdown")  # the chain is rewritten by the restore writer
        assert reach(p) == ONLY_CLOUDFLARE
        assert fw.backend(mode="lockdown").plan(CURRENT).drift == ()
