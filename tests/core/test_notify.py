"""A Cloudflare change is news: the warning with its diff, and ``notify_url``
(one JSON POST per run that changed something or failed; bounded; never fatal)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support.cli_helpers import Result, fixture_text, run_cli, run_proc, write_config

API = "/client/v4/ips"


class Env:
    def __init__(
        self, tmp: Path, server: HTTPServer, capsys: pytest.CaptureFixture[str], hook: str
    ) -> None:
        self.server, self.capsys, self.tmp = server, capsys, tmp
        self.config = write_config(
            tmp / "config.toml",
            server.url_for("").rstrip("/"),
            backends=f'[backends.fake]\npath = "{tmp / "target.json"}"\n',
            attempts=1,
        )
        text = self.config.read_text()
        self.config.write_text(f'notify_url = "{hook}"\nnotify_timeout = 1\n' + text)

    def serve(self, body: str, status: int = 200) -> None:
        self.server.clear()
        self.server.expect_request(API).respond_with_data(body, status=status)
        self.server.expect_request("/ips-v4").respond_with_data("", status=404)
        self.server.expect_request("/hook", method="POST").respond_with_data("ok")

    def sync(self, *args: str) -> Result:
        base = ("--config", str(self.config), "--state-dir", str(self.tmp / "state"))
        return run_cli(self.capsys, *base, "sync", *args)

    def posts(self) -> list[dict[str, object]]:
        return [json.loads(req.data) for req, _ in self.server.log if req.path == "/hook"]


@pytest.fixture
def env(tmp_path: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]) -> Env:
    return Env(tmp_path, httpserver, capsys, httpserver.url_for("/hook"))


def test_one_post_per_run_that_changed_or_failed_none_otherwise(env: Env) -> None:
    env.serve(fixture_text("api-ips-2021-03.json"))
    assert env.sync().rc == 0
    (first,) = env.posts()
    assert first["exit_code"] == 0 and first["changed"] is True
    assert first["fetch_error"] is None and first["host"]

    env.serve(fixture_text("api-ips-2021-03.json"))
    assert env.sync().rc == 0
    assert env.posts() == []  # nothing changed: nothing to say

    env.serve(fixture_text("api-ips.json"))  # Cloudflare's 2021-04-08 change
    r = env.sync()
    assert r.rc == 0
    assert (
        "cfallow: warning: cloudflare list changed: +104.16.0.0/13 +104.24.0.0/14 -104.16.0.0/12"
        in r.err.splitlines()
    )
    (news,) = env.posts()
    assert news["cloudflare_change"] == {
        "add": ["104.16.0.0/13", "104.24.0.0/14"],
        "remove": ["104.16.0.0/12"],
    }

    env.serve("", status=500)
    assert env.sync().rc == 4
    (failed,) = env.posts()
    assert failed["exit_code"] == 4 and "HTTP 500" in str(failed["fetch_error"])
    assert failed["source"]["kind"] == "last-known-good"  # type: ignore[index]


def test_dry_runs_never_notify(env: Env) -> None:
    env.serve(fixture_text("api-ips.json"))
    assert env.sync("--dry-run").rc == 0
    assert env.posts() == []


def test_a_hook_that_never_answers_costs_at_most_the_timeout(
    tmp_path: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection in the kernel, never answers
    try:
        env = Env(tmp_path, httpserver, capsys, f"http://127.0.0.1:{silent.getsockname()[1]}/h")
        env.serve(fixture_text("api-ips.json"))
        start = time.monotonic()
        r = env.sync()
        assert time.monotonic() - start < 5
        assert r.rc == 0
        assert re.search(r"notify_url: not delivered \((timed out|no answer within 1 s)\)", r.err)
    finally:
        silent.close()


def test_a_failing_hook_is_a_warning_not_a_failure(
    tmp_path: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    env = Env(tmp_path, httpserver, capsys, httpserver.url_for("/broken"))
    env.serve(fixture_text("api-ips.json"))
    env.server.expect_request("/broken").respond_with_data("no", status=500)
    r = env.sync()
    assert r.rc == 0 and "notify_url: not delivered (HTTP Error 500" in r.err


@pytest.mark.parametrize(
    "url", ["http://example.com/hook", "ftp://127.0.0.1/x", "file:///etc/passwd", "https://"]
)
def test_notify_url_is_https_or_loopback_http(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'notify_url = "{url}"\n')
    r = run_cli(capsys, "--config", str(conf), "sync", "--dry-run")
    assert r.rc == 2 and "notify_url: only https://" in r.err


def test_metrics_keep_the_failed_fetch_and_the_successful_apply_apart(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    prom = env.tmp / "cfallow.prom"
    env.config.write_text(f'metrics_file = "{prom}"\n' + env.config.read_text())

    def samples() -> dict[str, float]:
        fams = text_string_to_metric_families(prom.read_text())
        return {s.name: s.value for fam in fams for s in fam.samples if not s.labels}

    env.serve(fixture_text("api-ips-2021-03.json"))
    assert env.sync().rc == 0
    first = samples()
    assert first["cfallow_source_fetch_success"] == 1 and first["cfallow_apply_success"] == 1
    assert "cfallow_source_last_change_timestamp_seconds" not in first  # nothing seen yet

    monkeypatch.setenv("CFALLOW_NOW", "1800000000")
    env.serve(fixture_text("api-ips.json"))
    assert env.sync().rc == 0
    assert samples()["cfallow_source_last_change_timestamp_seconds"] == 1_800_000_000

    monkeypatch.setenv("CFALLOW_NOW", "1800000600")
    env.serve("", status=500)
    assert env.sync().rc == 4
    held = samples()
    assert held["cfallow_source_fetch_success"] == 0  # the fetch failed
    assert held["cfallow_apply_success"] == 1  # the backends are at the last-known-good list
    assert held["cfallow_last_run_success"] == 0  # the run as a whole (exit 4)
    assert held["cfallow_source_last_change_timestamp_seconds"] == 1_800_000_000

    assert env.sync("--offline").rc == 0
    offline = samples()
    assert "cfallow_source_fetch_success" not in offline  # no fetch at all
    assert offline["cfallow_last_run_success"] == 1


def test_a_loopback_hook_never_goes_through_the_environments_proxy(env: Env) -> None:
    contacted: list[bytes] = []
    proxy = socket.socket()
    proxy.bind(("127.0.0.1", 0))
    proxy.listen(8)

    def stand_in() -> None:  # a proxy that records whoever connects, answers nothing
        while True:
            try:
                conn, _ = proxy.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    contacted.append(conn.recv(4096))
                except OSError:
                    contacted.append(b"")

    thread = threading.Thread(target=stand_in, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{proxy.getsockname()[1]}"
    proxied = {k: url for k in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY")}
    proxied |= {"all_proxy": url, "ALL_PROXY": url, "no_proxy": "", "NO_PROXY": ""}
    try:
        env.serve(fixture_text("api-ips.json"))
        base = ("--config", str(env.config), "--state-dir", str(env.tmp / "state"))
        r = run_proc(*base, "sync", env=proxied)
        assert r.rc == 0, r.err
        assert "notify_url" not in r.err
        (post,) = env.posts()
        assert post["changed"] is True
    finally:
        with contextlib.suppress(OSError):
            proxy.shutdown(socket.SHUT_RDWR)  # wakes the accept
        proxy.close()
        thread.join(5)
    assert contacted == []
