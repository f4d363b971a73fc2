"""File-system primitives every part of cfallow shares: atomic writes and bounded locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from pathlib import Path

__all__ = ["flock_within", "lock_holder", "write_atomic"]

log = logging.getLogger("cfallow")


def write_atomic(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temp file in the same directory, fsync, rename."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    import tempfile  # only writers pay for it (random, shutil): a no-change run writes nothing

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            # on the descriptor: a path could be swapped for a symlink in between
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def flock_within(
    fd: int, timeout: float, poll: float = 0.05, *, what: str | None = None, after: float = 1.0
) -> bool:
    """Take an exclusive ``flock`` on ``fd``, waiting at most ``timeout`` s; ``False`` if not.

    With ``what`` (``the lock /var/lib/cfallow/lock``), a wait longer than ``after``
    seconds logs one line: ``waiting for WHAT, held by pid N (up to T s)``.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        now = time.monotonic()
        if now >= deadline:
            return False
        if what is not None and now - start >= after:
            holder = lock_holder(fd)
            by = f"pid {holder}" if holder is not None else "another process"
            log.info("waiting for %s, held by %s (up to %s s)", what, by, f"{timeout:g}")
            what = None
        time.sleep(poll)


def lock_holder(fd: int) -> int | None:
    """The pid holding a ``flock`` on the file open as ``fd`` (from ``/proc/locks``)."""
    ino = os.fstat(fd).st_ino
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF" (blocked waiters: "1: -> FLOCK ...")
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        dev_ino = fields[5].split(":")
        if len(dev_ino) == 3 and dev_ino[2] == str(ino) and fields[4].isdigit():
            pid = int(fields[4])
            if pid != os.getpid():
                return pid
    return None
