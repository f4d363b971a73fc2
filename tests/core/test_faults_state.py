"""State-directory faults, end to end in a separate process (so "no traceback" is real).

A damaged last-known-good file is a warning and counts as no last-known-good
list; a read-only state directory is one clear error with nothing changed.
The real CLI runs against a local HTTP server and the test-only fake backend.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support import need_root, need_tool
from support.cli_helpers import Result, fixture_text, run_proc, write_config

LKG = "last-known-good.json"


class Box:
    """A config, state dir and fake target; the API answers from ``httpserver``."""

    def __init__(self, tmp: Path, server: HTTPServer) -> None:
        self.server = server
        self.target = tmp / "target.json"
        self.state = tmp / "state"
        self.config = write_config(
            tmp / "config.toml",
            server.url_for("").rstrip("/"),
            backends=f'[backends.fake]\npath = "{self.target}"\n',
            attempts=1,
        )

    def serve(self, api: str | None) -> None:
        self.server.clear()
        if api is not None:
            self.server.expect_request("/client/v4/ips").respond_with_data(
                api, content_type="application/json"
            )
        # Anything else (the text fallback too) answers 500: a source that is down.

    def sync(self, *args: str) -> Result:
        return run_proc("--config", str(self.config), "--state-dir", str(self.state), "sync", *args)

    def files(self) -> dict[str, bytes]:
        paths = [self.target, *sorted(self.state.rglob("*"))] if self.state.exists() else []
        return {str(p): p.read_bytes() for p in paths if p.is_file()}


@pytest.fixture
def box(tmp_path: Path, httpserver: HTTPServer) -> Box:
    b = Box(tmp_path, httpserver)
    b.serve(fixture_text("api-ips.json"))
    return b


def _no_traceback(r: Result) -> None:
    assert "Traceback" not in r.err and "Traceback" not in r.out, r.err


def _valid_lkg(box: Box) -> str:
    assert box.sync().rc == 0
    return (box.state / LKG).read_text()


DAMAGE: dict[str, Callable[[str], bytes]] = {
    "empty (truncated to 0)": lambda good: b"",
    "truncated mid-file": lambda good: good.encode()[: len(good) // 2],
    "binary garbage": lambda good: bytes(range(256)) * 4,
    "not UTF-8": lambda good: good.encode("utf-16"),
    "JSON of the wrong shape": lambda good: b'{"ipv4": "173.245.48.0/20", "ipv6": 7}',
    "a refused list": lambda good: good.replace("173.245.48.0/20", "10.0.0.0/8").encode(),
    "an empty IPv6 list": lambda good: json.dumps({**json.loads(good), "ipv6": []}).encode(),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_state_file_is_a_warning_and_then_replaced(box: Box, damage: str) -> None:
    good = _valid_lkg(box)
    (box.state / LKG).write_bytes(DAMAGE[damage](good))
    r = box.sync("--json")
    _no_traceback(r)
    assert r.rc == 0, r.err
    assert "warning: ignoring unreadable state file" in r.err
    assert str(box.state / LKG) in r.err
    assert json.loads((box.state / LKG).read_text())["ipv4"] == json.loads(good)["ipv4"]


@pytest.mark.parametrize("damage", ["truncated mid-file", "binary garbage"])
def test_damaged_state_file_counts_as_no_last_known_good(box: Box, damage: str) -> None:
    """Proof by behaviour: with the source down, only a run *without* a last-known-good
    list may fall back to the bundled snapshot; with a good one it must refuse (exit 4)."""
    good = _valid_lkg(box)
    box.serve(None)
    refused = box.sync()
    _no_traceback(refused)
    assert refused.rc == 4 and "no last-known-good" not in refused.err
    (box.state / LKG).write_bytes(DAMAGE[damage](good))
    r = box.sync()
    _no_traceback(r)
    assert r.rc == 0, r.err
    assert "ignoring unreadable state file" in r.err
    assert "no last-known-good list yet, using the bundled snapshot" in r.err


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A directory made read-only by a read-only bind mount (root ignores mode bits)."""
    need_root()
    need_tool("mount", "umount")
    ro = tmp_path / "ro"
    ro.mkdir()
    yield ro
    subprocess.run(["umount", str(ro)], check=False, capture_output=True)


def _mount_ro(path: Path) -> None:
    subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)], check=True)


@pytest.mark.parametrize("existing", [True, False], ids=["state-dir-present", "state-dir-absent"])
def test_read_only_state_dir_is_one_clear_error_and_nothing_changes(
    box: Box, read_only: Path, existing: bool
) -> None:
    box.state = read_only / "state"
    if existing:
        _valid_lkg(box)
        box.target.unlink()
        box.serve(fixture_text("api-ips-2021-03.json"))  # a change it must not make
    _mount_ro(read_only)
    before = box.files()
    r = box.sync()
    _no_traceback(r)
    assert r.rc == 1
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert lines == [f"cfallow: error: cannot open lock in {box.state}: Read-only file system"]
    assert box.files() == before and not box.target.exists()
    assert box.state.exists() == existing


def test_deeply_nested_state_file_is_a_warning(box: Box) -> None:
    _valid_lkg(box)
    (box.state / LKG).write_text("[" * 100_000)
    r = box.sync()
    _no_traceback(r)
    assert r.rc == 0 and "ignoring unreadable state file" in r.err
