"""What a backend's read rested on, asked again: the witnesses of a run in step.

A ``cfallow sync`` that changed nothing may be said again by the next identical one
without planning, while everything it rested on holds (``cfallow.instep``).
Outside the config and the state directory, only a backend knows what its read
rested on: :meth:`cfallow.backend.Backend.witnesses` names it as questions this
module can put again cheaply, each with the answer the read had:

* ``("nf",)``: nf_tables' ruleset generation (:func:`cfallow.netfilter.generation.current`),
  which every commit by anyone moves;
* ``("xt", LOCK, VERSION, TABLE...)``: legacy tables' digest
  (:func:`cfallow.netfilter.xtables.digest`), under the xtables lock ``LOCK`` (not
  had at once: no answer);
* ``("exe", PROGRAM)``: the file ``PROGRAM`` runs from ``$PATH`` (behind its links),
  its inode, size and time.

Imported on the way to a run said again: only ``os`` and ``fcntl`` at import, the
generation and the digest where asked.
"""

from __future__ import annotations

import fcntl
import os

TYPE_CHECKING = False  # typing is not imported on that way (mypy: true)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Optional

    #: A witness: what to ask and the answer the read had (None: none could be had).
    Witness = tuple[tuple[str, ...], Optional[str]]


def program(name: str, search: str | None = None) -> str | None:
    """The file ``name`` runs from ``search`` (default ``$PATH``) behind its links, with its
    inode, size and time: the same file prints the same ``--version`` and the same
    ``*-save`` text for the same ruleset (None: there is none)."""
    search = search or os.environ.get("PATH", os.defpath)
    for where in search.split(os.pathsep):
        path = os.path.join(where, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):  # as shutil.which
            real = os.path.realpath(path)
            try:
                st = os.stat(real)
            except OSError:
                return None
            return f"{real}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    return None


def _xt(lock: str, version: str, tables: Sequence[str]) -> str | None:
    """The legacy tables' digest, under the xtables lock (not had at once: None)."""
    from cfallow.netfilter import xtables

    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        v = int(version)
        return xtables.digest([(v, t) for t in tables], create=("filter",)).value
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def ask(what: Sequence[str]) -> str | None:
    """A witness's answer now (None: it cannot be had)."""
    kind = what[0] if what else ""
    if kind == "nf" and len(what) == 1:
        from cfallow.netfilter import generation

        try:
            return generation.current()
        except OSError:
            return None
    if kind == "exe" and len(what) == 2:
        return program(what[1])
    if kind == "xt" and len(what) >= 4:
        return _xt(what[1], what[2], what[3:])
    return None
