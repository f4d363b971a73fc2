"""A run stopped between the drop-in's rename and the live removals leaks nothing for good.

The 2021 change: ``104.16.0.0/12`` leaves Cloudflare's list. A sync renames the
new drop-in (without it) into place and is then stopped (SIGTERM, or a
``delignoreip`` that fails) before deleting it from jail ``alpha``'s live list.
The next ``status`` reports it (exit 3), the next ``sync`` or ``remove`` takes
it out, and an address from the part Cloudflare gave up is really banned
again. All against a private fail2ban-server.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cfallow.backends.fail2ban.socket import ServerSocket
from netaddr import IPNetwork
from support import need_root, need_tool
from support.cfdata import CURRENT, OLD, REMOVED_2021
from support.cli_helpers import run_proc
from support.fail2ban.harness import F2bHarness, running_server
from support.fail2ban.procs import child_running, config_file, start_sync, wait_for
from support.fail2ban.server import DEFAULT_IGNORE, F2bServer, nets

from cfallow.engine import run_backend

pytestmark = pytest.mark.root

(GONE,) = REMOVED_2021
#: In 104.16.0.0/12 but in none of today's ranges (104.16.0.0/13, 104.24.0.0/14).
GIVEN_UP = "104.30.1.2"
OUTSIDE = "203.0.113.50"
BASE_ALPHA = nets(DEFAULT_IGNORE)


@pytest.fixture
def f2b(tmp_path: Path) -> Iterator[F2bServer]:
    need_root()
    need_tool("fail2ban-client", "fail2ban-server", "ip")
    with running_server(tmp_path / "f2b", "f2bleak") as srv:
        yield srv


def banned_after(srv: F2bServer, address: str) -> bool:
    """Failed logins from ``address``, then from an outside marker: is ``address`` banned?"""
    srv.client("unban", "--all")
    srv.fail("alpha", address, times=5)
    srv.fail("alpha", OUTSIDE)
    # Lines are read in order: once the marker is banned, the address's lines were seen.
    assert srv.wait_banned("alpha", OUTSIDE), "the marker address was not banned"
    return address in srv.banned("alpha")


def cli(h: F2bHarness, config: Path, *args: str) -> tuple[int, str]:
    r = run_proc("--config", str(config), "--state-dir", str(h.state_dir), *args)
    return r.rc, r.out + r.err


def assert_leaked(srv: F2bServer) -> None:
    assert GONE in srv.live("alpha"), "the scenario did not leave the entry live"
    assert all(GONE not in r for r in srv.dropin_ranges().values())
    assert not banned_after(srv, GIVEN_UP), "control: a leaked entry keeps the address unbanned"


def assert_repaired(srv: F2bServer, want: frozenset[IPNetwork]) -> None:
    assert srv.live("alpha") == want
    assert banned_after(srv, GIVEN_UP), f"{GIVEN_UP} is still ignored"
    srv.reload()
    assert srv.live("alpha") == want


def next_runs_repair(h: F2bHarness, config: Path, verb: str) -> None:
    rc, out = cli(h, config, "status", "--source", "bundled")
    assert rc == 3, out
    assert "alpha: live list keeps 1 range(s) cfallow added" in out and str(GONE) in out, out
    rc, out = cli(h, config, verb, *(("--source", "bundled") if verb == "sync" else ()))
    assert rc == 0, out
    want = BASE_ALPHA | CURRENT if verb == "sync" else BASE_ALPHA
    assert_repaired(h.srv, want)
    rc, out = cli(h, config, "status", "--source", "bundled")
    assert rc == (0 if verb == "sync" else 3), out


@pytest.mark.parametrize("verb", ["sync", "remove"])
def test_failing_delignoreip(
    f2b: F2bServer, tmp_path: Path, verb: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = F2bHarness(f2b, tmp_path / "state")
    assert run_backend(h.backend(), OLD, dry_run=False).error is None
    real = ServerSocket.commands

    def refuse_delignoreip(self: ServerSocket, batch: list[list[str]]) -> list[tuple[int, object]]:
        # The server really gets every other command; each delignoreip fails.
        sent = iter(real(self, [w for w in batch if "delignoreip" not in w]))
        refused = (1, RuntimeError("refused"))
        return [refused if "delignoreip" in w else next(sent) for w in batch]

    monkeypatch.setattr(ServerSocket, "commands", refuse_delignoreip)
    failed = run_backend(h.backend(), CURRENT, dry_run=False)
    monkeypatch.undo()
    assert failed.error is not None and "refused" in failed.error
    assert_leaked(f2b)
    next_runs_repair(h, config_file(f2b.socket, f2b.conf, tmp_path), verb)


def sigterm_after_rename(h: F2bHarness, config: Path, tmpdir: Path) -> bool:
    """SIGTERM a sync between the drop-in's rename and its first live command.

    The server is stopped (SIGSTOP) while the run checks its candidate with
    ``fail2ban-client -t`` (offline), so the run renames the drop-in and then
    blocks on its first command to the server. False if the moment was missed.
    """
    srv = h.srv
    old = srv.dropin.read_text()
    proc = start_sync(config, h.state_dir, tmpdir)
    assert srv.pid is not None
    try:
        if not wait_for(lambda: child_running(proc.pid, "-t") or proc.poll() is not None, 30):
            raise AssertionError("no fail2ban-client -t seen")
        os.kill(srv.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: srv.dropin.read_text() != old or proc.poll() is not None, 30)
            time.sleep(0.3)
            if proc.poll() is not None:
                return False
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        finally:
            os.kill(srv.pid, signal.SIGCONT)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    return proc.returncode == -signal.SIGTERM


@pytest.mark.parametrize("verb", ["sync", "remove"])
def test_sigterm_between_rename_and_live_removal(f2b: F2bServer, tmp_path: Path, verb: str) -> None:
    h = F2bHarness(f2b, tmp_path / "state")
    config = config_file(f2b.socket, f2b.conf, tmp_path)
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    for _ in range(3):
        f2b.reset()
        assert run_backend(h.backend(), OLD, dry_run=False).error is None
        if sigterm_after_rename(h, config, tmpdir):
            break
    else:
        pytest.fail("three runs finished before they could be stopped after the rename")
    assert_leaked(f2b)
    next_runs_repair(h, config, verb)
    assert list(tmpdir.iterdir()) == [], "a run left files in TMPDIR"
    assert list((h.state_dir / "fail2ban-tmp").iterdir()) == []
    if verb == "remove":
        assert not (h.state_dir / "fail2ban-live.json").exists()
