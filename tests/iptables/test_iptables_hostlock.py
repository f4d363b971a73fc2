"""Two runs with different state directories never both insert cfallow's jump.

The state directory's lock does not serialise them; the host-wide firewall
lock (``/run/cfallow.lock``, here a private path through
``$CFALLOW_FIREWALL_LOCK``) is held around each apply's read and write.
Real CLI processes in a namespace, both variants. To make the race certain
rather than lucky, the race test puts a ``*-save`` on ``PATH`` that runs the
real one and then waits a second: two runs started together then both read
the table before either writes (without the lock, the second jump appears
every time).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import namespace, ns_exec
from support.iptables.helpers import VARIANTS, Fw, legacy_bin

pytestmark = pytest.mark.root
CONF = "[backends.iptables]\n"


@pytest.fixture(params=VARIANTS)
def fw(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fw]:
    with namespace("iph") as ns:
        yield Fw(ns, request.param, tmp_path)


def slow_saves(where: Path) -> Path:
    """A directory of ``*-save`` tools that run the real one, then sleep a second."""
    where.mkdir(exist_ok=True)
    for name in ("iptables", "ip6tables"):
        for variant in ("nft", "legacy"):
            real = shutil.which(f"{name}-{variant}-save")
            assert real is not None
            tool = where / f"{name}-{variant}-save"
            tool.write_text(f'#!/bin/sh\n{real} "$@"\nrc=$?\nsleep 1\nexit $rc\n')
            tool.chmod(0o755)
    return where


def start(fw: Fw, state: str, *args: str, slow: bool = False) -> subprocess.Popen[str]:
    conf = fw.tmp / "config.toml"
    conf.write_text(CONF)
    path = os.environ["PATH"]
    if slow:
        path = f"{slow_saves(fw.tmp / 'slow')}:{path}"
    if fw.variant == "legacy":
        path = f"{legacy_bin(fw.tmp / 'legacy-bin')}:{path}"
    argv = ["/usr/bin/env", f"PATH={path}", sys.executable, "-m", "cfallow", "--config", str(conf)]
    argv += ["--state-dir", str(fw.tmp / state), *args]
    if args[0] == "sync":
        argv += ["--source", "bundled"]
    env = {**os.environ, "XTABLES_LOCKFILE": fw.lock, "CFALLOW_FIREWALL_LOCK": str(fw.tmp / "fw")}
    return subprocess.Popen(
        ns_exec(fw.ns, *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def finish(proc: subprocess.Popen[str]) -> None:
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 0, err


def test_concurrent_runs_with_different_state_dirs_leave_one_jump(fw: Fw) -> None:
    for attempt in range(3):
        runs = [start(fw, f"state-{attempt}-{i}", "sync", slow=True) for i in range(2)]
        for proc in runs:
            finish(proc)
        assert len(fw.jumps(4)) == 3 and len(fw.jumps(6)) == 3, (attempt, fw.both())
        finish(start(fw, "state-rm", "remove"))
        assert fw.jumps(4) == [] and fw.jumps(6) == []


def test_a_sync_does_not_write_while_another_run_holds_the_lock(fw: Fw) -> None:
    before = fw.both()
    fd = os.open(fw.tmp / "fw", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = start(fw, "state", "sync")
        time.sleep(3)  # long enough to plan and reach the write
        assert proc.poll() is None and fw.both() == before
    finally:
        os.close(fd)
    finish(proc)
    assert len(fw.jumps(4)) == 3
    assert os.stat(fw.tmp / "fw").st_mode & 0o777 == 0o600
