"""A private nginx for the real-IP tests."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from support.realip.lab import Server


class Nginx(Server):
    program = "nginx"
    name = "nginx"

    def write_config(self) -> None:
        d = self.root
        (d / "conf.d").mkdir(exist_ok=True)
        temps = " ".join(
            f"{k}_temp_path {d}/tmp-{k};"
            for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.conf = d / "nginx.conf"
        self.conf.write_text(
            f"pid {d}/nginx.pid;\n"
            f"error_log {d}/error.log notice;\n"
            "worker_processes 2;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            "    log_format cfa '$remote_addr $uri $realip_remote_addr';\n"
            f"    access_log {d}/access.log cfa;\n"
            f"    {temps}\n"
            f"    include {d}/conf.d/*.conf;\n"
            f"    server {{ listen {self.listen}:{self.port}; "
            + (f"listen [::]:{self.port}; " if self.ns else "")
            + 'location / { return 200 "ok\\n"; } }\n'
            "}\n"
        )

    @property
    def list_path(self) -> Path:
        return self.root / "conf.d" / "cfallow-realip.conf"

    @property
    def header_path(self) -> Path:
        return self.root / "conf.d" / "cfallow-realip-header.conf"

    def extra_paths(self) -> list[Path]:
        return [self.header_path]

    def options(self) -> list[str]:
        return ["-p", str(self.root), "-c", str(self.conf), "-e", str(self.root / "error.log")]

    def start_argv(self) -> list[str]:
        return ["nginx", *self.options()]

    def section(self) -> dict[str, Any]:
        return {
            "path": str(self.list_path),
            "header_file": str(self.header_path),
            "options": self.options(),
        }

    def error_log(self) -> Path:
        return self.root / "error.log"

    def master_pid(self) -> int:
        return int((self.root / "nginx.pid").read_text().strip())

    def reloads(self) -> int:
        try:
            return (self.root / "error.log").read_text().count("signal process started")
        except FileNotFoundError:
            return 0

    def access_lines(self) -> list[str]:
        try:
            return (self.root / "access.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def reload_by_hand(self) -> None:
        before = self.state()
        subprocess.run(["nginx", *self.options(), "-s", "reload"], check=True, capture_output=True)
        self.reloaded(before)
