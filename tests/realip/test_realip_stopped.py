"""A real-IP run stopped between the rename and the reload, on each real server.

The run is held by its test command right after the new list (today's) was
renamed into place over the pre-2021 one, then killed. Requests over a veth
pair prove what the server holds in memory: ``CF-Connecting-IP`` sent from
``104.28.0.5`` (in ``104.16.0.0/12``, which the 2021 change gave up) is
believed under the old list and not under today's.

* SIGKILL: the new bytes are on disk, the server still trusts the old list.
  ``status`` must show it (exit 3), and ``sync`` must finish the reload (a run
  comparing bytes alone finds them equal and exits 0 forever).
* SIGTERM (to cfallow only, as ``kill PID``): the run finishes the apply, then
  ends by the signal; nothing is owed afterwards.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support.cli_helpers import unwrapped
from support.realip.apache import Apache
from support.realip.caddy import Caddy
from support.realip.faults import Runs, ended, settled
from support.realip.haproxy import Haproxy
from support.realip.lab import CF_SRC, CLIENT, WARP_SRC, Server, in_pair, running
from support.realip.nginx import Nginx

pytestmark = pytest.mark.root
SERVERS: dict[str, type[Server]] = {
    "nginx": Nginx,
    "haproxy": Haproxy,
    "apache": Apache,
    "caddy": Caddy,
}


@pytest.fixture(params=sorted(SERVERS))
def paired(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    cls = SERVERS[request.param]
    with (
        in_pair() as (srv_ns, cli_ns),
        running(cls(tmp_path / request.param, ns=srv_ns, client_ns=cli_ns)) as srv,
    ):
        yield srv


def on_old_list(srv: Server, runs: Runs) -> tuple[int, frozenset[int]]:
    runs.publish("old")
    before = srv.state()
    done = runs.cli("sync")
    assert done.rc == 0, done.err
    settled(srv, before)
    assert srv.seen_as(WARP_SRC) == CLIENT  # the old list trusts 104.16.0.0/12
    return srv.state()


def record(srv: Server) -> Path:
    return srv.list_path.with_name(f".{srv.list_path.name}.cfallow-reload")


def test_sigkill_after_the_rename_is_drift_and_sync_finishes_the_reload(
    paired: Server, tmp_path: Path, httpserver: HTTPServer
) -> None:
    srv = paired
    runs = Runs(srv, tmp_path, httpserver, gate=True)
    gen = on_old_list(srv, runs)
    runs.publish("new")
    proc = runs.held()
    os.kill(proc.pid, signal.SIGKILL)
    runs.open_gate()
    assert ended(proc) == -signal.SIGKILL
    assert "104.24.0.0/14" in srv.list_path.read_text()  # the new bytes are on disk
    assert srv.seen_as(WARP_SRC) == CLIENT  # and the server still trusts the old list

    status = runs.cli("status")
    assert status.rc == 3, (status.rc, status.out, status.err)
    said = unwrapped(status.out + status.err)  # the status table wraps its notes
    if srv.name == "haproxy":
        assert "the running haproxy's ACL for" in said and "is not the file's" in said, said
    else:
        assert "has not been confirmed to load" in said, said
        assert record(srv).exists()

    done = runs.cli("sync")
    assert done.rc == 0, done.err
    settled(srv, gen)
    assert srv.seen_as(WARP_SRC) == WARP_SRC  # 104.28.0.0/14 no longer trusted
    assert srv.seen_as(CF_SRC) == CLIENT
    assert not record(srv).exists()
    again = runs.cli("status")
    assert again.rc == 0, again.out + again.err


def test_sigterm_after_the_rename_finishes_the_apply(
    paired: Server, tmp_path: Path, httpserver: HTTPServer
) -> None:
    srv = paired
    runs = Runs(srv, tmp_path, httpserver, gate=True)
    gen = on_old_list(srv, runs)
    runs.publish("new")
    proc = runs.held()
    os.kill(proc.pid, signal.SIGTERM)  # cfallow only: its test command carries on
    runs.open_gate()
    assert ended(proc) == -signal.SIGTERM  # ended by the signal, once the apply was done
    assert "104.24.0.0/14" in srv.list_path.read_text()
    assert not record(srv).exists()
    settled(srv, gen)
    assert srv.seen_as(WARP_SRC) == WARP_SRC
    assert srv.seen_as(CF_SRC) == CLIENT
    status = runs.cli("status")
    assert status.rc == 0, status.out + status.err
