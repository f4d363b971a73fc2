"""A verify leaves no namespace, interface, process or temp file behind, also when killed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support import need_root, need_tool, ns_exec, sh
from support.verify_host import NFT_DROP, host, scratch_namespaces, scratch_temp

pytestmark = [pytest.mark.xdist_group("verify"), pytest.mark.root]

CONFIG = '[backends.iptables]\nports = [80, 443]\nmode = "lockdown"\nvariant = "nft"\n'


def _helpers() -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"cfverify-" in cmd:  # a command run in a scratch namespace
            out.append(int(pid))
    return out


def _wait_for(cond: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def _nothing_left(h_ns: str, links: str) -> None:
    _wait_for(lambda: not _helpers(), 5)
    assert scratch_namespaces() == []
    assert scratch_temp() == []
    assert sh(ns_exec(h_ns, "ip", "-o", "link")) == links  # no interface added to the host


@pytest.fixture(autouse=True)
def _tools() -> None:
    need_root()
    need_tool("nft", "nsenter")


def test_a_finished_verify_leaves_nothing(tmp_path: Path) -> None:
    with host(tmp_path) as h:
        links = sh(ns_exec(h.ns, "ip", "-o", "link"))
        assert h.cfallow(CONFIG, "sync", "--verify", "--source", "bundled").returncode == 0
        assert h.cfallow(CONFIG, "verify").returncode == 0
        h.nft(NFT_DROP)
        assert h.cfallow(CONFIG, "verify").returncode == 5
        _nothing_left(h.ns, links)


def test_sigterm_mid_run_removes_the_scratch(tmp_path: Path) -> None:
    with host(tmp_path) as h:
        links = sh(ns_exec(h.ns, "ip", "-o", "link"))
        proc = h.popen(CONFIG, "sync", "--verify", "--dry-run", "--source", "bundled")
        _wait_for(lambda: scratch_namespaces(running=True) or proc.poll() is not None)
        assert proc.poll() is None, "the run ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "terminated" in err
        _nothing_left(h.ns, links)


def test_sigkill_leftovers_are_removed_by_the_next_run(tmp_path: Path) -> None:
    with host(tmp_path) as h:
        links = sh(ns_exec(h.ns, "ip", "-o", "link"))
        proc = h.popen(CONFIG, "sync", "--verify", "--dry-run", "--source", "bundled")
        _wait_for(lambda: len(scratch_namespaces(running=True)) == 2 or proc.poll() is not None)
        proc.kill()
        proc.wait()
        left = scratch_namespaces()
        assert len(left) == 2 and scratch_temp(), "a killed run cannot clean up"
        res = h.cfallow(CONFIG, "sync", "--verify", "--dry-run", "--source", "bundled")
        assert res.returncode == 0, res.stderr
        _nothing_left(h.ns, links)
        for name in left:
            assert (
                subprocess.run(
                    ["ip", "netns", "pids", name], capture_output=True, check=False
                ).returncode
                != 0
            )
