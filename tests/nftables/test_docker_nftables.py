"""Docker 20.10's IPv6 window, closed: nftables lockdown with ``docker = true`` and a real dockerd.

Docker 20.10 inserts its five IPv6 ``FORWARD`` rules above ``-j DOCKER-USER`` on
every start, so from the filter table alone a published IPv6 port would accept
everyone until the next cfallow run (the iptables backend's lockdown in
``DOCKER-USER`` guards it in the mangle table for that reason). cfallow's own
``table inet cfallow`` hooks forward on its own; Docker never touches it, and a
drop there is final whatever Docker's ``ip6 filter`` accepts. The guard matches
the published port by conntrack's original destination port, so it holds from
the first packet after any start.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import namespace_pair
from support.cfdata import CURRENT
from support.docker_engine import BODY, IMAGE, Dockerd, http_get, need_docker, private_dockerd
from support.iptables.traffic import CF, OUTSIDE, PROCS, SERVER, Pair
from support.nftables.helpers import NftHarness

from cfallow.engine import run_backend

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.xdist_group("docker")]

PUBLISHED = 8443


@dataclass
class Lab:
    pair: Pair
    nft: NftHarness
    engine: Dockerd

    def served(self, src: str, tries: int = 1) -> bool:
        dst = SERVER[1] if ":" in src else SERVER[0]
        return any(http_get(self.pair.client, src, dst, PUBLISHED) == BODY for _ in range(tries))

    def reach(self) -> dict[str, bool]:
        return {src: self.served(src, 3 if src in CF else 1) for src in (*CF, *OUTSIDE)}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    need_docker()
    tmp: Path = tmp_path_factory.mktemp("dockernft")
    server = [f"{SERVER[0]}/32", f"{SERVER[1]}/128"]
    client = [f"{CF[0]}/32", f"{OUTSIDE[0]}/32", f"{CF[1]}/128", f"{OUTSIDE[1]}/128"]
    with (
        namespace_pair(server, client, tag="dn") as (srv, cli),
        private_dockerd(srv, tmp) as engine,
    ):
        h = NftHarness(srv, tmp, "lockdown", docker=True, ports=[PUBLISHED])
        # in place before dockerd, as cfallow-restore.service is before docker.service
        boot = run_backend(h.backend(), CURRENT, dry_run=False)
        assert boot.error is None, boot.error
        engine.start()
        engine.build_image()
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
        yield Lab(Pair(srv, cli), h, engine)


def test_the_published_port_serves_cloudflare_only_both_families(lab: Lab) -> None:
    assert lab.reach() == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}


def test_an_ipv6_outsider_never_gets_in_during_a_dockerd_restart(lab: Lab) -> None:
    """No cfallow run between stop and start: the guard holds on its own."""
    outsiders = [
        lab.pair.spawn(
            lab.pair.client,
            sys.executable,
            PROCS,
            "connect",
            src,
            dst,
            str(PUBLISHED),
            "--rate",
            "200",
            "--max-seconds",
            "90",
        )
        for src, dst in ((OUTSIDE[1], SERVER[1]), (OUTSIDE[0], SERVER[0]))
    ]
    for _ in range(2):
        lab.engine.stop()
        t0 = time.monotonic()
        lab.engine.start()
        while not lab.served(CF[1]) and time.monotonic() - t0 < 30:
            time.sleep(0.1)
        assert lab.served(CF[1], 3), "the container is not back for Cloudflare's IPv6 source"
    for proc in outsiders:
        proc.terminate()
    stats = [json.loads(p.communicate(timeout=30)[0].strip().splitlines()[-1]) for p in outsiders]
    for s in stats:
        assert s["attempts"] > 100 and s["attempts"] == s["failed"], stats
    assert lab.reach() == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}
    print(f"outsiders during two dockerd restarts: {stats}")
