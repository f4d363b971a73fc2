"""Runs INSIDE the booted container (see test_boot_realip.py): the real-IP backends.

For each web server in turn (all on port 80, so one at a time): its real
service is started by systemd (nginx from boot), the hardened
cfallow.service runs that server's backend once, and requests from a client
namespace behind a veth pair (boot_probe.py's: a Cloudflare and an outside
address, IPv4 and IPv6), each claiming ``CF-Connecting-IP: 203.0.113.9``, are
looked up in the server's own log. Then the server is stopped.

Everything goes to /opt/probe/result-realip.json; the probe always powers off.
"""

from __future__ import annotations

import itertools
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, "/opt/probe")
from boot_probe import (
    CF,
    OUTSIDE,
    SERVER,
    client_namespace,
    exposure,
    record,
    sh,
    start_service,
    unit,
)

OUT = Path("/opt/probe")
CLAIM = "203.0.113.9"
# Cloudflare is unreachable from here: the first fetch fails at once and the
# bundled snapshot is used (exit 0), later runs are not due to fetch.
SOURCE = """\
[source]
api_url = "http://127.0.0.1:9/client/v4/ips"
text_urls = ["http://127.0.0.1:9/ips-v4", "http://127.0.0.1:9/ips-v6"]
attempts = 1
timeout = 2

"""
SERVERS: dict[str, dict[str, Any]] = {
    "nginx": {"unit": "nginx.service", "list": "/etc/nginx/conf.d/cfallow-realip.conf"},
    "apache": {"unit": "apache2.service", "list": "/etc/apache2/cfallow-realip.list"},
    "haproxy": {"unit": "haproxy.service", "list": "/etc/haproxy/cfallow-realip.acl"},
    "caddy": {"unit": "caddy.service", "list": "/etc/caddy/cfallow-realip.caddy"},
}
LOGS = {
    "nginx": "/var/log/nginx/access.log",
    "apache": "/var/log/apache2/cftest.log",
    "caddy": "/var/log/cftest-xff.log",
}
_marks = itertools.count()


def log_text(server: str) -> str:
    if server == "haproxy":  # HAProxy logs to syslog: the journal
        return sh("journalctl", "-t", "haproxy", "-o", "cat", "--no-pager").stdout
    path = Path(LOGS[server])
    return path.read_text() if path.exists() else ""


def logged_client(server: str, mark: str) -> str | None:
    """The client address the server logged for the request to ``mark``."""
    for line in log_text(server).splitlines():
        if f" {mark} " in line or line.endswith(f" {mark}"):
            first = line.split()[0]
            if server == "haproxy":  # httplog: CLIENT:PORT first
                first = first.rsplit(":", 1)[0]
            return first
    return None


def seen_as(server: str, src: str) -> str | None:
    mark = f"/m{next(_marks)}"
    dst = f"[{SERVER[1]}]" if ":" in src else SERVER[0]
    argv = ["ip", "netns", "exec", "cfc", "curl", "-s", "-o", "/dev/null", "--max-time", "3"]
    argv += ["--interface", src, "-H", f"CF-Connecting-IP: {CLAIM}"]
    argv += ["-H", f"X-Forwarded-For: {CLAIM}", f"http://{dst}{mark}"]
    sh(*argv, timeout=20)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        got = logged_client(server, mark)
        if got is not None:
            return got
        time.sleep(0.1)
    return None


def processes(name: str) -> dict[str, Any]:
    """The unit's main pid and its children (new workers after a graceful reload)."""
    main = sh("systemctl", "show", name, "-p", "MainPID", "--value").stdout.strip()
    kids = Path(f"/proc/{main}/task/{main}/children")
    pids = sorted(int(p) for p in kids.read_text().split()) if kids.exists() else []
    return {"main": main, "pids": pids}


def wait_up(name: str) -> None:
    def up() -> bool:
        probe = ["ip", "netns", "exec", "cfc", "curl", "-s", "-o", "/dev/null", "--max-time", "1"]
        return sh(*probe, f"http://{SERVER[0]}/up").returncode == 0

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not up():
        time.sleep(0.2)


def one(server: str) -> dict[str, Any]:
    spec = SERVERS[server]
    rec: dict[str, Any] = {}
    proc = sh("systemctl", "start", spec["unit"])
    rec["server_start"] = (proc.returncode, proc.stderr)
    wait_up(server)
    rec["before"] = processes(spec["unit"])
    rec["run"] = start_service(SOURCE + f"[backends.{server}]\n")
    if server in ("nginx", "apache"):
        # A graceful reload starts new workers, then tells the old ones to stop;
        # until they have, an old worker can still take a connection with the old
        # list (a few ms: this probe's first request once lost that race).
        old = set(rec["before"]["pids"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            now = set(processes(spec["unit"])["pids"])
            if now - old and not now & old:
                break
            time.sleep(0.1)
    rec["after"] = processes(spec["unit"])
    rec["server_unit"] = unit(spec["unit"])
    path = Path(spec["list"])
    rec["list"] = path.read_text() if path.exists() else None
    rec["seen"] = {src: seen_as(server, src) for src in (*CF, *OUTSIDE)}
    sh("systemctl", "stop", spec["unit"])
    return rec


def run(res: dict[str, Any]) -> None:
    client_namespace()
    for server in SERVERS:
        try:
            res[server] = one(server)
        except Exception:  # the other servers still run
            res[server] = {"error": traceback.format_exc()}
    res["security"] = exposure("cfallow.service")


def main() -> None:
    record("realip", run, {})


if __name__ == "__main__":
    main()
