"""The real Docker engine (``docker.io``) and parent ``DOCKER-USER``: boot order, traffic, restart.

One private dockerd (``support/docker_engine.py``) in the server namespace of a
veth pair, with IPv6 and ``ip6tables`` on; a container from a locally imported
busybox image publishes ``8443:443``. cfallow's lockdown goes in first, as
cfallow-restore does at boot, then dockerd starts, as docker.service does.
The client namespace holds a Cloudflare address and an outsider per family.
cfallow's lockdown is guarded in mangle's FORWARD too, which dockerd never
touches (checked here), so Docker 20.10's IPv6 FORWARD rules above
``-j DOCKER-USER`` after each start open nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import namespace_pair
from support.cfdata import CURRENT
from support.docker_engine import BODY, IMAGE, Dockerd, http_get, need_docker, private_dockerd
from support.iptables.helpers import Fw, need_variant
from support.iptables.traffic import CF, OUTSIDE, PROCS, SERVER, Pair

from cfallow.engine import BackendResult, run_backend

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.xdist_group("docker")]

PUBLISHED = 8443  # -p 8443:443: DOCKER-USER sees the container's port, 443
CONFIG = {"mode": "lockdown", "parent": "DOCKER-USER"}
FIRST = "-j DOCKER-USER"
Chains = dict[int, dict[str, list[str]]]


@dataclass
class Lab:
    pair: Pair
    fw: Fw
    engine: Dockerd
    version: str = ""
    boot: BackendResult | None = None
    seen: dict[str, Chains] = field(default_factory=dict)
    mangles: dict[str, tuple[str, str]] = field(default_factory=dict)

    def chains(self) -> Chains:
        names = ("FORWARD", "DOCKER-USER")
        return {v: {n: self.fw.chain(v, n) for n in names} for v in (4, 6)}

    def mangle(self) -> tuple[str, str]:
        """Both families' mangle tables as ``*-save`` prints them (no counters)."""
        return self.fw.save(4, table="mangle"), self.fw.save(6, table="mangle")

    def outsider(self, version: int, seconds: int) -> subprocess.Popen[str]:
        """An outsider connecting to the published port ~200 times a second."""
        src, dst = OUTSIDE[version == 6], SERVER[version == 6]
        return self.pair.spawn(
            self.pair.client,
            sys.executable,
            PROCS,
            "connect",
            src,
            dst,
            str(PUBLISHED),
            "--rate",
            "200",
            "--max-seconds",
            str(seconds),
        )

    def until_served(self, src: str, limit: float = 60) -> float:
        """Wait until ``src`` gets the page (a bound, not a speed check); the seconds taken."""
        t0 = time.monotonic()
        while not self.served(src):
            assert time.monotonic() - t0 < limit, f"{src} not served {limit:.0f} s after start"
            time.sleep(0.1)
        return time.monotonic() - t0

    def sync(self) -> BackendResult:
        result = run_backend(self.fw.backend(**CONFIG), CURRENT, dry_run=False)
        assert result.error is None, result.error
        return result

    def served(self, src: str, tries: int = 1) -> bool:
        """An HTTP GET from ``src`` to the published port answered by the container."""
        dst = SERVER[1] if ":" in src else SERVER[0]
        return any(http_get(self.pair.client, src, dst, PUBLISHED) == BODY for _ in range(tries))

    def reach(self) -> dict[str, bool]:
        return {src: self.served(src, 3 if src in CF else 1) for src in (*CF, *OUTSIDE)}

    def major(self) -> int:
        return int(self.version.split(".")[0])


def run_container(engine: Dockerd) -> None:
    engine.cli(
        "run",
        "-d",
        "--name",
        "web",
        "--restart",
        "always",
        "--init",
        "-p",
        f"{PUBLISHED}:443",
        IMAGE,
        "/bin/busybox",
        "httpd",
        "-f",
        "-p",
        "443",
        "-h",
        "/www",
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    need_docker()
    need_variant("nft")
    tmp: Path = tmp_path_factory.mktemp("docker")
    server = [f"{SERVER[0]}/32", f"{SERVER[1]}/128"]
    client = [f"{CF[0]}/32", f"{OUTSIDE[0]}/32", f"{CF[1]}/128", f"{OUTSIDE[1]}/128"]
    with (
        namespace_pair(server, client, tag="dk") as (srv, cli),
        private_dockerd(srv, tmp) as engine,
    ):
        lab = Lab(Pair(srv, cli), Fw(srv, "nft", tmp), engine)
        lab.boot = lab.sync()  # cfallow-restore.service, before docker.service
        lab.seen["before dockerd"] = lab.chains()
        lab.mangles["before dockerd"] = lab.mangle()
        engine.start()
        lab.version = engine.cli("version", "--format", "{{.Server.Version}}").stdout.strip()
        lab.seen["dockerd started"] = lab.chains()
        lab.mangles["dockerd started"] = lab.mangle()
        engine.build_image()
        run_container(engine)
        lab.seen["port published"] = lab.chains()
        lab.mangles["port published"] = lab.mangle()
        engine.cli(
            "network",
            "create",
            "--ipv6",
            "--subnet",
            "198.18.1.0/24",
            "--subnet",
            "2001:db8:d0d::/64",
            "extra",
        )
        lab.mangles["network created"] = lab.mangle()
        yield lab


def test_dockerd_keeps_the_docker_user_chain_cfallow_made_before_it(lab: Lab) -> None:
    """What the real dockerd does with a DOCKER-USER that already exists, per family."""
    assert lab.boot is not None and lab.boot.changed
    (jump,) = (j.spec() for j in lab.fw.backend(**CONFIG).settings.jumps())  # type: ignore[attr-defined]
    for version in (4, 6):
        assert lab.seen["before dockerd"][version] == {"FORWARD": [FIRST], "DOCKER-USER": [jump]}
    for stage in ("dockerd started", "port published"):
        v4, v6 = lab.seen[stage][4], lab.seen[stage][6]
        # IPv4: chain and cfallow's jump kept, -j RETURN appended, FORWARD jumps there first.
        assert v4["DOCKER-USER"] == [jump, "-j RETURN"], (lab.version, stage, v4)
        assert v4["FORWARD"][0] == FIRST and v4["FORWARD"].count(FIRST) == 1, v4
        # IPv6: chain and jump kept too, but Docker 20.10 only inserts its own FORWARD
        # rules, above the jump (moby's arrangeUserFilterRule is IPv4-only before 23.0).
        assert v6["DOCKER-USER"][0] == jump, (lab.version, stage, v6)
        if lab.major() < 23:
            assert v6["FORWARD"][-1] == FIRST and v6["FORWARD"][0] != FIRST, v6
    # dockerd never touches the mangle table: cfallow's guard there stays first in FORWARD.
    for stage, mangle in lab.mangles.items():
        assert mangle == lab.mangles["before dockerd"], (lab.version, stage, mangle)
    for version in (4, 6):
        assert lab.fw.chain(version, "FORWARD", "mangle") == [jump], version
        assert lab.fw.chain(version, "CFALLOW", "mangle") == lab.fw.chain(version, "CFALLOW")
    # The next cfallow run (the timer, or cfallow.service after docker.service) repairs it.
    repair = lab.sync()
    below = "IPv6: FORWARD jumps to DOCKER-USER at position 10, not 1 (moved to the top)"
    if lab.major() < 23:  # below Docker's rules for two networks (docker0 and "extra")
        assert repair.plan is not None and below in repair.plan.drift, repair.plan
    for version in (4, 6):
        assert lab.fw.chain(version, "FORWARD")[0] == FIRST
    assert not lab.sync().changed


def test_a_published_port_serves_cloudflare_and_refuses_outsiders(lab: Lab) -> None:
    lab.sync()
    assert lab.reach() == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}


def test_two_dockerd_restarts_without_a_cfallow_run_never_let_an_outsider_in(lab: Lab) -> None:
    """An outsider per family connects ~200 times a second throughout two dockerd restarts
    (stopped by pid; the restart policy brings the container back) and a ``docker network
    create``, with no cfallow run in between: not one connects, while Cloudflare's
    addresses get the page after each restart. Docker 20.10 puts its IPv6 FORWARD rules
    above ``-j DOCKER-USER`` on each start (cfallow's filter chain is then passed by);
    the guard in mangle's FORWARD still drops the outsider."""
    lab.sync()
    guard = lab.mangle()
    outsiders = [lab.outsider(4, 240), lab.outsider(6, 240)]
    try:
        for restart in (1, 2):
            lab.engine.stop()
            down = lab.chains()
            assert down[4]["FORWARD"][0] == FIRST and len(down[4]["DOCKER-USER"]) == 2, down
            lab.engine.start()
            back = max(lab.until_served(CF[1]), lab.until_served(CF[0]))
            restarted = lab.chains()
            # IPv4: cfallow's jump kept first (Docker may list its networks in another order)
            assert restarted[4]["DOCKER-USER"] == down[4]["DOCKER-USER"], restarted[4]
            assert restarted[4]["FORWARD"][0] == FIRST, restarted[4]
            assert sorted(restarted[4]["FORWARD"]) == sorted(down[4]["FORWARD"]), restarted[4]
            if lab.major() < 23:  # the reorder the guard is for
                assert restarted[6]["FORWARD"][0] != FIRST, (restart, restarted[6])
            assert lab.mangle() == guard, restart  # dockerd left the guard alone
            print(f"restart {restart}: Cloudflare served again {back:.2f} s after dockerd's start")
        lab.engine.cli(
            "network",
            "create",
            "--ipv6",
            "--subnet",
            "198.18.2.0/24",
            "--subnet",
            "2001:db8:d0e::/64",
            "another",
        )
        served = {src: lab.served(src, 3 if src in CF else 1) for src in (*CF, *OUTSIDE)}
    finally:
        for proc in outsiders:
            proc.terminate()
    stats = [json.loads(p.communicate(timeout=30)[0].strip().splitlines()[-1]) for p in outsiders]
    print(f"outsiders (IPv4, IPv6): {stats}")
    for version, got in zip((4, 6), stats):
        assert got["attempts"] > 100 and got["attempts"] == got["failed"], (version, got)
    assert served == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}, served
    # The next run (the docker.service drop-in's) puts FORWARD's jump back on top for IPv6.
    repaired = lab.sync()
    assert repaired.changed == (lab.major() < 23)
    assert repaired.plan is not None
    assert not any("window" in n or "until cfallow runs" in n for n in repaired.plan.notes)
    assert lab.reach() == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}
    writes = lab.fw.writes()
    assert not lab.sync().changed and lab.fw.writes() == writes  # the next sync writes nothing


def test_remove_leaves_no_trace_in_mangle(lab: Lab) -> None:
    """``cfallow remove``: the guard goes with the rest; mangle is as before cfallow ran."""
    lab.sync()
    removal = run_backend(lab.fw.backend(**CONFIG), None, dry_run=False)
    assert removal.error is None and removal.applied
    builtin = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
    for version in (4, 6):
        lines = lab.fw.save(version, table="mangle").splitlines()
        assert not [ln for ln in lines if ln.startswith("-A ")], lines  # not one rule left
        assert {ln.split()[0][1:] for ln in lines if ln.startswith(":")} <= builtin, lines
        assert all(ln.split()[1] == "ACCEPT" for ln in lines if ln.startswith(":")), lines
    assert lab.served(OUTSIDE[1], 3)  # Docker's own IPv6 rules: open again, as without cfallow
    lab.sync()  # back, for whatever runs after
    assert not lab.served(OUTSIDE[1])
