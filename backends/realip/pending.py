"""What keeps a real-IP apply from stopping between the file and the server.

A list file changes by rename, then the server loads it (a reload, HAProxy's
runtime swap). A run that stops in between (SIGKILL, a reload that failed
after the rename) leaves new bytes on disk that the running server never
loaded; every later run would compare bytes, find them equal and never
reload. Two things close that gap:

* :class:`PendingReload`: a record next to the list file, written (fsync'd)
  BEFORE the rename and removed only once the server confirmed the reload. A
  later run that finds it shows it as drift (``status`` exits 3) and ``sync``
  finishes the reload. It is a dot file ending in ``.cfallow-reload``, which
  no include glob of the servers' (``*.conf``, ``cfallow-realip*.caddy``)
  matches.
* :func:`signals_held`: SIGTERM, SIGINT and SIGHUP wait while an apply runs;
  the apply finishes (or rolls back on its own failure), then the signal is
  delivered to whatever handled it before, so the process ends as it would
  have, one apply later.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from cfallow.errors import BackendError
from cfallow.fs import write_atomic

HELD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class PendingReload:
    """The record that the running server may not hold the list file's bytes."""

    def __init__(self, list_path: Path, server: str) -> None:
        self.list_path = list_path
        self.server = server
        self.path = list_path.with_name(f".{list_path.name}.cfallow-reload")

    def exists(self) -> bool:
        """Is a reload owed (a run stopped, or a reload failed, after the file changed)?"""
        return os.path.lexists(self.path)

    def drift(self) -> str:
        """The drift line ``status`` shows while the record exists."""
        return (
            f"the running {self.server} has not been confirmed to load {self.list_path} "
            "(a run stopped, or a reload failed, after it changed): sync reloads it"
        )

    def set(self) -> None:
        """Write the record (before the rename it stands for)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(
                self.path,
                f"cfallow: {self.list_path} changed; the running {self.server} has not "
                "confirmed a reload since. The next cfallow sync reloads it and removes "
                "this file.\n",
                mode=0o600,
            )
        except OSError as exc:
            raise BackendError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def clear(self) -> None:
        """Remove the record (the server confirmed it loaded the file)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise BackendError(f"cannot remove {self.path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGTERM, SIGINT and SIGHUP for the duration; deliver the first one afterwards.

    Only the main thread can set handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        got.append(signum)

    old = {sig: signal.signal(sig, hold) for sig in HELD}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if got:
            signal.raise_signal(got[0])
