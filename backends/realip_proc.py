"""A web server's running parent process, from /proc: did a graceful reload really take?

``nginx -s reload`` only signals the master and exits 0. The master then
reads its configuration again and keeps its old workers if that fails: a
sync would report success while nginx does not trust the new list. nginx
forks a new generation of workers only once the new configuration is loaded,
so a new child of the same parent confirms the reload. (Not Apache: its event
MPM spawns children by itself, so a new child proves nothing there.)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from cfallow.errors import BackendError


def read_pid(path: Path) -> int | None:
    """The pid in a pid file, or None when there is none (or it is not a pid)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def children(pid: int) -> frozenset[int]:
    """The pids whose parent is ``pid`` (read from every /proc/N/stat, which anyone may read)."""
    kids: set[int] = set()
    try:
        names = os.listdir("/proc")
    except OSError:
        return frozenset()
    for name in names:
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        # "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
        rest = stat.rsplit(")", 1)[-1].split()
        if len(rest) > 1 and rest[1] == str(pid):
            kids.add(int(name))
    return frozenset(kids)


def alive(pid: int) -> bool:
    """Is ``pid`` a process this process can see?"""
    return os.path.exists(f"/proc/{pid}")


def confirmed_reload(
    reload: Callable[[], object],
    pid_file: Path | None,
    *,
    server: str,
    name: str,
    wait: float,
    log: logging.Logger,
) -> None:
    """Run ``reload`` and return once the parent in ``pid_file`` has a new child.

    ``pid_file`` is None when the server's test output did not name one.

    Raises :class:`BackendError` when the parent exits or starts no new child
    within ``wait`` seconds; warns (and returns) when the parent cannot be seen
    from here at all (no pid file: a server in a container, say).
    """
    pid = read_pid(pid_file) if pid_file is not None else None
    before = children(pid) if pid is not None and alive(pid) else frozenset()
    reload()
    if pid is None or not before:
        if pid is not None:
            where = f"pid {pid}"
        else:
            where = f"no pid in {pid_file}" if pid_file else "no pid file"
        log.warning(
            "%s: reload sent, not confirmed: cannot see %s's parent process and its workers (%s)",
            name,
            server,
            where,
        )
        return
    deadline = time.monotonic() + wait
    while True:
        if not alive(pid):
            raise BackendError(
                f"{server}'s parent process (pid {pid}) exited during the reload "
                f"({server}'s error log says why): {server} is not running"
            )
        if children(pid) - before:
            return
        if time.monotonic() >= deadline:
            raise BackendError(
                f"{server} did not take the new configuration: its parent process (pid {pid}) "
                f"started no new worker within {wait:g} s of the reload "
                f"({server}'s error log says why)"
            )
        time.sleep(0.05)
