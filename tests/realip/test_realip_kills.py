"""SIGKILL and SIGTERM at random instants of real-IP syncs, then the next run converges.

Per server (real nginx, HAProxy, Apache, Caddy) and signal, ``KILLS`` syncs
each alternate the list (the pre-2021 one and today's) and are signalled at
a random instant: half uniformly over a changing run's time, half at a
random moment after the new list was renamed into place (the window between
the file and the server). After each:

* SIGTERM (to cfallow alone): the apply finished or never started: no
  reload is owed, the file is the old or the new list, and the server holds
  exactly that list (a request proves it);
* SIGKILL: anything may be left;

then one ``cfallow sync`` exits 0 and the server in memory holds the new
list: ``CF-Connecting-IP`` sent from ``104.28.0.5`` (given up by Cloudflare
in 2021) is believed exactly when the new list is the pre-2021 one, and from
``173.245.48.5`` always.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support.cfdata import CURRENT, OLD
from support.realip.apache import Apache
from support.realip.caddy import Caddy
from support.realip.faults import NEW_ONLY, Runs, ended, settled
from support.realip.haproxy import Haproxy
from support.realip.lab import CF_SRC, CLIENT, WARP_SRC, Server, in_pair, running, sig
from support.realip.nginx import Nginx

pytestmark = pytest.mark.root
KILLS = int(os.environ.get("CFALLOW_REALIP_KILLS", "4"))
SERVERS: dict[str, type[Server]] = {
    "nginx": Nginx,
    "haproxy": Haproxy,
    "apache": Apache,
    "caddy": Caddy,
}
OTHER = {"old": "new", "new": "old"}
ERA_SET = {"old": OLD, "new": CURRENT}
#: What a request from WARP_SRC claiming CLIENT is logged as, per list.
WARP_SEEN = {"old": CLIENT, "new": WARP_SRC}


@pytest.fixture(params=sorted(SERVERS))
def paired(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    cls = SERVERS[request.param]
    with (
        in_pair() as (srv_ns, cli_ns),
        running(cls(tmp_path / request.param, ns=srv_ns, client_ns=cli_ns)) as srv,
    ):
        yield srv


def era_of(srv: Server) -> str:
    return "new" if NEW_ONLY in srv.list_path.read_text() else "old"


def holds(srv: Server, era: str, runs: Runs) -> None:
    seen = srv.seen_as(WARP_SRC)
    assert seen == WARP_SEEN[era], f"{srv.name} does not hold the {era} list\n{runs.diagnosis()}"
    assert srv.seen_as(CF_SRC) == CLIENT, runs.diagnosis()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["KILL", "TERM"])
def test_signal_at_random_instants_then_the_next_run_converges(
    paired: Server, tmp_path: Path, httpserver: HTTPServer, signum: int
) -> None:
    srv = paired
    seed = int(os.environ.get("CFALLOW_PROOF_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    runs = Runs(srv, tmp_path, httpserver, gate=False)
    runs.publish("old")
    assert runs.inproc("-q", "sync") == 0
    took, window = [], []
    for era in ("new", "old"):  # a changing run (its own process): whole, and after the rename
        runs.publish(era)
        start, renamed = time.monotonic(), wait_rename(runs, 120)
        assert ended(renamed[0]) == 0
        took.append(time.monotonic() - start)
        window.append(time.monotonic() - renamed[1])
    span, after = 1.2 * max(took), 1.2 * max(window)
    prev = "old"
    outcomes: dict[str, int] = {}
    for i in range(KILLS):
        where = f"{srv.name} kill {i} (seed {seed})"
        new = OTHER[prev]
        runs.publish(new)
        before = srv.state()
        if i % 2:  # a random moment after the rename: between the file and the server
            proc = wait_rename(runs, 10 * span + 10)[0]
            time.sleep(rng.uniform(0, after))
        else:
            proc = runs.start()
            time.sleep(rng.uniform(0, span))
        os.kill(proc.pid, signum)
        code = ended(proc)
        left = era_of(srv)
        owed = runs.pending.exists()
        if isinstance(srv, Haproxy):  # its record is the live ACL itself
            owed = srv.live() != ERA_SET[left]
        key = ("ended" if code == 0 else "signalled") + (
            ", file new" if left == new else ", file old"
        )
        key += ", server behind" if owed else ""
        outcomes[key] = outcomes.get(key, 0) + 1
        if signum == signal.SIGTERM:
            assert code in (0, -signal.SIGTERM), f"{where}: exit {code}"
            assert not owed, f"{where}: SIGTERM left a reload owed"
            if left != prev:
                settled(srv, before)
            holds(srv, left, runs)
        assert runs.inproc("-q", "sync") == 0, where
        assert era_of(srv) == new and not runs.pending.exists(), where
        settled(srv, before)
        holds(srv, new, runs)
        prev = new
    print(
        f"{srv.name} {signal.Signals(signum).name}: {KILLS} runs, signalled within {span:.2f} s "
        f"of the start or {after:.2f} s of the rename: {outcomes} (seed {seed})"
    )


def wait_rename(runs: Runs, limit: float) -> tuple[subprocess.Popen[bytes], float]:
    """Start a sync and return once it renamed the new list into place (or ended), and when."""
    unrenamed = sig(runs.server.list_path)
    proc = runs.start()
    deadline = time.monotonic() + limit
    while sig(runs.server.list_path) == unrenamed and proc.poll() is None:
        assert time.monotonic() < deadline, "the run never renamed the list"
        time.sleep(0.002)
    return proc, time.monotonic()
