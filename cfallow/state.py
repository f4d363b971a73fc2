"""The state directory: last-known-good list (atomic writes) and the run lock."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from cfallow.errors import LockTimeout, StateError, ValidationError
from cfallow.ranges import Ranges
from cfallow.validate import check_lists, parse_family

log = logging.getLogger("cfallow")
LKG_FILE = "last-known-good.json"
LOCK_FILE = "lock"


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` via a temp file in the same directory, fsync, rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
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


def flock_within(fd: int, timeout: float, poll: float = 0.05) -> bool:
    """Take an exclusive ``flock`` on ``fd``, waiting at most ``timeout`` s; ``False`` if not."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


class State:
    """Reads and writes ``DIR/last-known-good.json``; ``DIR/lock`` serialises runs."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def load(self) -> Ranges | None:
        """The last-known-good list, or ``None`` (absent, or unreadable: warned)."""
        path = self.dir / LKG_FILE
        try:
            raw = json.loads(path.read_text("utf-8"))
            ipv4 = parse_family(raw["ipv4"], 4, str(path))
            ipv6 = parse_family(raw["ipv6"], 6, str(path))
            check_lists(ipv4, ipv6)
            etag = raw.get("etag")
            fetched = raw.get("fetched_at")
            return Ranges(
                ipv4,
                ipv6,
                "live",
                raw.get("url") if isinstance(raw.get("url"), str) else None,
                etag if isinstance(etag, str) else None,
                float(fetched) if isinstance(fetched, (int, float)) else None,
            )
        except FileNotFoundError:
            return None
        except PermissionError:
            raise StateError(f"cannot read {path}: permission denied") from None
        except (
            ValueError,
            KeyError,
            TypeError,
            RecursionError,
            ValidationError,
            UnicodeDecodeError,
        ) as exc:
            log.warning(
                "ignoring unreadable state file %s (%s); no last-known-good list", path, exc
            )
            return None

    def save(self, ranges: Ranges) -> None:
        """Record a live list as last-known-good (atomically)."""
        doc = ranges.to_json()
        doc.pop("kind")
        try:
            self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            write_atomic(self.dir / LKG_FILE, json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            raise StateError(f"cannot write state in {self.dir}: {exc.strerror or exc}") from None

    @contextlib.contextmanager
    def lock(self, timeout: float) -> Iterator[None]:
        """Hold an exclusive ``flock``; wait at most ``timeout`` s, then :class:`LockTimeout`."""
        try:
            self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateError(f"cannot open lock in {self.dir}: {exc.strerror or exc}") from None
        try:
            if not flock_within(fd, timeout):
                raise LockTimeout(
                    f"another cfallow run holds {self.dir / LOCK_FILE}; gave up after {timeout:g} s"
                )
            yield
        finally:
            os.close(fd)
