"""The version, and how a build tells itself apart from another.

``RELEASE`` is the release this tree is (CHANGELOG.md). A build from a git
checkout appends a PEP 440 local version naming the commit, ``+g<hash>``,
and ``.dirty`` when the work tree had uncommitted changes, so two wheels
built from different trees never carry the same version. A release is built
from its tagged, clean commit with ``CFALLOW_RELEASE=1`` (no local part,
as package indexes require). An sdist keeps the version it was made with
(its ``PKG-INFO``).

setuptools reads :data:`build_version` when it builds (``pyproject.toml``:
``version = {attr = ...}``); at run time cfallow reports the installed
distribution's version (:func:`installed`).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

RELEASE = "0.1.0"
_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def from_tree() -> str:
    """The version of the tree being built: ``0.1.0+g62ae79a[.dirty]``, ``0.1.0``."""
    if os.environ.get("CFALLOW_RELEASE") == "1":
        return RELEASE
    pkg_info = _ROOT / "PKG-INFO"
    if pkg_info.is_file():  # building from an sdist: keep its version
        for line in pkg_info.read_text(encoding="utf-8").splitlines():
            if line.startswith("Version: "):
                return line.split(": ", 1)[1].strip()
    if not (_ROOT / ".git").exists():
        return RELEASE
    commit = _git("rev-parse", "--short=7", "HEAD")
    if commit is None:
        return RELEASE
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{RELEASE}+g{commit}" + (".dirty" if dirty else "")


def installed() -> str:
    """The installed distribution's version (what the wheel was built as)."""
    from importlib import metadata

    try:
        return metadata.version("cfallow")
    except metadata.PackageNotFoundError:  # run from a tree that is not installed
        return from_tree()


def __getattr__(name: str) -> str:
    # Computed only when setuptools asks, never on an ordinary import.
    if name == "build_version":
        return from_tree()
    raise AttributeError(name)
