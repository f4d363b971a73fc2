"""Processes around fail2ban tests: a ``cfallow sync`` started in the background, its children."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def config_file(socket: Path, conf: Path, tmp: Path) -> Path:
    """A cfallow config with only the fail2ban backend, on a private server."""
    path = tmp / "config.toml"
    path.write_text(f'[backends.fail2ban]\nsocket = "{socket}"\nconfig_dir = "{conf}"\n')
    return path


def start_sync(config: Path, state_dir: Path, tmpdir: Path) -> subprocess.Popen[str]:
    """``cfallow sync --source bundled`` as a background process with its own TMPDIR."""
    argv = [sys.executable, "-m", "cfallow", "--config", str(config)]
    argv += ["--state-dir", str(state_dir), "sync", "--source", "bundled"]
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def processes() -> list[tuple[int, int, list[str]]]:
    """``(pid, ppid, argv)`` of every process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = [a.decode() for a in fh.read().split(b"\0") if a]
        except (OSError, ValueError, IndexError):
            continue
        found.append((int(entry), ppid, argv))
    return found


def child_running(pid: int, word: str) -> bool:
    """Does a child of ``pid`` have ``word`` in its argv?"""
    return any(ppid == pid and word in argv for _, ppid, argv in processes())


def wait_for(cond: Callable[[], bool], timeout: float) -> bool:
    """Poll ``cond`` every 2 ms until true or ``timeout`` s passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.002)
    return False
