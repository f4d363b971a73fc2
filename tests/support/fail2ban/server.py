"""A private Fail2Ban server for tests: config, socket, pid file, db and logs in a temp dir.

The tree is a copy of the distribution's configuration (``filter.d``,
``jail.conf``, ``paths-*.conf``; ``jail.d`` and ``fail2ban.d`` left empty) plus
a ``fail2ban.local`` pointing everything into the temp dir, a test filter and
the admin's own ``jail.local``: two polling jails on temp log files, one
inheriting DEFAULT's ``ignoreip``, one with its own (which lists a Cloudflare
range). Jails have no actions, and the server runs inside a network namespace
the test made, so a ban never reaches a firewall. The server is stopped
through its socket, or killed by its recorded pid.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from netaddr import IPNetwork

SYSTEM_CONF = Path("/etc/fail2ban")
DROPIN = "zz-cfallow.local"

#: Base lists as the admin wrote them (``alpha`` inherits DEFAULT's).
DEFAULT_IGNORE = ("127.0.0.1/8", "::1", "192.0.2.0/24")
BETA_IGNORE = ("127.0.0.1/8", "::1", "198.51.100.0/24", "104.16.0.0/12", "173.245.48.0/20")

JAIL_LOCAL = """\
[DEFAULT]
{default_ignore}
backend = polling
action =
maxretry = 3
findtime = 10m
bantime = 10m

[alpha]
enabled = true
filter = cfa-test
logpath = {logs}/alpha.log

[beta]
enabled = true
filter = cfa-test
logpath = {logs}/beta.log
ignoreip = {beta_ignore}
"""

FILTER = """\
[Definition]
failregex = ^Failed password for \\S+ from <HOST> port \\d+$
datepattern = {NONE}
"""


def nets(entries: list[str] | tuple[str, ...]) -> frozenset[IPNetwork]:
    """Ignore-list entries as networks (bare addresses as /32, /128; host bits dropped)."""
    return frozenset(IPNetwork(e).cidr for e in entries)


class F2bServer:
    """One private Fail2Ban configuration tree, and optionally its running server."""

    def __init__(self, root: Path, netns: str | None = None) -> None:
        self.root = root
        self.netns = netns
        self.conf = root / "conf"
        self.run_dir = root / "run"
        self.logs = root / "logs"
        self.socket = self.run_dir / "f2b.sock"
        self.pidfile = self.run_dir / "f2b.pid"
        self.pid: int | None = None
        self.build()

    # -- configuration -------------------------------------------------
    def build(self) -> None:
        """Lay out the tree (absolute paths only: the daemon changes to /)."""
        shutil.copytree(
            SYSTEM_CONF,
            self.conf,
            ignore=lambda d, names: names if Path(d).name in {"jail.d", "fail2ban.d"} else [],
        )
        for d in (self.run_dir, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        (self.conf / "fail2ban.local").write_text(
            "[Definition]\nloglevel = INFO\n"
            f"logtarget = {self.run_dir}/f2b.log\nsocket = {self.socket}\n"
            f"pidfile = {self.pidfile}\ndbfile = {self.run_dir}/f2b.sqlite3\n"
        )
        (self.conf / "filter.d" / "cfa-test.conf").write_text(FILTER)
        for jail in ("alpha", "beta"):
            (self.logs / f"{jail}.log").touch()
        self.write_jail_local()

    def write_jail_local(
        self,
        default_ignore: tuple[str, ...] | None = DEFAULT_IGNORE,
        beta_ignore: tuple[str, ...] = BETA_IGNORE,
        extra: str = "",
    ) -> None:
        """The admin's own jail.local (``default_ignore`` None: no ignoreip in DEFAULT).

        The distribution's jail.conf sets no ``ignoreip`` (it is commented out).
        """
        text = JAIL_LOCAL.format(
            default_ignore=""
            if default_ignore is None
            else "ignoreip = " + " ".join(default_ignore),
            beta_ignore=" ".join(beta_ignore),
            logs=self.logs,
        )
        (self.conf / "jail.local").write_text(text + extra)

    @property
    def dropin(self) -> Path:
        return self.conf / "jail.d" / DROPIN

    def dropin_ranges(self) -> dict[str, frozenset[IPNetwork]]:
        """cfallow's ranges per jail, read with configparser (not the backend's parser)."""
        if not self.dropin.exists():
            return {}
        cp = configparser.RawConfigParser()
        cp.read_string(self.dropin.read_text())
        out: dict[str, frozenset[IPNetwork]] = {}
        for jail in cp.sections():
            words = cp.get(jail, "ignoreip").split()
            out[jail] = nets([w for w in words if w != "%(known/ignoreip)s"])
        return out

    def config_files(self) -> dict[str, bytes]:
        """Every file of the tree except cfallow's drop-in."""
        return {
            str(p.relative_to(self.conf)): p.read_bytes()
            for p in sorted(self.conf.rglob("*"))
            if p.is_file() and p.name != DROPIN
        }

    # -- the client ----------------------------------------------------
    def client(self, *args: str, check: bool = True) -> str:
        """Run fail2ban-client against this tree and socket; stdout."""
        argv = ["fail2ban-client", "-c", str(self.conf), "-s", str(self.socket), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} -> {proc.returncode}: {proc.stderr}")
        return proc.stdout

    def dump(self) -> str:
        return self.client("-d")

    def start(self) -> None:
        """Start the server (inside the test's namespace) and record its pid."""
        assert "addaction" not in self.dump(), "test jails must have no actions"
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        argv = [*prefix, "fail2ban-client", "-c", str(self.conf), "-s", str(self.socket)]
        argv += ["-p", str(self.pidfile), "start"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"fail2ban-server did not start: {proc.stderr}")
        self.pid = int(self.pidfile.read_text().strip())

    def stop(self) -> None:
        """Stop through the socket; kill by the recorded pid if it lingers."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        self.client("stop", check=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def reload(self) -> None:
        self.client("reload")

    def running(self) -> bool:
        return self.pid is not None and _alive(self.pid)

    # -- reading the server ------------------------------------------
    def ignoreip(self, jail: str) -> list[str]:
        out = self.client("get", jail, "ignoreip")
        return [
            ln.strip()[2:].strip() for ln in out.splitlines()[1:] if ln.strip()[:2] in ("|-", "`-")
        ]

    def live(self, jail: str) -> frozenset[IPNetwork]:
        return nets(self.ignoreip(jail))

    def banned(self, jail: str) -> list[str]:
        for line in self.client("status", jail).splitlines():
            if "Banned IP list:" in line:
                return line.split("Banned IP list:")[1].split()
        return []

    def fail(self, jail: str, address: str, times: int = 3) -> None:
        """Failed-login lines from ``address`` in the jail's log."""
        with open(self.logs / f"{jail}.log", "a") as fh:
            for i in range(times):
                fh.write(f"Failed password for root from {address} port {40000 + i}\n")

    def wait_banned(self, jail: str, address: str, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if address in self.banned(jail):
                return True
            time.sleep(0.1)
        return False

    def reset(self) -> None:
        """The admin's base configuration, no drop-in, live lists and bans reset."""
        self.write_jail_local()
        self.dropin.unlink(missing_ok=True)
        for stray in (self.conf / "jail.d").iterdir():
            stray.unlink()
        if self.running():
            self.reload()
            self.client("unban", "--all")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (already exited, not yet reaped by whoever adopted it) is not alive.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
