"""The contract harness for the fail2ban backend, bound to a private server."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cfallow.backend import Backend, Context, build
from cfallow.runner import Runner
from cfallow.testing import Harness, Nets
from support import namespace
from support.fail2ban.server import DEFAULT_IGNORE, F2bServer

JAILS = ("alpha", "beta")
MUTATING = {"addignoreip", "delignoreip"}


@contextlib.contextmanager
def running_server(root: Path, tag: str = "f2b") -> Iterator[F2bServer]:
    """A private fail2ban-server inside a fresh network namespace; always stopped."""
    with namespace(tag) as ns:
        srv = F2bServer(root, ns)
        srv.start()
        try:
            yield srv
        finally:
            srv.stop()


class F2bHarness(Harness):
    """Reads the server and the drop-in directly (configparser, fail2ban-client)."""

    def __init__(self, srv: F2bServer, state_dir: Path) -> None:
        self.srv = srv
        self.state_dir = state_dir
        self.runner = Runner()
        self.built: list[Backend] = []
        self._stat = self._dropin_stat()
        self._file_writes = 0

    def config(self, **extra: Any) -> dict[str, Any]:
        return {"socket": str(self.srv.socket), "config_dir": str(self.srv.conf), **extra}

    def backend(self, **extra: Any) -> Backend:
        ctx = Context(runner=self.runner, state_dir=self.state_dir)
        backend = build("fail2ban", self.config(**extra), ctx)
        self.built.append(backend)
        return backend

    def sent(self) -> list[tuple[str, ...]]:
        """Every command the backends built here sent over the server's socket."""
        return [c for b in self.built for c in b.client.sent]  # type: ignore[attr-defined]

    def owned(self) -> Nets:
        union: Nets = frozenset()
        for jail, mine in self.srv.dropin_ranges().items():
            if self.srv.running():
                live = self.srv.live(jail)
                assert mine <= live, f"{jail}: drop-in lists {sorted(mine - live)} not live"
            union |= mine
        return union

    def add_foreign(self) -> None:
        # An office network and a Cloudflare range of the admin's own, in DEFAULT (alpha's list).
        self.srv.write_jail_local(
            default_ignore=(*DEFAULT_IGNORE, "203.0.113.0/24", "131.0.72.0/22")
        )
        if self.srv.running():
            self.srv.reload()

    def foreign(self) -> object:
        owned = self.srv.dropin_ranges()
        live = {}
        if self.srv.running():
            live = {
                j: sorted(map(str, self.srv.live(j) - owned.get(j, frozenset()))) for j in JAILS
            }
        return self.srv.config_files(), live

    def _dropin_stat(self) -> tuple[int, int] | None:
        try:
            st = self.srv.dropin.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def writes(self) -> int:
        stat = self._dropin_stat()
        if stat != self._stat:
            self._file_writes += 1
            self._stat = stat
        return self._file_writes + len(self.live_writes())

    def live_writes(self) -> list[tuple[str, ...]]:
        return [c for c in self.sent() if MUTATING & set(c)]

    def clear(self) -> None:
        """Forget the commands recorded so far (subprocesses and socket)."""
        self.runner.calls.clear()
        for b in self.built:
            b.client.sent.clear()  # type: ignore[attr-defined]
