"""A web server's running parent process, from /proc: did a graceful reload really take?

``nginx -s reload`` and ``apache2ctl graceful`` only signal the parent and
exit 0. The parent then reads its configuration again; nginx keeps its old
workers if that fails, Apache's parent exits (a ``Listen`` on a taken port):
a sync would report success while the server does not trust the new list, or
is down. So the reload is confirmed:

* nginx forks a new generation of workers only once the new configuration is
  loaded, so a new child of the same parent confirms it; the old workers
  still take connections until the parent tells them to finish (about 0.1 s
  later; it retitles them ``worker process is shutting down``), so the
  reload is done once each of them is finishing or gone
  (:func:`confirmed_reload`);
* Apache's event MPM spawns children by itself, so a new child proves
  nothing there; its parent writes ``AH00489: ... configured -- resuming
  normal operations`` to the main error log once a graceful restart has
  loaded the configuration (whatever the ``LogLevel``), so that line, written
  after the reload by the same parent, confirms it (:func:`confirmed_by_log`).

Also here: finding a running process by its configuration file
(:func:`running_with`, for HAProxy).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from cfallow.errors import BackendError

from .base import quote


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


def finishing(pid: int) -> bool:
    """Has nginx's worker ``pid`` been told to finish (or is it gone)? nginx retitles it
    ``nginx: worker process is shutting down``; from then on it takes no new connection."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return not title or b"shutting down" in title


def confirmed_reload(
    reload: Callable[[], object],
    pid_file: Path | None,
    *,
    server: str,
    name: str,
    wait: float,
    log: logging.Logger,
) -> None:
    """Run ``reload`` and return once the parent in ``pid_file`` has a new child and
    each child it had before is finishing or gone (no worker of the old configuration
    takes a new connection).

    ``pid_file`` is None when the server's test output did not name one.

    Raises :class:`BackendError` when the parent exits, starts no new child, or
    leaves its old children taking connections, within ``wait`` seconds; warns
    (and returns) when the parent cannot be seen from here at all (no pid file:
    a server in a container, say).
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
        now = children(pid)
        started = bool(now - before)
        if started and all(finishing(kid) for kid in before & now):
            return
        if time.monotonic() >= deadline:
            if started:
                raise BackendError(
                    f"{server} started new workers but its old ones (parent pid {pid}) still "
                    f"take connections {wait:g} s after the reload"
                )
            raise BackendError(
                f"{server} did not take the new configuration: its parent process (pid {pid}) "
                f"started no new worker within {wait:g} s of the reload "
                f"({server}'s error log says why)"
            )
        time.sleep(0.05)


def _config_named(args: list[str], cwd: str, config: str) -> bool:
    """Does a command line load ``config`` with ``-f`` (the file, or a directory holding it)?"""
    want = os.path.realpath(config)
    for i, arg in enumerate(args[:-1]):
        if arg != "-f":
            continue
        named = os.path.realpath(os.path.join(cwd, args[i + 1]))
        if named == want or (os.path.isdir(named) and os.path.dirname(want) == named):
            return True
    return False


def running_with(program: str, config: str) -> int | None:
    """A pid of a running ``program`` (its process name) started with ``-f config``, or None.

    Read from /proc: the process name, then its command line and working
    directory (a relative ``-f``). Processes this one cannot see are not found.
    """
    try:
        names = sorted(int(n) for n in os.listdir("/proc") if n.isdigit())
    except OSError:
        return None
    for pid in names:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != program:
                continue
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:  # hidden (not dumpable, a sandbox): absolute paths still match
            cwd = "/"
        args = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
        if _config_named(args, cwd, config):
            return pid
    return None


_PID_IN_LOG = re.compile(r"\[pid (\d+)")


def log_end(path: Path) -> tuple[int, int] | None:
    """``(inode, size)`` of a log file, or None when it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size


def new_lines(path: Path, since: tuple[int, int]) -> list[str]:
    """The lines written to ``path`` after ``since`` (all of a new file after a rotation)."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_ino == since[0] and st.st_size >= since[1]:
                fh.seek(since[1])
            data = fh.read(1 << 20)
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()


def confirmed_by_log(
    reload: Callable[[], object],
    log_file: Path | None,
    pid_file: Path | None,
    *,
    notice: str,
    server: str,
    name: str,
    wait: float,
    log: logging.Logger,
) -> None:
    """Run ``reload`` and return once ``log_file`` has a ``notice`` line written after it.

    The line must come from the parent in ``pid_file`` when one runs (lines
    that name no pid are taken as its own); with none running, the reload
    starts one (``apache2ctl graceful`` does) and any parent's notice counts.
    Raises :class:`BackendError` when that parent exits, or no notice comes
    within ``wait`` seconds; warns (and returns) when there is no log file to
    read (``syslog:``, a pipe, a path this process cannot read).
    """
    pid = read_pid(pid_file) if pid_file is not None else None
    if pid is not None and not alive(pid):
        pid = None
    since = log_end(log_file) if log_file is not None else None
    reload()
    if log_file is None or since is None:
        log.warning(
            "%s: reload sent, not confirmed: no error log file to read %s's %s notice from (%s)",
            name,
            server,
            notice,
            log_file or "none named by the configuration test",
        )
        return
    deadline = time.monotonic() + wait
    while True:
        lines = new_lines(log_file, since)
        for line in lines:
            said = _PID_IN_LOG.search(line)
            if notice in line and (pid is None or said is None or said.group(1) == str(pid)):
                return
        if pid is not None and not alive(pid):
            raise BackendError(
                f"{server}'s parent process (pid {pid}) exited during the reload: {server} is "
                f"not running ({log_file}: {_errors(lines)})"
            )
        if time.monotonic() >= deadline:
            raise BackendError(
                f"{server} did not confirm the reload: no {notice} notice in {log_file} within "
                f"{wait:g} s of it ({_errors(lines)})"
            )
        time.sleep(0.05)


def _errors(lines: list[str]) -> str:
    return quote("\n".join(lines)) if lines else "nothing logged"
