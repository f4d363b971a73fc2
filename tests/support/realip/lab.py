"""Private web servers for the real-IP backends: started by the test, ended by pid.

Every server runs from a temp dir with its own config, pid file, logs and
sockets, either on 127.0.0.1 (contract tests) or inside the server side of a
veth pair (traffic tests). Nothing of the system's own instance is used.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from netaddr import IPNetwork

from cfallow.backend import AnyBackend, Context, build
from cfallow.engine import BackendResult, run_backend
from cfallow.model import Desired
from cfallow.runner import Runner
from cfallow.testing import Harness
from support import need_root, need_tool, ns_exec
from support.cfdata import CURRENT, OLD

#: Client addresses for the traffic tests (all assigned inside the client namespace only).
CF_SRC = "173.245.48.5"  # in 173.245.48.0/20: a Cloudflare edge
OUT_SRC = "198.51.100.7"  # TEST-NET-2: not Cloudflare
WARP_SRC = "104.28.0.5"  # in 104.16.0.0/12 (old list), in no range of the current one
SERVER_ADDR = "192.0.2.1"
SERVER_ADDR6 = "2001:db8::1"
CF_SRC6 = "2400:cb00::5"  # in 2400:cb00::/32: a Cloudflare edge
OUT_SRC6 = "2001:db8:ffff::7"  # documentation range: not Cloudflare
CLIENT = "203.0.113.9"
_marks = itertools.count()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Any, what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def children(pid: int) -> frozenset[int]:
    """The pids of ``pid``'s children (a server's workers)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return frozenset()
    return frozenset(int(p) for p in text.split())


def sig(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns)


class Server(abc.ABC):
    """One private server; ``ns`` runs it inside a network namespace."""

    program: str = ""
    #: The backend's entry-point name.
    name: str = ""
    #: Send ``X-Forwarded-For`` as well (Cloudflare sends both; Caddy 2.6 acts on that one).
    sends_xff = False
    #: The admin's main config file (set by ``write_config``).
    conf: Path

    def __init__(
        self, root: Path, *, ns: str | None = None, client_ns: str | None = None, listen: str = ""
    ) -> None:
        need_root()
        need_tool(self.program, "curl")
        self.root = root
        self.ns = ns
        self.client_ns = client_ns
        self.port = 80 if ns else free_port()
        self.listen = listen or ("0.0.0.0" if ns else "127.0.0.1")
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_config()

    # -- per server --------------------------------------------------------------------
    @abc.abstractmethod
    def write_config(self) -> None:
        """The admin's config (includes cfallow's files)."""

    @abc.abstractmethod
    def start_argv(self) -> list[str]: ...

    @abc.abstractmethod
    def section(self) -> dict[str, Any]:
        """The cfallow config section for this server."""

    @abc.abstractmethod
    def master_pid(self) -> int: ...

    @abc.abstractmethod
    def reloads(self) -> int:
        """How many reloads the server has done (from its own log)."""

    @property
    @abc.abstractmethod
    def list_path(self) -> Path: ...

    def extra_paths(self) -> list[Path]:
        return []

    def owned_paths(self) -> list[Path]:
        return [self.list_path, *self.extra_paths()]

    def error_log(self) -> Path | None:
        """The server's own log of signals and workers (shown when a test fails)."""
        return None

    def diagnosis(self) -> str:
        """The running generation and the end of the server's log, for a failure message."""
        try:
            pid, kids = self.state()
        except (OSError, ValueError):
            return f"{self.name}: no running parent"
        text = f"{self.name}: parent {pid}, children {sorted(kids)}"
        log = self.error_log()
        if log is not None and log.exists():
            tail = log.read_text(errors="replace").splitlines()[-30:]
            text += f"\n{log}:\n" + "\n".join(tail)
        return text

    @abc.abstractmethod
    def reload_by_hand(self) -> None:
        """What the admin does after editing the config (and waits until it took)."""

    # -- shared ------------------------------------------------------------------------
    def argv(self, *argv: str) -> list[str]:
        return ns_exec(self.ns, *argv) if self.ns else list(argv)

    def start(self) -> None:
        proc = subprocess.run(
            self.argv(*self.start_argv()), check=False, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr or proc.stdout
        wait_for(self.ready, f"{self.program} to listen")

    def ready(self) -> bool:
        try:
            return self.master_pid() > 0 and self.get("/", timeout=1) is not None
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError, AssertionError):
            pid = self.master_pid()
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not Path(f"/proc/{pid}").exists(), "server to stop", 10)

    def get(
        self,
        path: str = "/",
        *,
        src: str | None = None,
        header: str | None = None,
        timeout: float = 3,
    ) -> str | None:
        """One request (curl, from ``src`` in the client namespace if given); body or None."""
        argv = ["curl", "-s", "-f", "--max-time", str(timeout)]
        if header is not None:
            argv += ["-H", f"CF-Connecting-IP: {header}"]
            if self.sends_xff:
                argv += ["-H", f"X-Forwarded-For: {header}"]
        if src is not None:
            argv += ["--interface", src]
        host = SERVER_ADDR if self.ns else self.listen
        if src is not None and ":" in src:
            host = f"[{SERVER_ADDR6}]"
        argv.append(f"http://{host}:{self.port}{path}")
        if self.ns:
            argv = ns_exec(self.client_ns if src is not None and self.client_ns else self.ns, *argv)
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return proc.stdout if proc.returncode == 0 else None

    def reloaded(self, before: tuple[int, frozenset[int]]) -> None:
        """Wait until a reload since ``before`` has finished: only new workers run."""
        wait_for(
            lambda: (now := self.state()[1]) and now.isdisjoint(before[1]) and self.ready(),
            f"{self.program} to finish reloading",
        )

    def seen_as(self, src: str, header: str = CLIENT) -> str:
        """The address the server logs for one request from ``src`` claiming ``header``.

        The server writes its access-log line after the response, so the line is
        awaited, and the request marked (a unique path) to find it.
        """
        mark = f"/m{next(_marks)}"
        assert self.get(mark, src=src, header=header) is not None
        return str(wait_for(lambda: self.logged_client(mark), f"the log line of {mark}"))

    def logged_client(self, mark: str) -> str | None:
        for line in self.access_lines():
            if f" {mark} " in f" {line} ":
                return line.split()[0]
        return None

    @abc.abstractmethod
    def access_lines(self) -> list[str]:
        """The access log's lines (client address first, then the path)."""

    def state(self) -> tuple[int, frozenset[int]]:
        """Master pid and its workers: the generation of the running server."""
        pid = self.master_pid()
        return pid, children(pid)


class ServerHarness(Harness):
    """The contract harness for any :class:`Server` (an admin file of its own in ``foreign``)."""

    def __init__(self, server: Server, admin_file: Path, admin_text: str) -> None:
        self.server = server
        self.admin_file = admin_file
        self.admin_text = admin_text
        self._sigs: dict[Path, tuple[int, int] | None] = {}
        self._changes = 0

    def backend(self) -> AnyBackend:
        return build(self.server.name, self.server.section(), Context(runner=Runner()))

    def owned(self) -> frozenset[IPNetwork]:
        try:
            text = self.server.list_path.read_text()
        except FileNotFoundError:
            return frozenset()
        cidrs = re.findall(r"(?<![\w.:])([0-9a-f.:]+/\d+)", text.split("# source etag:")[-1])
        return frozenset(IPNetwork(c) for c in cidrs)

    def add_foreign(self) -> None:
        self.admin_file.write_text(self.admin_text)
        self.server.reload_by_hand()

    def foreign(self) -> object:
        """The admin's config: the main file and everything else in conf.d."""
        conf_d = sorted((self.server.root / "conf.d").glob("*"))
        files = [self.server.conf, *conf_d]
        owned = set(self.server.owned_paths())
        return [(str(p), p.read_bytes()) for p in files if p not in owned]

    def writes(self) -> int:
        for path in self.server.owned_paths():
            now = sig(path)
            if path in self._sigs and self._sigs[path] != now:
                self._changes += 1
            self._sigs[path] = now
        return self.server.reloads() + self._changes


def in_pair(
    addrs: Sequence[str] = (CF_SRC, OUT_SRC, WARP_SRC, CF_SRC6, OUT_SRC6),
) -> Any:
    """``namespace_pair``: the server on SERVER_ADDR(6), the test's client sources."""
    from support import namespace_pair

    def plen(a: str) -> str:
        return f"{a}/128" if ":" in a else f"{a}/32"

    return namespace_pair(
        [plen(SERVER_ADDR), plen(SERVER_ADDR6)], [plen(a) for a in addrs], tag="rip"
    )


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def sync(
    server: Server,
    desired: frozenset[IPNetwork] | None,
    *,
    log: logging.Logger | None = None,
    **extra: Any,
) -> BackendResult:
    """One engine run of ``server``'s backend (the test's private server).

    ``log``: the backend's logger (default: cfallow's).
    """
    ctx = Context() if log is None else Context(log=log)
    backend = build(server.name, {**server.section(), **extra}, ctx)
    # The etag travels with the list, as the CLI's Ranges.desired carries it.
    want = None if desired is None else Desired(desired, etag="test-etag")
    return run_backend(backend, want, dry_run=False)


def toml_section(name: str, section: dict[str, Any]) -> str:
    lines = [f"[backends.{name}]"] + [f"{k} = {json.dumps(v)}" for k, v in section.items()]
    return "\n".join(lines) + "\n"


def cli_config(tmp: Path, base: str, server: Server, **extra: Any) -> Path:
    from support.cli_helpers import write_config

    return write_config(
        tmp / "config.toml", base, backends=toml_section(server.name, {**server.section(), **extra})
    )


_opened: list[list[str]] = []  # the open paths of the running opened_during, if any


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _opened and event == "open" and isinstance(args[0], (str, Path)):
        _opened[-1].append(str(args[0]))


sys.addaudithook(_audit)


def opened_during(fn: Any) -> tuple[Any, list[str]]:
    """``fn()``'s result and every path Python opened meanwhile (an audit hook)."""
    _opened.append([])
    try:
        return fn(), list(_opened[-1])
    finally:
        _opened.pop()


@contextlib.contextmanager
def port_in_use() -> Iterator[int]:
    """A loopback port another process (this test) listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def synced_to_old(server: Server) -> tuple[bytes, tuple[int, frozenset[int]]]:
    """Sync the pre-2021 list and wait for the reload: the list's bytes and the generation."""
    gen = server.state()
    assert sync(server, OLD).applied
    server.reloaded(gen)
    return server.list_path.read_bytes(), server.state()


def check_sync_returns_with_new_workers(server: Server) -> None:
    """A changing sync returns only once the same parent runs new workers."""
    pid, workers = server.state()
    assert sync(server, CURRENT).applied
    assert children(pid) - workers  # at once: no waiting for the server after the sync
    assert server.master_pid() == pid
