"""Test support: real-component requirements and network namespaces.

Under ``CI=true`` a missing component fails the test; elsewhere it skips.
Namespaces get unique names and are always deleted, also on failure; only
processes the test started (by pid) are ended.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator, Sequence

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
_counter = itertools.count()


def need(ok: bool, what: str) -> None:
    """Require a real component: fail under CI, skip elsewhere."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"required component missing under CI: {what}", pytrace=False)
    pytest.skip(f"needs {what} (with CI=true this is a failure, not a skip)")


def need_root() -> None:
    need(os.geteuid() == 0, "root")


def need_tool(*names: str) -> None:
    for name in names:
        need(shutil.which(name) is not None, f"the {name} command")


def sh(argv: Sequence[str], *, check: bool = True, input: str | None = None) -> str:
    """Run a test-side command (argv list) and return stdout."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, input=input, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} -> {proc.returncode}: {proc.stderr or proc.stdout}")
    return proc.stdout


def ns_exec(ns: str, *argv: str) -> list[str]:
    """argv prefixed with ``ip netns exec NS``."""
    return ["ip", "netns", "exec", ns, *argv]


def _ns_pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split() if p.isdigit()]


@contextlib.contextmanager
def namespace(tag: str = "t") -> Iterator[str]:
    """A fresh network namespace with ``lo`` up; deleted on exit.

    Processes still inside it were started by this test (nothing else can
    enter a namespace with a random name), so they are ended by pid.
    """
    need_root()
    need_tool("ip")
    name = f"cfa-{tag}-{os.getpid()}-{next(_counter)}-{uuid.uuid4().hex[:6]}"
    sh(["ip", "netns", "add", name])
    try:
        sh(ns_exec(name, "ip", "link", "set", "lo", "up"))
        yield name
    finally:
        for pid in _ns_pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def namespace_pair(
    server_addrs: Sequence[str],
    client_addrs: Sequence[str],
    tag: str = "p",
    server_if: str | None = None,
) -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth pair: ``(server, client)``.

    ``server_addrs``/``client_addrs`` are ``addr/prefix`` strings assigned
    inside the namespaces only (IPv6 with ``nodad``); each side gets an
    on-link route to the other's addresses, so nothing is routed anywhere
    else. ``server_if`` names the server's end (``eth0``, ``bond0``, ...:
    it is created inside the server namespace, so the name is never the
    host's).
    """
    with namespace(tag + "s") as srv, namespace(tag + "c") as cli:
        suffix = uuid.uuid4().hex[:6]
        a, b = server_if or f"cfs{suffix}", f"cfc{suffix}"
        sh(["ip", "link", "add", a, "netns", srv, "type", "veth", "peer", "name", b, "netns", cli])
        for ns, dev, addrs, peers in (
            (srv, a, server_addrs, client_addrs),
            (cli, b, client_addrs, server_addrs),
        ):
            for addr in addrs:
                extra = ["nodad"] if ":" in addr else []
                sh(ns_exec(ns, "ip", "addr", "add", addr, "dev", dev, *extra))
            sh(ns_exec(ns, "ip", "link", "set", dev, "up"))
            for peer in peers:
                host = peer.split("/")[0]
                plen = "128" if ":" in host else "32"
                fam = "-6" if ":" in host else "-4"
                sh(ns_exec(ns, "ip", fam, "route", "replace", f"{host}/{plen}", "dev", dev))
        yield srv, cli
