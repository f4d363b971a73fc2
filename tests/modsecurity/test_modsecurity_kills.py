"""SIGKILL ``cfallow sync`` (modsecurity backend) at random instants; the next run converges.

Per server (Apache + mod_security2 + CRS, nginx + libmodsecurity 3 + CRS),
``KILLS`` syncs alternate the pre-2021 list and today's, each killed at a
random instant: half over a changing run's whole time, half after the new
list was renamed into place (between the file and the server). Then one
``cfallow sync`` exits 0, no reload is owed, and the server in memory holds
the new list: a request from 104.28.0.5 (Cloudflare's only before 2021) is
judged as an address in the list (429) exactly when that list is the
pre-2021 one, and a visitor behind an edge is judged as the visitor.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from support.modsecurity.lab import BLOCKED, ModsecApache, ModsecNginx
from support.realip.faults import NEW_ONLY, Runs, ended
from support.realip.lab import CF_SRC, WARP_SRC, in_pair, running, sig

pytestmark = pytest.mark.root
KILLS = int(os.environ.get("CFALLOW_MODSEC_KILLS", "4"))
LABS = {"nginx": ModsecNginx, "apache": ModsecApache}
OTHER = {"old": "new", "new": "old"}
WARP_STATUS = {"old": 429, "new": 200}


@pytest.fixture(params=sorted(LABS))
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    cls = LABS[request.param]
    with (
        in_pair() as (srv_ns, cli_ns),
        running(cls(tmp_path / request.param, ns=srv_ns, client_ns=cli_ns)) as srv,
    ):
        srv.sync_realip()
        srv.use_list()
        yield srv


def era_of(srv: Any) -> str:
    return "new" if NEW_ONLY in srv.list_path.read_text() else "old"


def holds(srv: Any, era: str, where: str) -> None:
    got = srv.status("/w", src=WARP_SRC)
    assert got == WARP_STATUS[era], f"{where}: not the {era} list"
    assert srv.status("/v", src=CF_SRC, header=BLOCKED) == 403, where


def start_until_renamed(runs: Runs, limit: float) -> tuple[subprocess.Popen[bytes], float]:
    """Start a sync; return once it renamed the new list into place (or ended), and when."""
    unrenamed = sig(runs.server.list_path)
    proc = runs.start()
    deadline = time.monotonic() + limit
    while sig(runs.server.list_path) == unrenamed and proc.poll() is None:
        assert time.monotonic() < deadline, "the run never renamed the list"
        time.sleep(0.002)
    return proc, time.monotonic()


def test_sigkill_at_random_instants_then_the_next_run_converges(
    lab: Any, tmp_path: Path, httpserver: HTTPServer
) -> None:
    seed = int(os.environ.get("CFALLOW_PROOF_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    runs = Runs(lab, tmp_path, httpserver, gate=False)
    runs.publish("old")
    assert runs.inproc("-q", "sync") == 0
    took, window = [], []
    for era in ("new", "old"):  # one whole changing run, timed from its start and its rename
        runs.publish(era)
        start = time.monotonic()
        proc, renamed = start_until_renamed(runs, 120)
        assert ended(proc) == 0
        took.append(time.monotonic() - start)
        window.append(time.monotonic() - renamed)
    span, after = 1.2 * max(took), 1.2 * max(window)
    prev, outcomes = "old", {}
    for i in range(KILLS):
        where = f"{lab.kind} kill {i} (seed {seed})"
        new = OTHER[prev]
        runs.publish(new)
        before = lab.state()
        if i % 2:
            proc = start_until_renamed(runs, 10 * span + 10)[0]
            time.sleep(rng.uniform(0, after))
        else:
            proc = runs.start()
            time.sleep(rng.uniform(0, span))
        os.kill(proc.pid, signal.SIGKILL)
        code = ended(proc)
        key = f"{'ended' if code == 0 else 'killed'}, file {era_of(lab)}" + (
            ", reload owed" if runs.pending.exists() else ""
        )
        outcomes[key] = outcomes.get(key, 0) + 1
        assert runs.inproc("-q", "sync") == 0, where
        assert era_of(lab) == new and not runs.pending.exists(), where
        lab.reloaded(before)  # old workers gone (support's settled() keys on the server name)
        holds(lab, new, where)
        prev = new
    print(
        f"{lab.kind}: {KILLS} kills within {span:.2f} s / {after:.2f} s: {outcomes} (seed {seed})"
    )
