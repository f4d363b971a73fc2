"""The state directory: last-known-good list (atomic writes) and the run lock."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cfallow.errors import LockTimeout, StateError, ValidationError
from cfallow.fetch.ranges import Ranges
from cfallow.fetch.validate import check_lists, parse_family
from cfallow.fs import flock_within, write_atomic

log = logging.getLogger("cfallow")
LKG_FILE = "last-known-good.json"
LOCK_FILE = "lock"
CANDIDATE_FILE = "last-known-good.json.new"
ANCHOR_FILE = "accepted.json"  # the list an operator last accepted (--force, cfallow accept)
MAX_FILE = 1 << 20  # the same cap as a response (http.MAX_BODY)


class _Unusable(Exception):
    """A state file that is there but is not one cfallow may read."""


def _open_regular(name: str, dir_fd: int, flags: int, mode: int = 0o600) -> int:
    """Open ``name`` in ``dir_fd``: never through a symlink, never blocking, regular only."""
    flags |= os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Unusable("a symlink, not a regular file") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _Unusable("not a regular file")
    return fd


def read_capped(name: str, dir_fd: int, limit: int = MAX_FILE) -> bytes:
    """At most ``limit`` bytes of the regular file ``name`` (:class:`_Unusable` if longer)."""
    fd = _open_regular(name, dir_fd, os.O_RDONLY)
    try:
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        raise _Unusable(f"over the {limit >> 20} MiB limit")
    finally:
        os.close(fd)


class State:
    """Reads and writes ``DIR/last-known-good.json``; ``DIR/lock`` serialises runs.

    Every file here is opened without following symlinks and only if it is a
    regular file; the directory must not be writable by anyone but its owner
    (root or the user running cfallow).
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _open_dir(self, *, create: bool) -> int:
        """An fd on the state directory, after checking who can write to it."""
        if create:
            self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        others = mode & 0o002 or (mode & 0o020 and st.st_gid != 0)
        if others or st.st_uid not in (0, os.geteuid()):
            os.close(fd)
            raise StateError(
                f"refusing state directory {self.dir}: writable by others (mode {mode:04o}, "
                f"owner uid {st.st_uid}); make it owned by root and not group/world-writable"
            )
        return fd

    def load(self) -> Ranges | None:
        """The last-known-good list, or ``None`` (absent, or unreadable: warned)."""
        return self._load(LKG_FILE, "no last-known-good list")

    def load_anchor(self) -> Ranges | None:
        """The list an operator last accepted, or ``None`` (none yet, as in a state
        directory from before there was one, or unreadable: warned): the bundled
        snapshot is then the anchor."""
        return self._load(ANCHOR_FILE, "the bundled snapshot is the accepted list")

    def save_anchor(self, ranges: Ranges) -> None:
        """Record ``ranges`` as the accepted list (atomically)."""
        doc = ranges.to_json()
        doc.pop("kind")
        try:
            self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            write_atomic(self.dir / ANCHOR_FILE, json.dumps(doc, indent=2) + "\n", mode=0o600)
        except OSError as exc:
            raise StateError(
                f"cannot record the accepted list in {self.dir}: {_why(exc)}"
            ) from None

    def _load(self, name: str, instead: str) -> Ranges | None:
        path = self.dir / name
        try:
            dir_fd = self._open_dir(create=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {path}: {_why(exc)}") from None
        try:
            raw = json.loads(read_capped(name, dir_fd).decode("utf-8"))
            return _ranges(raw, path)
        except FileNotFoundError:
            return None
        except PermissionError:
            hint = _ROOT_HINT if os.geteuid() != 0 else ""
            raise StateError(f"cannot read {path}: permission denied{hint}") from None
        except OSError as exc:
            raise StateError(f"cannot read {path}: {_why(exc)}") from None
        except (
            _Unusable,
            ValueError,
            KeyError,
            TypeError,
            RecursionError,
            ValidationError,
            UnicodeDecodeError,
        ) as exc:
            log.warning("ignoring unreadable state file %s (%s); %s", path, exc, instead)
            return None
        finally:
            os.close(dir_fd)

    def stage(self, ranges: Ranges) -> None:
        """Write the candidate last-known-good file (before anything is applied).

        A full or read-only state directory fails here, so such a run stops
        before any backend changes; :meth:`commit` then only renames.
        """
        doc = ranges.to_json()
        doc.pop("kind")
        try:
            self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.lstat(self.dir / LKG_FILE).st_mode):
                    raise IsADirectoryError(errno.EISDIR, f"{LKG_FILE} is a directory")
            write_atomic(self.dir / CANDIDATE_FILE, json.dumps(doc, indent=2) + "\n", mode=0o600)
        except OSError as exc:
            raise StateError(f"cannot write state in {self.dir}: {_why(exc)}") from None

    def commit(self) -> None:
        """Rename the staged candidate over the last-known-good file (atomically)."""
        try:
            os.replace(self.dir / CANDIDATE_FILE, self.dir / LKG_FILE)
            dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StateError(
                f"cannot record the last-known-good list in {self.dir}: {_why(exc)}"
            ) from None

    def save(self, ranges: Ranges) -> None:
        """Record a live list as last-known-good: :meth:`stage` then :meth:`commit`."""
        self.stage(ranges)
        self.commit()

    @contextlib.contextmanager
    def lock(self, timeout: float) -> Iterator[None]:
        """Hold an exclusive ``flock``; wait at most ``timeout`` s, then :class:`LockTimeout`."""
        where = f"cannot open lock in {self.dir}"
        try:
            dir_fd = self._open_dir(create=True)
        except OSError as exc:
            raise StateError(f"{where}: {_why(exc)}") from None
        try:
            fd = _open_regular(LOCK_FILE, dir_fd, os.O_RDWR | os.O_CREAT)
        except _Unusable as exc:
            raise StateError(f"{where}: {self.dir / LOCK_FILE} is {exc}") from None
        except OSError as exc:
            raise StateError(f"{where}: {_why(exc)}") from None
        finally:
            os.close(dir_fd)
        try:
            _private(fd)
            what = f"the lock {self.dir / LOCK_FILE}"
            log.debug("taking %s (waiting up to %g s)", what, timeout)
            if not flock_within(fd, timeout, what=what):
                raise LockTimeout(
                    f"another cfallow run holds {self.dir / LOCK_FILE}; gave up after {timeout:g} s"
                )
            yield
        finally:
            os.close(fd)


_ROOT_HINT = " (cfallow changes the firewall: run it as root, e.g. with sudo)"


def _why(exc: OSError) -> str:
    """``exc`` in words; for a non-root user denied access, the hint to run as root."""
    text = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0:
        return text + _ROOT_HINT
    return text


def _private(fd: int) -> None:
    """Mode 0600 on a lock made by an older version (0644 let anyone ``flock`` it)."""
    st = os.fstat(fd)
    if stat.S_IMODE(st.st_mode) != 0o600 and st.st_uid == os.geteuid():
        os.fchmod(fd, 0o600)


def _ranges(raw: Any, path: Path) -> Ranges:
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
