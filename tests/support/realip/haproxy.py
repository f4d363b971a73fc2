"""A private HAProxy (master-worker, foreground, its log on stdout) for the real-IP tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from netaddr import IPNetwork

from support.realip.lab import Server, ServerHarness, wait_for


def _default_signals() -> None:
    # The test runner may block or ignore signals; HAProxy's master needs SIGUSR2 (reload).
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


class Haproxy(Server):
    program = "haproxy"
    name = "haproxy"
    proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        d = self.root
        (d / "conf.d").mkdir(exist_ok=True)
        self.admin_acl = d / "conf.d" / "admin.acl"
        self.admin_acl.write_text("")
        if not self.list_path.exists():
            self.list_path.write_text("")  # the documented first step: touch the file
        self.conf = d / "haproxy.cfg"
        self.conf.write_text(
            "global\n"
            f"    stats socket {d}/admin.sock mode 600 level admin\n"
            f"    pidfile {d}/haproxy.pid\n"
            "    log stdout format raw local0\n"
            "defaults\n    mode http\n    log global\n"
            "    timeout connect 1s\n    timeout client 10s\n    timeout server 10s\n"
            "    timeout http-keep-alive 10s\n"
            "frontend web\n"
            f"    bind {self.listen}:{self.port}\n"
            + (f"    bind [::]:{self.port} v6only\n" if self.ns else "")
            + f"    acl from_lb src -f {self.admin_acl}\n"
            f"    acl from_cf src -f {self.list_path}\n"
            "    http-request set-src req.hdr(CF-Connecting-IP) if from_cf\n"
            '    log-format "%ci %HP"\n'
            '    http-request return status 200 content-type text/plain string "ok\\n"\n'
        )

    @property
    def list_path(self) -> Path:
        return self.root / "cfallow-realip.acl"

    @property
    def socket(self) -> Path:
        return self.root / "admin.sock"

    def start_argv(self) -> list[str]:
        return ["haproxy", "-W", "-f", str(self.conf)]

    def start(self) -> None:
        out = (self.root / "haproxy.out").open("ab")
        self.proc = subprocess.Popen(
            self.argv(*self.start_argv()),
            stdout=out,
            stderr=out,
            preexec_fn=_default_signals,  # noqa: PLW1509
        )
        out.close()
        wait_for(self.ready, "haproxy to listen")
        # The master handles SIGUSR2 (reload) only once it says so.
        wait_for(lambda: self.loaded() >= 1, "haproxy's master to finish loading")

    def loaded(self) -> int:
        try:
            return (self.root / "haproxy.out").read_text().count("Loading success.")
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)

    def section(self) -> dict[str, Any]:
        return {"path": str(self.list_path), "config": str(self.conf), "socket": str(self.socket)}

    def master_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def reloads(self) -> int:
        try:
            return (self.root / "haproxy.out").read_text().count("Reloading HAProxy")
        except FileNotFoundError:
            return 0

    def access_lines(self) -> list[str]:
        try:
            text = (self.root / "haproxy.out").read_text()
        except FileNotFoundError:
            return []
        return [ln for ln in text.splitlines() if ln and not ln.startswith("[")]

    def reload_by_hand(self) -> None:
        before, loads = self.state(), self.loaded()
        # A SIGUSR2 that comes soon after the start is sometimes taken and dropped by
        # haproxy 2.6's master (seen here about every other time): ask again.
        for _ in range(5):
            os.kill(self.master_pid(), signal.SIGUSR2)
            with contextlib.suppress(AssertionError):
                wait_for(lambda: self.loaded() > loads, "haproxy to reload", 2)
                break
        self.reloaded(before)

    def ask(self, line: str) -> str:
        """One line to the stats socket (the test's own client, not the backend's)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket))
            sock.sendall(line.encode() + b"\n")
            return b"".join(iter(lambda: sock.recv(65536), b"")).decode()

    def live(self) -> frozenset[IPNetwork]:
        """The running ACL's entries."""
        lines = self.ask(f"show acl {self.list_path}").split("\n")
        return frozenset(IPNetwork(ln.split()[1]) for ln in lines if len(ln.split()) == 2)


class HaproxyHarness(ServerHarness):
    """What cfallow owns is the file, and the running ACL must say the same."""

    server: Haproxy

    def owned(self) -> frozenset[IPNetwork]:
        on_disk = super().owned()
        assert self.server.live() == on_disk, "the running ACL differs from the file"
        return on_disk
