"""Private copies of the Fail2Ban configuration tree, for ``fail2ban-client -d`` / ``-t``.

A copy holds the admin's tree with cfallow's drop-in left out or replaced by
a candidate. Copying is bounded: symbolic links are copied as links (a link
to ``/dev/zero`` is not read), anything that is not a regular file, a
directory or a link (a FIFO, a device, a socket) is skipped, and the whole
copy is capped at :data:`MAX_BYTES`.

Copies live in ``STATE_DIR/fail2ban-tmp`` (TMPDIR if the state directory
cannot be written), each locked with ``flock`` by the run that made it. A run
killed by SIGTERM leaves its copy behind; the next run removes every copy
whose lock nobody holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cfallow.errors import BackendError

PREFIX = "cfallow-f2b-"
LOCK = ".lock"
MAX_BYTES = 32 << 20
_CHUNK = 1 << 16


@dataclass
class Copy:
    """A finished copy: its root, and the special files left out."""

    path: Path
    skipped: list[str] = field(default_factory=list)


def tmp_root(state_dir: Path) -> Path:
    """Where copies go: ``STATE_DIR/fail2ban-tmp``, else TMPDIR."""
    root = state_dir / "fail2ban-tmp"
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.access(root, os.W_OK | os.X_OK):
            return root
    except OSError:
        pass
    return Path(tempfile.gettempdir())


def sweep(root: Path) -> None:
    """Remove copies left by runs that died (their lock is free)."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            if not entry.name.startswith(PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
            if entry.stat(follow_symlinks=False).st_uid == os.geteuid():  # ours only
                _sweep_one(Path(entry.path))


def _sweep_one(top: Path) -> None:
    try:
        fd = os.open(top / LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        # Killed between mkdtemp and taking the lock: give such a run a minute.
        with contextlib.suppress(OSError):
            if time.time() - top.lstat().st_mtime > 60:
                shutil.rmtree(top, ignore_errors=True)
        return
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # a live run's copy
    finally:
        os.close(fd)
    shutil.rmtree(top, ignore_errors=True)


class _Budget:
    def __init__(self, source: Path, limit: int) -> None:
        self.source = source
        self.left = limit
        self.skipped: list[str] = []

    def copy(self, src: str, dst: str) -> str:
        st = os.lstat(src)
        if not stat.S_ISREG(st.st_mode):
            self.skipped.append(os.path.relpath(src, self.source))
            return dst
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fin, open(dst, "wb") as fout:
            while chunk := fin.read(_CHUNK):
                self.left -= len(chunk)
                if self.left < 0:
                    raise BackendError(
                        f"{self.source} holds more than {MAX_BYTES >> 20} MiB of files "
                        "(cfallow copies the configuration to check its drop-in): "
                        "move what Fail2Ban does not read out of it"
                    )
                fout.write(chunk)
        shutil.copystat(src, dst)
        return dst


@contextlib.contextmanager
def config_copy(
    config_dir: Path, root: Path, replace: str, candidate: str | None
) -> Iterator[Copy]:
    """A copy of ``config_dir`` under ``root`` with ``jail.d/REPLACE`` = ``candidate``.

    ``candidate`` None leaves the drop-in out (the admin's configuration
    alone). The copy is deleted on exit; the real tree is never written.
    """

    def skip(directory: str, names: list[str]) -> list[str]:
        if Path(directory).name != "jail.d":
            return []
        return [n for n in names if n == replace or n.startswith(f".{replace}.")]

    sweep(root)
    top = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))
    lock = os.open(top / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        budget = _Budget(config_dir, MAX_BYTES)
        copy = top / "conf"
        try:
            shutil.copytree(config_dir, copy, symlinks=True, ignore=skip, copy_function=budget.copy)
        except shutil.Error as exc:
            first = exc.args[0][0] if exc.args and exc.args[0] else exc
            raise BackendError(f"cannot copy {config_dir} for checking: {first}") from None
        except OSError as exc:
            raise BackendError(f"cannot copy {config_dir} for checking: {exc}") from None
        if candidate is not None:
            (copy / "jail.d").mkdir(exist_ok=True)
            (copy / "jail.d" / replace).write_text(candidate, encoding="utf-8")
        yield Copy(copy, budget.skipped)
    finally:
        shutil.rmtree(top, ignore_errors=True)
        os.close(lock)
