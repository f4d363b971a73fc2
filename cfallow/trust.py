"""What a root run trusts: files only root can change.

cfallow runs as root and runs commands its configuration names (Fail2Ban's
``client``), so a config file that another user can write is a way to run
code as root. When running as root (effective uid 0), cfallow refuses with a
:class:`~cfallow.errors.ConfigError` (exit 2):

* a config file, or any directory above it, that is not owned by root or is
  writable by group or others;
* an executable named in the config (resolved through ``PATH`` like the
  runner does), or any directory above it, likewise;
* the directory ``metrics_file`` is written into (or the nearest existing
  one above it) must itself be root's and not writable by group or others;
  the directories above it are not checked, since Debian's node_exporter
  directory ``/var/lib/prometheus/node-exporter`` (root's, 0755) sits in
  ``/var/lib/prometheus``, which belongs to the ``prometheus`` user.

A root-owned directory with the sticky bit (``/tmp``) counts as trusted above
a root-owned entry: others can neither rename nor delete what root owns
there. Paths are checked after resolving symlinks, so a link is only as good
as where it leads.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from cfallow.errors import ConfigError

FIX = "chown root and chmod go-w, or use another path"


def running_as_root() -> bool:
    """Are the checks on (effective uid 0)?"""
    return os.geteuid() == 0


def _why_untrusted(st: os.stat_result, *, above: bool) -> str | None:
    if st.st_uid != 0:
        return f"owned by uid {st.st_uid}, not root"
    if st.st_mode & 0o022:
        if above and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
            return None
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _check_chain(
    real: Path, what: str, leaf: os.stat_result | None = None, *, above: bool = True
) -> None:
    """``real`` (no symlinks) and, if ``above``, every directory above it must be trusted."""
    for i, path in enumerate((real, *real.parents) if above else (real,)):
        st = leaf if i == 0 and leaf is not None else os.stat(path)
        why = _why_untrusted(st, above=i > 0)
        if why:
            subject = f"{what} {real} is" if i == 0 else f"{what} {real}: directory {path} is"
            raise ConfigError(
                f"{subject} {why}; cfallow runs as root and will not trust it ({FIX})"
            )


def check_open_file(fd: int, path: Path, what: str) -> None:
    """The file open on ``fd`` (read from ``path``) must be root's alone to change."""
    if not running_as_root():
        return
    real = Path(os.path.realpath(path))
    st = os.fstat(fd)
    on_disk = os.stat(real)
    if (st.st_dev, st.st_ino) != (on_disk.st_dev, on_disk.st_ino):
        raise ConfigError(f"{what} {path} changed while it was read; run again")
    _check_chain(real, what, st)


def check_executable(command: str, what: str) -> None:
    """An executable taken from config (a path, or a name looked up on ``PATH``).

    A command that cannot be found is left to the backend's own check, which
    reports it; nothing runs it before that.
    """
    if not running_as_root():
        return
    found = command if "/" in command else shutil.which(command)
    if found is None or not os.path.exists(found):
        return
    _check_chain(Path(os.path.realpath(found)), what)


def check_output_dir(directory: Path, what: str) -> None:
    """A directory cfallow writes into as root (the nearest existing one, if absent)."""
    if not running_as_root():
        return
    real = Path(os.path.realpath(directory))
    while not real.exists() and real != real.parent:
        real = real.parent
    _check_chain(real, what, above=False)
