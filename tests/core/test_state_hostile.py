"""The state directory and the metrics file under hostile conditions, end to end.

The real CLI runs as a separate process (so "no traceback" and "no hang" are
real) against pytest-httpserver on 127.0.0.1 and the test-only fake backend.
Faults are real: a full tmpfs, an immutable directory (``chattr +i``) set in
the middle of a run by the fake backend's ``after_apply`` hook, a FIFO, a
dangling symlink, a 300 MB sparse file, a world-writable directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pytest_httpserver import HTTPServer
from support import need, need_root, need_tool
from support.cfdata import CURRENT, OLD
from support.cli_helpers import Result, fixture_text, run_proc, write_config

from cfallow.fetch.cadence import FETCH_LOG

LKG = "last-known-good.json"


class Box:
    """Config, state dir, fake target and metrics file; the API answers from ``server``."""

    def __init__(self, tmp: Path, server: HTTPServer) -> None:
        self.tmp, self.server = tmp, server
        self.target = tmp / "target.json"
        self.state = tmp / "state"
        self.metrics = tmp / "textfile" / "cfallow.prom"
        self.metrics.parent.mkdir()
        self.configure()

    def configure(self, after_apply: list[str] | None = None, metrics: Path | None = None) -> None:
        backend = f'[backends.fake]\npath = "{self.target}"\n'
        if after_apply:
            backend += f"after_apply = {json.dumps(after_apply)}\n"
        write_config(self.tmp / "config.toml", self.server.url_for("").rstrip("/"), attempts=1)
        text = (self.tmp / "config.toml").read_text()
        top = f'metrics_file = "{metrics or self.metrics}"\n'
        (self.tmp / "config.toml").write_text(top + text + "\n" + backend)

    def serve(self, fixture: str) -> None:
        self.server.clear()
        self.server.expect_request("/client/v4/ips").respond_with_data(
            fixture_text(fixture), content_type="application/json"
        )

    def argv(self, *args: str) -> list[str]:
        return ["--config", str(self.tmp / "config.toml"), "--state-dir", str(self.state), *args]

    def sync(self, *args: str, timeout: float = 60) -> Result:
        r = run_proc(*self.argv("sync", *args), timeout=timeout)
        assert "Traceback" not in r.err, r.err
        return r

    def owned(self) -> set[str]:
        return set(json.loads(self.target.read_text())["owned"])

    def last_run_success(self) -> float:
        for fam in text_string_to_metric_families(self.metrics.read_text()):
            for s in fam.samples:
                if s.name == "cfallow_last_run_success":
                    return float(s.value)
        raise AssertionError("no cfallow_last_run_success sample")


@pytest.fixture
def box(tmp_path: Path, httpserver: HTTPServer) -> Box:
    b = Box(tmp_path, httpserver)
    b.serve("api-ips-2021-03.json")
    return b


def _strs(nets: frozenset) -> set[str]:  # type: ignore[type-arg]
    return {str(n) for n in nets}


def _errors(r: Result) -> list[str]:
    return [ln for ln in r.err.splitlines() if ln.startswith("cfallow: error:")]


# -- a full or failing state directory during a changing sync ----------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    need_root()
    need_tool("mount", "umount")
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(where)], check=True
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def _fill(directory: Path) -> None:
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


def test_a_full_state_dir_stops_a_changing_sync_before_anything_changes(
    box: Box, tiny_tmpfs: Path
) -> None:
    box.state = tiny_tmpfs / "state"
    assert box.sync().rc == 0 and box.owned() == _strs(OLD)
    target, lkg = box.target.read_bytes(), (box.state / LKG).read_bytes()
    _fill(tiny_tmpfs)
    box.serve("api-ips.json")  # Cloudflare changes the list
    r = box.sync()
    assert r.rc == 1
    assert _errors(r) == [
        f"cfallow: error: cannot write state in {box.state}: No space left on device"
    ]
    assert box.target.read_bytes() == target, "a backend changed though the state cannot be kept"
    assert (box.state / LKG).read_bytes() == lkg
    assert sorted(p.name for p in box.state.iterdir()) == [FETCH_LOG, LKG, "lock"]
    assert box.last_run_success() == 0
    (tiny_tmpfs / "filler").unlink()
    assert box.sync().rc == 0 and box.owned() == _strs(CURRENT)


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Path]:
    """``chattr +i`` on the state dir, done by the fake backend mid-run; undone afterwards."""
    need_root()
    need_tool("chattr")
    state = tmp_path / "state"
    state.mkdir()
    probe = subprocess.run(["chattr", "+i", str(state)], capture_output=True, check=False)
    need(probe.returncode == 0, f"chattr +i on {tmp_path}'s filesystem")
    subprocess.run(["chattr", "-i", str(state)], check=True)
    try:
        yield state
    finally:
        subprocess.run(["chattr", "-i", str(state)], check=False)


def test_a_state_dir_that_breaks_after_applying_still_reports_what_was_done(
    box: Box, immutable: Path
) -> None:
    assert box.sync().rc == 0
    box.configure(after_apply=["chattr", "+i", str(immutable)])
    box.serve("api-ips.json")
    r = box.sync("--json")
    assert r.rc == 1
    (fake,) = r.json()["backends"]  # the report is printed in full
    assert fake["add"] == ["104.16.0.0/13", "104.24.0.0/14"] and fake["remove"] == ["104.16.0.0/12"]
    assert fake["error"] is None
    assert _errors(r) == [
        f"cfallow: error: cannot record the last-known-good list in {immutable}: "
        "Operation not permitted"
    ]
    assert box.owned() == _strs(CURRENT)
    assert box.last_run_success() == 0, "metrics claim success though the state was not kept"
    subprocess.run(["chattr", "-i", str(immutable)], check=True)
    box.configure()
    assert box.sync().rc == 0
    saved = json.loads((immutable / LKG).read_text())
    assert set(saved["ipv4"]) | set(saved["ipv6"]) == _strs(CURRENT)
    assert sorted(p.name for p in immutable.iterdir()) == [FETCH_LOG, LKG, "lock"]


# -- state files: regular files only, no symlinks, 0600, bounded reads --------------------


def test_a_fifo_as_last_known_good_does_not_hang(box: Box) -> None:
    assert box.sync().rc == 0
    (box.state / LKG).unlink()
    os.mkfifo(box.state / LKG)
    r = box.sync(timeout=20)
    assert r.rc == 0, r.err
    assert f"ignoring unreadable state file {box.state / LKG} (not a regular file)" in r.err
    assert stat.S_ISREG((box.state / LKG).lstat().st_mode)


def test_a_dangling_lock_symlink_does_not_create_its_target(box: Box, tmp_path: Path) -> None:
    box.state.mkdir()
    victim = tmp_path / "victim"
    (box.state / "lock").symlink_to(victim)
    r = box.sync()
    assert r.rc == 1
    assert r.err.splitlines() == [
        f"cfallow: error: cannot open lock in {box.state}: "
        f"{box.state / 'lock'} is a symlink, not a regular file"
    ]
    assert not victim.exists() and not box.target.exists()


def test_a_fifo_as_lock_is_refused(box: Box) -> None:
    box.state.mkdir()
    os.mkfifo(box.state / "lock")
    r = box.sync(timeout=20)
    assert r.rc == 1 and len(r.err.splitlines()) == 1
    assert "lock is not a regular file" in r.err


def test_a_300_mb_state_file_is_not_read_whole(box: Box) -> None:
    assert box.sync().rc == 0
    with open(box.state / LKG, "r+b") as fh:
        fh.truncate(300 << 20)  # sparse: takes no disk space
    probe = (
        "import resource, subprocess, sys; "
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stderr.write(p.stderr); "
        "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-m", "cfallow", *box.argv("sync")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    rc, rss_kib = (int(x) for x in proc.stdout.split())
    assert rc == 0, proc.stderr
    assert "over the 1 MiB limit" in proc.stderr
    assert rss_kib < 150 * 1024, f"peak RSS {rss_kib} KiB: the file was read whole"
    assert (box.state / LKG).stat().st_size < 4096


def test_lock_and_state_files_are_0600_and_an_old_0644_lock_is_tightened(box: Box) -> None:
    box.state.mkdir()
    (box.state / "lock").touch(mode=0o644)
    os.chmod(box.state / "lock", 0o644)
    assert box.sync().rc == 0
    for name in ("lock", LKG):
        assert stat.S_IMODE((box.state / name).stat().st_mode) == 0o600, name


@pytest.mark.parametrize("mode", [0o777, 0o757, 0o1777], ids=oct)
def test_a_state_dir_writable_by_others_is_refused(box: Box, mode: int) -> None:
    box.state.mkdir()
    os.chmod(box.state, mode)
    for command in ("sync", "status"):
        r = run_proc(*box.argv(command))
        assert r.rc == 1, r.err
        assert r.err.splitlines() == [
            f"cfallow: error: refusing state directory {box.state}: writable by others "
            f"(mode {mode:04o}, owner uid {os.geteuid()}); "
            "make it owned by root and not group/world-writable"
        ]
    assert not box.target.exists()


# -- the metrics file ----------------------------------------------------------------------


def test_a_missing_metrics_directory_is_exit_2_before_any_backend_runs(box: Box) -> None:
    missing = box.tmp / "no-such-dir" / "cfallow.prom"
    box.configure(metrics=missing)
    r = box.sync()
    assert r.rc == 2
    assert r.err.splitlines() == [
        f"cfallow: error: metrics_file {missing}: directory {missing.parent} does not exist"
    ]
    assert not box.target.exists() and not box.state.exists()
    assert box.sync("--dry-run").rc == 0  # a dry run writes no metrics: not needed


def test_a_metrics_write_failure_is_one_line_and_hides_nothing(box: Box) -> None:
    box.configure(after_apply=["rm", "-r", str(box.metrics.parent)])
    r = box.sync()
    assert r.rc == 1
    assert "fake: +21 -0 =0" in r.out  # what the backend did is still reported
    assert _errors(r) == [
        f"cfallow: error: cannot write metrics_file {box.metrics}: No such file or directory"
    ]
    assert box.owned() == _strs(OLD)


def test_a_state_dir_that_is_a_file_is_one_line(box: Box) -> None:
    box.state.write_text("not a directory")
    for command, expect in (("status", "cannot read"), ("sync", "cannot open lock")):
        r = run_proc(*box.argv(command))
        assert r.rc == 1 and "Traceback" not in r.err, r.err
        (line,) = r.err.splitlines()
        assert line.startswith(f"cfallow: error: {expect}"), line
