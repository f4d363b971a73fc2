"""Progress on stderr while cfallow waits, with the real CLI (a subprocess): a source
whose packets are dropped (a route in the test's namespace sends the API's address to a
peer that neither owns nor forwards it: no answer, no error), and a state lock another
process holds. The lines must come within 2 s of the wait starting (stderr is read as it
comes, up to a deadline) and name the attempt, the budget and the holder's pid; a run
that does not wait prints no such line."""

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


def _startup(prefix: Sequence[str]) -> float:
    """How long the CLI takes to start here (it waits for nothing): the 2 s count from
    when the wait begins, not from the fork."""
    start = time.monotonic()
    subprocess.run(
        [*prefix, sys.executable, "-m", "cfallow", "--version"], check=True, capture_output=True
    )
    return time.monotonic() - start


@contextmanager
def _spawn(argv: Sequence[str]) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()  # the process this test started, by its pid
        proc.communicate()


def _read_until(proc: subprocess.Popen[str], pattern: str, deadline: float) -> list[str]:
    """stderr's lines up to the first matching ``pattern``; fails at the deadline."""
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    lines: list[str] = []
    buf = ""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no line matching {pattern!r} in time; stderr so far: {lines}"
            if sel.select(left):
                chunk = os.read(proc.stderr.fileno(), 65536).decode()
                assert chunk, f"stderr closed before {pattern!r}: {lines}"
                buf += chunk
                *done, buf = buf.split("\n")
                lines += done
                if any(re.search(pattern, ln) for ln in done):
                    return lines


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
        prefix = ns_exec(ns)
        startup = _startup(prefix)
        argv = [*prefix, sys.executable, "-m", "cfallow", "--config", str(config)]
        argv += ["--state-dir", str(tmp_path / "state"), "sync", "--dry-run"]
        with _spawn(argv) as proc:
            begin = time.monotonic()
            url = f"https://{DROPPED}/client/v4/ips"
            first = _read_until(proc, "no answer yet", begin + startup + 2)
            # the budget: 2 attempts of 4 s, and at most 1 s between them
            assert (
                f"cfallow: {url}: attempt 1 of 2, no answer yet (up to 4 s each; 9 s in all)"
                in first
            )
            # the first attempt times out at 4 s; the retry line names the delay and the budget
            again = _read_until(proc, "attempt 1 of 2 failed", begin + startup + 4 + 2)
            line = next(ln for ln in again if "failed" in ln)
            assert re.fullmatch(
                rf"cfallow: {re.escape(url)}: attempt 1 of 2 failed \(.*no complete response "
                r"within 4 s\); attempt 2 in [0-9.]+ s \([0-9.]+ s of 9 s used\)",
                line,
            ), line
            _read_until(proc, "attempt 2 of 2, no answer yet", begin + startup + 4 + 1 + 2)


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
    startup = _startup([])
    fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another run's lock: this test process holds it
        argv = [
            sys.executable,
            "-m",
            "cfallow",
            "--config",
            str(config),
            "--state-dir",
            str(state),
            "sync",
            "--lock-timeout",
            "30",
        ]
        with _spawn(argv) as proc:
            lines = _read_until(proc, "waiting for", time.monotonic() + startup + 2)
            assert (
                f"cfallow: waiting for the lock {state / 'lock'}, held by pid {os.getpid()} "
                "(up to 30 s)"
            ) in lines
            fcntl.flock(fd, fcntl.LOCK_UN)  # the other run ends: this one goes on
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
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
