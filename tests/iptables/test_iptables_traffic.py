"""Traffic, not just rules: connections through a veth pair decide, for both variants."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import namespace, need_tool, ns_exec, sh
from support.cfdata import CURRENT, OLD
from support.cli_helpers import unwrapped
from support.iptables.helpers import VARIANTS, Fw, legacy_bin
from support.iptables.netns import NetnsBackend
from support.iptables.traffic import (
    CF,
    LISTEN,
    OLD_ONLY,
    OTHER,
    OUTSIDE,
    POLICY_DROP,
    PROCS,
    Pair,
    echo,
    pair,
    reach,
)

from cfallow.backend import Context, build
from cfallow.engine import BackendResult, run_backend
from cfallow.runner import Runner

pytestmark = [pytest.mark.root, pytest.mark.slow]

#: What Docker sets up for a container publishing 443 (reduced to what matters here).
DOCKER_NAT = """*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 192.0.2.1/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination 172.17.0.2:443
-A POSTROUTING -s 172.17.0.0/24 -j MASQUERADE
COMMIT
"""
DOCKER_FILTER = (
    "*filter\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\nCOMMIT\n"
)


@pytest.fixture(params=VARIANTS)
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Pair, Fw]]:
    with pair() as p:
        yield p, Fw(p.server, request.param, tmp_path)


def sync(fw: Fw, desired: frozenset = CURRENT, **cfg: object) -> BackendResult:  # type: ignore[type-arg]
    result = run_backend(fw.backend(**cfg), desired, dry_run=False)
    assert result.error is None, result.error
    return result


def test_allow_mode_under_policy_drop(lab: tuple[Pair, Fw]) -> None:
    p, fw = lab
    for version in (4, 6):
        fw.restore(version, POLICY_DROP[version])
    assert not any(reach(p).values()), "the admin's policy DROP should stop everyone first"
    sync(fw)
    assert reach(p) == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}


def test_lockdown_under_policy_accept(lab: tuple[Pair, Fw]) -> None:
    p, fw = lab
    assert all(reach(p).values()), "policy ACCEPT: everyone reaches 443 before cfallow"
    sync(fw, OLD, mode="lockdown")
    assert reach(p) == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}
    assert p.can_connect(OLD_ONLY)
    assert p.can_connect(OUTSIDE[0], port=OTHER), "lockdown reached beyond its ports"
    # An established connection from a range that is about to go keeps working.
    held = p.hold(OLD_ONLY)
    assert echo(held, "before") == "before"
    sync(fw, CURRENT, mode="lockdown")
    assert not p.can_connect(OLD_ONLY), "a removed range still gets new connections"
    assert echo(held, "after") == "after", "lockdown cut an established connection"
    # The admin's also_allow is accepted before the drop.
    sync(fw, CURRENT, mode="lockdown", also_allow=["198.51.100.0/24"])
    assert p.can_connect(OUTSIDE[0]) and not p.can_connect(OUTSIDE[1])


def test_loopback_is_never_cut_by_lockdown(lab: tuple[Pair, Fw]) -> None:
    p, fw = lab
    sync(fw, mode="lockdown")
    loop = Pair(p.server, p.server)  # connect from inside the server namespace
    assert loop.can_connect("127.0.0.1") and loop.can_connect("::1")


def test_zero_failed_connections_during_50_syncs(lab: tuple[Pair, Fw]) -> None:
    p, fw = lab
    for version in (4, 6):
        fw.restore(version, POLICY_DROP[version])
    sync(fw, OLD)
    assert p.can_connect(CF[0])
    with p.connect_loop(CF[0]) as during:
        for i in range(50):
            sync(fw, CURRENT if i % 2 == 0 else OLD)
    assert during["attempts"] >= 200, during
    assert during["failed"] == 0, during
    # The loop does see a gap: the same client while the chain is flushed for a moment.
    with p.connect_loop(CF[0]) as gap:
        time.sleep(0.3)
        fw.ipt(4, "-F", "CFALLOW")
        time.sleep(0.5)
        sync(fw, OLD)
        time.sleep(0.3)
    assert gap["failed"] > 0, gap


@contextlib.contextmanager
def container(p: Pair, fw: Fw, *, docker: bool = True) -> Iterator[str]:
    """A "container" namespace behind the server with a published 443, as Docker makes
    it without IPv6: DNAT and DOCKER-USER in the IPv4 tables only (``docker`` False: the
    namespace alone, Docker's rules not yet there)."""
    with namespace("ctr") as ctr:
        host_if, ctr_if = f"dk{uuid.uuid4().hex[:6]}", f"ct{uuid.uuid4().hex[:6]}"
        veth = ["ip", "link", "add", host_if, "netns", p.server, "type", "veth"]
        sh([*veth, "peer", "name", ctr_if, "netns", ctr])
        sh(ns_exec(p.server, "ip", "addr", "add", "172.17.0.1/24", "dev", host_if))
        sh(ns_exec(p.server, "ip", "link", "set", host_if, "up"))
        sh(ns_exec(ctr, "ip", "addr", "add", "172.17.0.2/24", "dev", ctr_if))
        sh(ns_exec(ctr, "ip", "link", "set", ctr_if, "up"))
        sh(ns_exec(ctr, "ip", "route", "add", "default", "via", "172.17.0.1"))
        sh(ns_exec(p.server, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
        if docker:
            fw.restore(4, DOCKER_NAT)
            fw.restore(4, DOCKER_FILTER)
        p.spawn(ctr, sys.executable, PROCS, "listen", str(LISTEN))  # the published port
        p.spawn(p.client, sys.executable, PROCS, "listen", str(LISTEN))  # somewhere on the web
        yield ctr


@pytest.mark.parametrize("boot", ["docker first", "cfallow first"])
def test_docker_user_lockdown_guards_published_ports_only(lab: tuple[Pair, Fw], boot: str) -> None:
    """A "container" namespace behind the server: a published 443, and its own outgoing HTTPS.

    "cfallow first" is a boot: cfallow-restore creates DOCKER-USER before dockerd
    starts, then Docker does what it does with an existing one (``Fw.docker_starts``).
    """
    p, fw = lab
    with container(p, fw, docker=False) as ctr:
        out = Pair(ctr, ctr)
        if boot == "cfallow first":
            sync(fw, mode="lockdown", parent="DOCKER-USER", ipv6=False)
            fw.docker_starts(4)
            fw.restore(4, DOCKER_NAT)  # the port is published only now
            assert not sync(fw, mode="lockdown", parent="DOCKER-USER", ipv6=False).changed
        else:
            fw.restore(4, DOCKER_NAT)
            fw.restore(4, DOCKER_FILTER)
            assert p.can_connect(CF[0]) and p.can_connect(OUTSIDE[0])
            sync(fw, mode="lockdown", parent="DOCKER-USER", ipv6=False)
        assert p.can_connect(CF[0]) and not p.can_connect(OUTSIDE[0])
        # The container's own connection to port 443 elsewhere is not a published port.
        assert out.can_connect("172.17.0.2", dst=OUTSIDE[0]), "lockdown cut outgoing HTTPS"


def test_docker_without_ipv6_applies_ipv4_and_says_so(lab: tuple[Pair, Fw]) -> None:
    """Docker's default (no IPv6): DOCKER-USER exists for IPv4 only. The CLI used to exit 1
    and apply nothing at all; now IPv4 is applied and the report says why IPv6 is not."""
    p, fw = lab
    conf = fw.tmp / "config.toml"
    conf.write_text('[backends.iptables]\nmode = "lockdown"\nparent = "DOCKER-USER"\n')
    path = os.environ["PATH"]
    if fw.variant == "legacy":
        path = f"{legacy_bin(fw.tmp / 'legacy-bin')}:{path}"
    argv = ["/usr/bin/env", f"PATH={path}", f"XTABLES_LOCKFILE={fw.lock}", sys.executable]
    argv += ["-m", "cfallow", "--config", str(conf), "--state-dir", str(fw.tmp / "state")]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ns_exec(p.server, *argv, *args), capture_output=True, text=True, check=False
        )

    with container(p, fw):
        assert p.can_connect(CF[0]) and p.can_connect(OUTSIDE[0])
        done = cli("sync", "--source", "bundled")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "note: IPv6: ip6tables has no DOCKER-USER chain" in unwrapped(done.stdout)
        assert "set ipv6 = false" in unwrapped(done.stdout)
        assert "iptables: +15 -0 =0 changed" in done.stdout.splitlines(), done.stdout
        assert "Traceback" not in done.stdout + done.stderr
        assert p.can_connect(CF[0]) and not p.can_connect(OUTSIDE[0])
        status = cli("status", "--source", "bundled", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        (report,) = json.loads(status.stdout)["backends"]
        assert not report["changed"] and "IPv6: ip6tables has no DOCKER-USER" in report["notes"][0]
        assert cli("remove").returncode == 0
        assert p.can_connect(OUTSIDE[0])


def test_an_explicit_other_variant_is_enforced_but_not_listed(tmp_path: Path) -> None:
    """``variant = "legacy"`` on this nf_tables host: its DROPs drop; ``iptables`` shows nothing."""
    need_tool("iptables")
    with pair() as p:
        fw = Fw(p.server, "legacy", tmp_path)
        inner = build("iptables", {"variant": "legacy", "mode": "lockdown"}, Context(Runner()))
        backend = NetnsBackend(inner, p.server, {"XTABLES_LOCKFILE": fw.lock})
        result = run_backend(backend, CURRENT, dry_run=False)
        assert result.error is None and result.plan is not None
        assert "are enforced" in result.plan.notes[0]
        assert reach(p) == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}
        listed = sh(ns_exec(p.server, "iptables", "-S")) + sh(ns_exec(p.server, "ip6tables", "-S"))
        assert "CFALLOW" not in listed and "nf_tables" in sh(["iptables", "--version"])


def redirect(fw: Fw, from_port: int, to_port: int) -> None:
    """The admin's port redirect in the nat table, both families, the variant's own tool."""
    for version in (4, 6):
        fw.restore(
            version,
            f"*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -p tcp -m tcp "
            f"--dport {from_port} -j REDIRECT --to-ports {to_port}\nCOMMIT\n",
        )


def test_lockdown_holds_behind_the_admins_port_redirect(lab: tuple[Pair, Fw]) -> None:
    """443 -> 8443 in PREROUTING: the lockdown matches the port the client connected to."""
    p, fw = lab
    p.spawn(p.server, sys.executable, PROCS, "listen", "8443")
    redirect(fw, 443, 8443)
    assert all(reach(p).values())  # the redirect works: everybody lands on 8443
    result = sync(fw, mode="lockdown")
    assert reach(p) == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}
    assert p.can_connect(OUTSIDE[0], port=8443)  # 8443 itself is not a locked port
    assert result.plan is not None
    notes = [n for n in result.plan.notes if n.startswith("NAT:")]
    assert len(notes) == 2 and all("443" in n and "8443" in n for n in notes), notes


def test_lockdown_names_a_redirect_onto_a_locked_port(lab: tuple[Pair, Fw]) -> None:
    """8443 -> 443: connections to 8443 are not the lockdown's; the plan names the rule."""
    p, fw = lab
    redirect(fw, 8443, 443)
    result = sync(fw, mode="lockdown")
    assert p.can_connect(OUTSIDE[0], port=8443) and not p.can_connect(OUTSIDE[0])
    assert result.plan is not None
    notes = [n for n in result.plan.notes if n.startswith("NAT:")]
    assert len(notes) == 2 and all("onto locked port 443" in n for n in notes), notes


def test_lockdown_covers_connections_conntrack_does_not_follow(lab: tuple[Pair, Fw]) -> None:
    """The admin's NOTRACK on 443: no original tuple, so the port itself is matched."""
    p, fw = lab
    for version in (4, 6):
        fw.restore(
            version,
            "*raw\n:PREROUTING ACCEPT [0:0]\n"
            "-A PREROUTING -p tcp -m tcp --dport 443 -j NOTRACK\nCOMMIT\n",
        )
    sync(fw, mode="lockdown")
    assert reach(p) == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}
