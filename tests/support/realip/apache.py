"""A private Apache (Debian's apache2, event MPM) for the real-IP tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from support.realip.lab import Server

MODULES = "/usr/lib/apache2/modules"


class Apache(Server):
    program = "apache2"
    name = "apache"

    def write_config(self) -> None:
        d = self.root
        (d / "conf.d").mkdir(exist_ok=True)
        os.chmod(d, 0o755)  # the children run as www-data
        self.conf = d / "httpd.conf"
        mods = "".join(
            f"LoadModule {m}_module {MODULES}/mod_{m}.so\n"
            for m in ("mpm_event", "authz_core", "status", "remoteip")
        )
        self.conf.write_text(
            f"ServerRoot {d}\nServerName localhost\nPidFile {d}/apache.pid\n"
            f"ErrorLog {d}/error.log\nLogLevel notice\nDefaultRuntimeDir {d}\n"
            f"Mutex file:{d} default\nListen {self.listen}:{self.port}\n"
            + (f"Listen [::]:{self.port}\n" if self.ns else "")
            + "User www-data\nGroup www-data\nStartServers 2\n"
            + mods
            + 'LogFormat "%a %U %{c}a" cfa\n'
            f"CustomLog {d}/access.log cfa\n"
            "<Location />\n    SetHandler server-status\n    Require all granted\n</Location>\n"
            f"IncludeOptional {d}/conf.d/*.conf\n"
        )
        self.reload_script = d / "reload"
        self.reload_script.write_text(
            f"#!/bin/sh\necho >> {d}/reloads.count\nexec apache2 -f {self.conf} -k graceful\n"
        )
        self.reload_script.chmod(0o755)

    @property
    def list_path(self) -> Path:
        return self.root / "cfallow-realip.list"

    @property
    def header_path(self) -> Path:
        return self.root / "conf.d" / "cfallow-realip.conf"

    def extra_paths(self) -> list[Path]:
        return [self.header_path]

    def start_argv(self) -> list[str]:
        return ["apache2", "-f", str(self.conf), "-k", "start"]

    def section(self) -> dict[str, Any]:
        return {
            "path": str(self.list_path),
            "header_file": str(self.header_path),
            "test_command": [
                "apache2",
                "-f",
                str(self.conf),
                "-t",
                "-D",
                "DUMP_INCLUDES",
                "-D",
                "DUMP_RUN_CFG",
            ],
            "reload_command": [str(self.reload_script)],
        }

    def error_log(self) -> Path:
        return self.root / "error.log"

    def master_pid(self) -> int:
        return int((self.root / "apache.pid").read_text().strip())

    def reloads(self) -> int:
        try:
            return len((self.root / "reloads.count").read_text().splitlines())
        except FileNotFoundError:
            return 0

    def access_lines(self) -> list[str]:
        try:
            return (self.root / "access.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def reload_by_hand(self) -> None:
        before = self.state()
        subprocess.run(
            ["apache2", "-f", str(self.conf), "-k", "graceful"], check=True, capture_output=True
        )
        self.reloaded(before)
