"""A real firewalld on a private system bus inside a test network namespace.

A private ``dbus-daemon`` (socket in a temp dir) and ``firewalld --nofork``
inside the namespace, with ``--system-config`` a temp copy of /etc/firewalld.
The host's firewalld and system bus are never touched; both daemons are ended
by pid. ``bus_monitor`` counts the method calls sent to firewalld that change
something, independently of whoever sends them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from support import need, need_tool, ns_exec

FIREWALLD = "org.fedoraproject.FirewallD1"

_BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
  <includedir>/usr/share/dbus-1/system.d</includedir>
  <includedir>/etc/dbus-1/system.d</includedir>
</busconfig>
"""

#: Method names of firewalld's D-Bus API that only read.
_READS = ("get", "query", "list", "is", "Get", "Introspect", "authorizeAll", "Ping")


@dataclass
class Firewalld:
    """One private firewalld in namespace ``ns``; ``etc`` is its --system-config."""

    ns: str
    root: Path
    pristine: Path = field(init=False)
    proc: subprocess.Popen[bytes] | None = None
    bus_pid: int = 0

    def __post_init__(self) -> None:
        self.pristine = self.root / "pristine"

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def sock(self) -> Path:
        return self.root / "bus.sock"

    @property
    def address(self) -> str:
        return f"unix:path={self.sock}"

    @property
    def env(self) -> dict[str, str]:
        return {"DBUS_SYSTEM_BUS_ADDRESS": self.address}

    def cmd(self, *args: str, check: bool = True) -> str:
        """``firewall-cmd ARGS`` against this daemon; stdout."""
        proc = subprocess.run(
            ["firewall-cmd", *args],
            capture_output=True,
            text=True,
            env=dict(os.environ, **self.env),
            check=False,
            timeout=60,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"firewall-cmd {args} -> {proc.returncode}: {proc.stderr}")
        return proc.stdout.strip()

    def state(self) -> str:
        proc = subprocess.run(
            ["firewall-cmd", "--state"],
            capture_output=True,
            text=True,
            env=dict(os.environ, **self.env),
            check=False,
            timeout=60,
        )
        return (proc.stdout + proc.stderr).strip()

    def start(self) -> None:
        log = (self.root / "firewalld.log").open("ab")
        self.proc = subprocess.Popen(
            ns_exec(
                self.ns,
                "env",
                f"DBUS_SYSTEM_BUS_ADDRESS={self.address}",
                "firewalld",
                "--nofork",
                "--nopid",
                "--system-config",
                str(self.etc),
                "--log-target",
                "console",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"firewalld exited: {self.log_tail()}")
            if self.state() == "running":
                return
            time.sleep(0.2)
        raise AssertionError(f"firewalld did not start: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def reset(self) -> None:
        """Back to the pristine config (files and runtime): copy it back and reload."""
        shutil.rmtree(self.etc)
        shutil.copytree(self.pristine, self.etc, symlinks=True)
        self.cmd("--reload")
        assert self.state() == "running", self.log_tail()

    def snapshot_pristine(self) -> None:
        """The current files become what :meth:`reset` restores."""
        if self.pristine.exists():
            shutil.rmtree(self.pristine)
        shutil.copytree(self.etc, self.pristine, symlinks=True)

    def log_tail(self, n: int = 20) -> str:
        try:
            lines = (self.root / "firewalld.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def files(self) -> dict[str, bytes]:
        """Every file of the permanent config, by relative path."""
        return {
            str(p.relative_to(self.etc)): p.read_bytes()
            for p in sorted(self.etc.rglob("*"))
            if p.is_file()
        }


@contextlib.contextmanager
def firewalld(ns: str) -> Iterator[Firewalld]:
    """A private bus + firewalld in ``ns`` (a namespace the test made); both ended by pid."""
    need_tool("firewalld", "firewall-cmd", "dbus-daemon", "dbus-monitor", "nft")
    need(Path("/etc/firewalld").is_dir(), "/etc/firewalld (the firewalld package)")
    root = Path(tempfile.mkdtemp(prefix="cfa-fwd-"))
    fw = Firewalld(ns, root)
    try:
        shutil.copytree("/etc/firewalld", fw.etc, symlinks=True)
        fw.snapshot_pristine()
        conf = root / "bus.conf"
        conf.write_text(_BUS_CONF.format(sock=fw.sock))
        out = subprocess.run(
            ["dbus-daemon", f"--config-file={conf}", "--fork", "--print-pid"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        fw.bus_pid = int(out.split()[0])
        fw.start()
        yield fw
    finally:
        fw.stop()
        if fw.bus_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(fw.bus_pid, signal.SIGTERM)
        shutil.rmtree(root, ignore_errors=True)


class BusMonitor:
    """Counts firewalld's D-Bus method calls that write (everything not a get/query/list)."""

    def __init__(self, fw: Firewalld) -> None:
        self.writes: list[str] = []
        self._proc = subprocess.Popen(
            ["dbus-monitor", "--address", fw.address, "type='method_call'"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._lock = threading.Lock()
        self._seen = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if (
                not line.startswith("method call")
                or "path=/org/fedoraproject/FirewallD1" not in line
            ):
                continue
            with self._lock:
                self._seen += 1
            member = line.rsplit("member=", 1)[-1].strip()
            if not member.startswith(_READS):
                with self._lock:
                    self.writes.append(member)

    def count(self) -> int:
        """Writes so far (after letting the monitor catch up)."""
        time.sleep(0.15)
        with self._lock:
            return len(self.writes)

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)
        if self._proc.stdout:
            self._proc.stdout.close()
