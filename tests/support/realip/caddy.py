"""A private Caddy (``caddy run``, admin endpoint on a unix socket) for the real-IP tests.

Caddy 2.6.2 applies ``trusted_proxies`` in ``reverse_proxy``: the application
behind it (a small upstream that logs the first ``X-Forwarded-For`` entry)
sees the client Cloudflare reports only for requests from a trusted proxy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from support.realip.lab import Server, free_port, wait_for

UPSTREAM = Path(__file__).with_name("xff_upstream.py")


class Caddy(Server):
    program = "caddy"
    name = "caddy"
    sends_xff = True
    proc: subprocess.Popen[bytes] | None = None
    upstream: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:
        d = self.root
        self.up_port = free_port()
        (d / "conf.d").mkdir(exist_ok=True)
        self.conf = d / "Caddyfile"
        self.conf.write_text(
            "{\n"
            f"\tadmin unix/{d}/admin.sock\n"
            f"\tstorage file_system {d}/data\n"
            "}\n"
            f"http://:{self.port} {{\n"
            f"\tbind {self.listen}{' [::]' if self.ns else ''}\n"
            f"\treverse_proxy 127.0.0.1:{self.up_port} {{\n"
            f"\t\timport {d}/cfallow-realip*.caddy\n"
            "\t}\n"
            f"\timport {d}/conf.d/*.caddy\n"
            "}\n"
        )

    @property
    def list_path(self) -> Path:
        return self.root / "cfallow-realip.caddy"

    def env(self) -> dict[str, str]:
        d = str(self.root)
        return {"HOME": d, "XDG_CONFIG_HOME": f"{d}/config", "XDG_DATA_HOME": f"{d}/data"}

    def start_argv(self) -> list[str]:
        return ["caddy", "run", "--config", str(self.conf), "--adapter", "caddyfile"]

    def start(self) -> None:
        log = (self.root / "caddy.log").open("ab")
        up = [sys.executable, str(UPSTREAM), str(self.up_port), str(self.root / "upstream.log")]
        self.upstream = subprocess.Popen(self.argv(*up))
        env = {**os.environ, **self.env()}
        self.proc = subprocess.Popen(self.argv(*self.start_argv()), stdout=log, stderr=log, env=env)
        log.close()
        wait_for(self.ready, "caddy to listen")

    def stop(self) -> None:
        for proc in (self.proc, self.upstream):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(10)

    def section(self) -> dict[str, Any]:
        return {
            "path": str(self.list_path),
            "config": str(self.conf),
            "address": f"unix/{self.root}/admin.sock",
        }

    def master_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def reloads(self) -> int:
        try:
            return (self.root / "caddy.log").read_text().count('"uri":"/load"')
        except FileNotFoundError:
            return 0

    def access_lines(self) -> list[str]:
        try:
            return (self.root / "upstream.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def reload_by_hand(self) -> None:
        subprocess.run(
            [
                "caddy",
                "reload",
                *self.start_argv()[2:],
                "--address",
                f"unix/{self.root}/admin.sock",
            ],
            check=True,
            capture_output=True,
            env={**os.environ, **self.env()},
        )
