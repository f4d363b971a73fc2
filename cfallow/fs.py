"""File-system primitives every part of cfallow shares: atomic writes and bounded locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["flock_within", "write_atomic"]


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
    fd: int,
    timeout: float,
    poll: float = 0.05,
    *,
    on_wait: Callable[[], None] | None = None,
    after: float = 1.0,
) -> bool:
    """Take an exclusive ``flock`` on ``fd``, waiting at most ``timeout`` s; ``False`` if not.

    ``on_wait`` is called once if the lock is still taken ``after`` seconds in (a
    progress line: who holds it, for how long this run waits).
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
        if on_wait is not None and now - start >= after:
            on_wait()
            on_wait = None
        time.sleep(poll)
