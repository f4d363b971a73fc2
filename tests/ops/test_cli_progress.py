"""Progress on stderr while cfallow waits, with the real CLI (a subprocess): a source
whose packets are dropped (a route in the test's namespace sends the API's address to a
peer that neither owns nor forwards it: no answer, no error), and a state lock another
process holds. The lines must come within 2 s of the wait starting (``-v`` says when it
starts; stderr is read as it comes, up to a deadline) and name the attempt, the budget and
the holder's pid; a run that does not wait prints no such line."""

from __future__ import annotations

import fcntl
import os
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support import namespace_pair, need, ns_exec, sh
from support.cli_helpers import fixture_text, run_proc, write_config

from cfallow.backend import load_class

DROPPED = "198.51.100.7"  # routed to the peer namespace, which drops it
PROGRESS = re.compile(r"attempt \d+ of \d+|waiting for ")


#: Generous: the CLI starting up under load is not what is measured.
STARTUP = 60.0


@contextmanager
def _spawn(argv: Sequence[str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()  # the process this test started, by its pid
        proc.communicate()


class Lines:
    """A process's stderr, line by line as it comes, each waited for up to a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.fd = proc.stderr.fileno()
        os.set_blocking(self.fd, False)
        self.pending: list[str] = []
        self.seen: list[str] = []
        self.buf = ""

    def until(self, pattern: str, deadline: float) -> tuple[str, float]:
        """The first line from here on matching ``pattern``, and when it was read; fails
        at the deadline."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.fd, selectors.EVENT_READ)
            while True:
                while self.pending:
                    line = self.pending.pop(0)
                    self.seen.append(line)
                    if re.search(pattern, line):
                        return line, time.monotonic()
                left = deadline - time.monotonic()
                assert left > 0, f"no line matching {pattern!r} in time; stderr: {self.seen}"
                if sel.select(left):
                    chunk = os.read(self.fd, 65536).decode()
                    assert chunk, f"stderr closed before {pattern!r}: {self.seen}"
                    *done, self.buf = (self.buf + chunk).split("\n")
                    self.pending += done


@pytest.mark.root
def test_fetch_from_a_dropping_source_says_attempt_and_budget(tmp_path: Path) -> None:
    try:
        load_class("fake")
    except Exception as exc:
        need(False, f"the test-only fake backend plugin ({exc})")
    with namespace_pair(["10.201.0.1/24"], ["10.201.0.2/24"], tag="drop") as (_peer, ns):
        sh(ns_exec(ns, "ip", "route", "add", f"{DROPPED}/32", "via", "10.201.0.1"))
        config = write_config(
            tmp_path / "config.toml",
            f"https://{DROPPED}",
            timeout=4,
            attempts=2,
            backoff=1,
            backends=f'[backends.fake]\npath = "{tmp_path / "target.json"}"\n',
        )
        argv = [*ns_exec(ns), sys.executable, "-m", "cfallow", "-v", "--config", str(config)]
        argv += ["--state-dir", str(tmp_path / "state"), "sync", "--dry-run"]
        with _spawn(argv) as proc:
            err = Lines(proc)
            url = f"https://{DROPPED}/client/v4/ips"
            # -v says when the fetch starts: the 2 s count from there, not from the fork
            _, begun = err.until(rf"{re.escape(url)}: fetching \(", time.monotonic() + STARTUP)
            first, _ = err.until("no answer yet", begun + 2)
            # the budget: 2 attempts of 4 s, and at most 1 s between them
            assert first == (
                f"cfallow: {url}: attempt 1 of 2, no answer yet (up to 4 s each; 9 s in all)"
            )
            # the first attempt times out at 4 s; the retry line names the delay and the budget
            line, _ = err.until("attempt 1 of 2 failed", begun + 4 + 2)
            assert re.fullmatch(
                rf"cfallow: {re.escape(url)}: attempt 1 of 2 failed \(.*no complete response "
                r"within 4 s\); attempt 2 in [0-9.]+ s \([0-9.]+ s of 9 s used\)",
                line,
            ), line
            err.until("attempt 2 of 2, no answer yet", begun + 4 + 1 + 2)


def _fake_config(tmp_path: Path, base: str) -> Path:
    return write_config(
        tmp_path / "config.toml",
        base,
        backends=f'[backends.fake]\npath = "{tmp_path / "target.json"}"\n',
    )


def _serve(server: HTTPServer) -> None:
    server.expect_request("/client/v4/ips").respond_with_data(
        fixture_text("api-ips.json"), content_type="application/json"
    )


def test_held_lock_names_the_holder_and_the_limit(tmp_path: Path, httpserver: HTTPServer) -> None:
    try:
        load_class("fake")
    except Exception as exc:
        need(False, f"the test-only fake backend plugin ({exc})")
    _serve(httpserver)
    config = _fake_config(tmp_path, httpserver.url_for("").rstrip("/"))
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another run's lock: this test process holds it
        argv = [sys.executable, "-m", "cfallow", "-v", "--config", str(config)]
        argv += ["--state-dir", str(state), "sync", "--lock-timeout", "30"]
        with _spawn(argv) as proc:
            err = Lines(proc)
            _, begun = err.until("taking the lock", time.monotonic() + STARTUP)  # -v
            line, _ = err.until("waiting for", begun + 2)
            assert line == (
                f"cfallow: waiting for the lock {state / 'lock'}, held by pid {os.getpid()} "
                "(up to 30 s)"
            )
            fcntl.flock(fd, fcntl.LOCK_UN)  # the other run ends: this one goes on
            _, rest = proc.communicate(timeout=60)
            assert proc.returncode == 0, rest
    finally:
        os.close(fd)


def test_nothing_waits_nothing_extra(tmp_path: Path, httpserver: HTTPServer) -> None:
    try:
        load_class("fake")
    except Exception as exc:
        need(False, f"the test-only fake backend plugin ({exc})")
    _serve(httpserver)
    config = _fake_config(tmp_path, httpserver.url_for("").rstrip("/"))
    r = run_proc("--config", str(config), "--state-dir", str(tmp_path / "state"), "sync")
    assert r.rc == 0, r.err
    assert not [ln for ln in r.err.splitlines() if PROGRESS.search(ln)], r.err
