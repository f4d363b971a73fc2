"""Stopped real-IP runs: the ``cfallow`` CLI as its own process, a gate in its test, kills.

A run is a real ``cfallow sync`` process (its own session, so every command it
started can be waited for) against a local source that publishes the
pre-2021 or today's list. The gate is the run's ``test_command``: the
server's own test, then, while the gate file exists and the list file holds
today's list (so after the rename, never in the baseline test), it marks
``ready`` and waits for the gate file to go. A run held there has renamed the
new list into place and not reloaded yet.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pytest_httpserver import HTTPServer

from cfallow.backend import Context, build
from cfallow.cli.commands import main
from support.cli_helpers import Result, fixture_text, run_proc
from support.realip.lab import Server, cli_config, wait_for

ERAS = {"old": "api-ips-2021-03.json", "new": "api-ips.json"}
#: In today's list, in no range of the pre-2021 one.
NEW_ONLY = "104.24.0.0/14"
_GATE = (
    '"$@" || exit $?\n'
    f'if [ -e "$GATE" ] && grep -q {NEW_ONLY} "$LIST"; then\n'
    '  : > "$READY"\n'
    '  while [ -e "$GATE" ]; do sleep 0.02; done\n'
    "fi\n"
)


class Runs:
    """The CLI runs of one test: config, state dir and source for ``server``."""

    def __init__(self, server: Server, tmp: Path, httpserver: HTTPServer, *, gate: bool) -> None:
        self.server = server
        self.httpserver = httpserver
        self.top = tmp / "runs"
        self.top.mkdir()
        self.gate = self.top / "gate"
        self.ready = self.top / "ready"
        extra: dict[str, Any] = {}
        if gate:
            argv = build(server.name, server.section(), Context()).test_command
            extra["test_command"] = ["env", *self._gate_env(), "sh", "-c", _GATE, "gate", *argv]
        base = httpserver.url_for("").rstrip("/")
        self.config = cli_config(self.top, base, server, **extra)
        self.state = self.top / "state"

    @property
    def pending(self) -> Path:
        """The pending-reload record next to the server's list."""
        path = self.server.list_path
        return path.with_name(f".{path.name}.cfallow-reload")

    def _gate_env(self) -> list[str]:
        paths = {"GATE": self.gate, "READY": self.ready, "LIST": self.server.list_path}
        return [f"{k}={v}" for k, v in paths.items()]

    def publish(self, era: str) -> None:
        self.httpserver.clear()
        self.httpserver.expect_request("/client/v4/ips").respond_with_data(
            fixture_text(ERAS[era]), content_type="application/json"
        )

    def argv(self, *args: str) -> list[str]:
        common = ["--config", str(self.config), "--state-dir", str(self.state)]
        return [sys.executable, "-m", "cfallow", *common, *args]

    def cli(self, *args: str) -> Result:
        """The CLI as its own process."""
        return run_proc(*self.argv(*args)[3:], timeout=120)

    def inproc(self, *args: str) -> int:
        """The same CLI entry point in this process (no interpreter start: many runs)."""
        return main(self.argv(*args)[3:])

    @property
    def log(self) -> Path:
        """What the started runs wrote to stderr (their warnings), one after another."""
        return self.top / "runs.log"

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """A ``cfallow sync`` in its own session (its commands can be waited for)."""
        with open(self.log, "ab") as err:
            return subprocess.Popen(
                self.argv("-q", "sync", *args),
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )

    def diagnosis(self) -> str:
        """The server's state and log, and the last warnings of the started runs."""
        said = self.log.read_text(errors="replace").splitlines()[-10:] if self.log.exists() else []
        return self.server.diagnosis() + "\nruns' stderr:\n" + "\n".join(said)

    def held(self) -> subprocess.Popen[bytes]:
        """A sync held between the rename and the reload (the gate closed)."""
        self.ready.unlink(missing_ok=True)
        self.gate.touch()
        proc = self.start()
        wait_for(lambda: self.ready.exists() or proc.poll() is not None, "the gate", 60)
        assert self.ready.exists(), f"the run ended before the gate (exit {proc.returncode})"
        return proc

    def open_gate(self) -> None:
        self.gate.unlink(missing_ok=True)


def session(sid: int) -> list[int]:
    """The pids still in session ``sid`` (a killed run's commands)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[-1].split()
        if len(rest) > 3 and rest[3] == str(sid):
            found.append(int(name))
    return found


def ended(proc: subprocess.Popen[bytes]) -> int:
    """Wait for a run and every command it started; its exit status (negative: a signal)."""
    code = proc.wait(120)
    wait_for(lambda: not session(proc.pid), "the killed run's commands to end", 60)
    return code


def settled(server: Server, before: tuple[int, frozenset[int]]) -> None:
    """After a reload since ``before``: wait until no worker of that generation is left.

    nginx and Apache answer on old workers for a moment after a reload; HAProxy
    (runtime API) and Caddy (one process) have no generations to wait for.
    """
    if server.name in ("nginx", "apache"):
        server.reloaded(before)
