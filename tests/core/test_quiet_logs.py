"""A warning that repeats run after run is logged in full when it starts and when it
ends, one short line in between (the real CLI, a subprocess; a local HTTP server that
fails and then answers; the test-only fake backend)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support import need
from support.cli_helpers import Result, fixture_text, run_proc, write_config

from cfallow.backend import load_class

Run = Callable[..., Result]


@pytest.fixture
def cli(tmp_path: Path, httpserver: HTTPServer) -> Run:
    try:
        load_class("fake")
    except Exception as exc:
        need(False, f"the test-only fake backend plugin ({exc})")
    config = write_config(
        tmp_path / "config.toml",
        httpserver.url_for("").rstrip("/"),
        attempts=1,
        backends=f'[backends.fake]\npath = "{tmp_path / "target.json"}"\n',
    )

    def run(*args: str, up: bool) -> Result:
        httpserver.clear()
        if up:
            httpserver.expect_request("/client/v4/ips").respond_with_data(
                fixture_text("api-ips.json"), content_type="application/json"
            )
        argv = ("--config", str(config), "--state-dir", str(tmp_path / "st"), *args)
        return run_proc(*argv)

    return run


def _warned(r: Result) -> list[str]:
    return [ln for ln in r.err.splitlines() if ": warning: " in ln or ": error: " in ln]


def test_a_failing_first_fetch_is_said_in_full_then_short_then_in_full_when_it_ends(
    cli: Run,
) -> None:
    first = cli("sync", up=False)
    assert first.rc == 0, first.err
    (full,) = _warned(first)
    assert full.startswith("cfallow: warning: live fetch failed (") and len(full) > 200
    assert "Cloudflare never reached from this host" in full
    for _ in range(2):
        again = cli("sync", up=False)
        (short,) = _warned(again)
        assert short.startswith(
            "cfallow: warning: live fetch still failing the same way; using the bundled "
            "snapshot of "
        )
        assert "runs; in full then)" in short and "/client/v4/ips" not in short, short
    # a dry run and a status say everything, every time (they record nothing)
    assert _warned(cli("sync", "--dry-run", up=False)) == [full]
    ended = cli("sync", up=True)
    assert ended.rc == 0, ended.err
    assert _warned(ended) == []
    (over,) = [ln for ln in ended.err.splitlines() if "no longer:" in ln]
    assert over.startswith("cfallow: no longer: live fetch failed (") and "3 runs" in over
    assert "no longer" not in cli("sync", up=True).err  # said once


def test_held_at_the_last_known_good_list_is_said_in_full_once(cli: Run) -> None:
    assert cli("sync", up=True).rc == 0
    first = cli("sync", up=False)
    assert first.rc == 4
    lines = _warned(first)
    assert len(lines) == 2 and "backends held at the last-known-good list of" in lines[1]
    again = cli("sync", up=False)
    assert again.rc == 4
    (short,) = _warned(again)
    assert short.startswith(
        "cfallow: error: live fetch still failing the same way; backends held at the "
        "last-known-good list of"
    ), short
    ended = cli("sync", up=True)
    assert ended.rc == 0 and "cfallow: no longer: " in ended.err, ended.err
