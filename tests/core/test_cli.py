"""The CLI end to end: real HTTP server on 127.0.0.1, the fake backend plugin, a temp state dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support.cli_helpers import Result, fixture_text, run_cli, run_proc, write_config

from cfallow.fetch.state import State

API = "/client/v4/ips"


class Env:
    """A config + state dir + fake target, served by ``httpserver``."""

    def __init__(self, tmp: Path, server: HTTPServer, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp, self.server, self.capsys = tmp, server, capsys
        self.target = tmp / "target.json"
        self.state = tmp / "state"
        self.config = write_config(
            tmp / "config.toml",
            server.url_for("").rstrip("/"),
            backends=f'[backends.fake]\npath = "{self.target}"\n',
        )

    def serve_api(
        self, body: str | bytes, status: int = 200, ctype: str = "application/json"
    ) -> None:
        self.server.clear()
        self.server.expect_request(API).respond_with_data(body, status=status, content_type=ctype)

    def serve_text(self, v4: str, v6: str, ctype: str = "text/plain") -> None:
        self.server.expect_request("/ips-v4").respond_with_data(v4, content_type=ctype)
        self.server.expect_request("/ips-v6").respond_with_data(v6, content_type=ctype)

    def cli(self, *args: str) -> Result:
        return run_cli(
            self.capsys, "--config", str(self.config), "--state-dir", str(self.state), *args
        )

    def owned(self) -> list[str]:
        data = json.loads(self.target.read_text())
        return list(data["owned"])

    def snapshot(self) -> dict[str, tuple[bytes, int]]:
        """The target and the state (not the fetch log, which records every attempt, nor
        the record of repeated warnings)."""
        files = (
            [self.target, *sorted(self.state.glob("*"))] if self.state.exists() else [self.target]
        )
        files = [p for p in files if p.name not in ("fetch.json", "warnings.json")]
        return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in files if p.exists()}


@pytest.fixture
def env(tmp_path: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]) -> Env:
    e = Env(tmp_path, httpserver, capsys)
    e.serve_api(fixture_text("api-ips.json"))
    return e


def test_dry_run_prints_the_plan_and_writes_nothing(env: Env) -> None:
    r = env.cli("sync", "--dry-run")
    assert r.rc == 0, r.err
    # the summary line says it is a dry run; the entries follow it
    assert r.out.splitlines()[1] == "fake: +22 -0 =0 would change (dry run)"
    assert "  + 173.245.48.0/20" in r.out and "  + 2c0f:f248::/32" in r.out
    assert not env.target.exists()
    assert not env.state.exists(), "a dry run created the state directory"


def test_sync_then_sync_reports_no_changes(env: Env) -> None:
    first = env.cli("sync", "--json")
    assert first.rc == 0, first.err
    doc = first.json()
    assert doc["changed"] is True and doc["dry_run"] is False
    assert (
        doc["source"]["kind"] == "live"
        and doc["source"]["etag"] == "38f79d050aa027e3be3865e495dcc9bc"
    )
    assert len(doc["source"]["ipv4"]) == 15 and len(doc["source"]["ipv6"]) == 7
    (fake,) = doc["backends"]
    assert fake["name"] == "fake" and fake["current"] == [] and len(fake["add"]) == 22
    assert fake["error"] is None
    assert len(env.owned()) == 22
    assert "fake: +22 -0 =0" in first.err  # the summary line the journal keeps

    before = env.snapshot()
    second = env.cli("sync")
    assert second.rc == 0, second.err
    assert "fake: +0 -0 =22 in sync" in second.out.splitlines() and "+ " not in second.out
    after = env.snapshot()
    assert after[str(env.target)] == before[str(env.target)]


def test_2021_change_replayed(env: Env) -> None:
    env.serve_api(fixture_text("api-ips-2021-03.json"))
    assert env.cli("sync").rc == 0
    assert "104.16.0.0/12" in env.owned()
    env.serve_api(fixture_text("api-ips.json"))
    r = env.cli("sync", "--json")
    (fake,) = r.json()["backends"]
    assert fake["add"] == ["104.16.0.0/13", "104.24.0.0/14"]
    assert fake["remove"] == ["104.16.0.0/12"]
    assert "104.16.0.0/12" not in env.owned()


def test_status_is_read_only_and_exits_3_on_drift(env: Env) -> None:
    r = env.cli("status", "--json")
    assert r.rc == 3 and r.json()["backends"][0]["changed"] is True
    assert not env.target.exists() and not env.state.exists()
    assert env.cli("sync").rc == 0
    assert env.cli("status").rc == 0


def test_remove_removes_only_what_cfallow_owns(env: Env) -> None:
    env.target.write_text(json.dumps({"foreign": ["173.245.48.0/20", "8.8.8.0/24"]}))
    assert env.cli("sync").rc == 0
    assert "173.245.48.0/20" not in env.owned()  # the admin already allows it
    assert len(env.owned()) == 21
    dry = env.cli("remove", "--dry-run", "--json")
    assert dry.rc == 0 and len(dry.json()["backends"][0]["remove"]) == 21
    assert len(env.owned()) == 21
    assert env.cli("remove").rc == 0
    data = json.loads(env.target.read_text())
    assert data["owned"] == [] and data["foreign"] == ["173.245.48.0/20", "8.8.8.0/24"]


BAD_API = {
    "html challenge page (200)": (
        "<!DOCTYPE html><html><title>Just a moment...</title>",
        "text/html",
        "not JSON",
    ),
    "empty body": ("", "application/json", "not JSON"),
    "truncated JSON": (fixture_text("api-ips.json")[:300], "application/json", "not JSON"),
    "success false": (
        json.dumps({"result": None, "success": False, "errors": [{"code": 10000}], "messages": []}),
        "application/json",
        "success is not true",
    ),
    "IPv6 in the IPv4 list": (
        fixture_text("api-ips.json").replace('"131.0.72.0/22"', '"2400:cb00::/32"'),
        "application/json",
        "not an IPv4 CIDR",
    ),
    "default route": (
        fixture_text("api-ips.json").replace('"131.0.72.0/22"', '"0.0.0.0/0"'),
        "application/json",
        "default route",
    ),
    "private range": (
        fixture_text("api-ips.json").replace('"131.0.72.0/22"', '"10.0.0.0/8"'),
        "application/json",
        "private",
    ),
    "host bits": (
        fixture_text("api-ips.json").replace('"131.0.72.0/22"', '"131.0.72.1/22"'),
        "application/json",
        "host bits",
    ),
    "10 MB body": ("[" * (10 << 20), "application/json", "1 MiB"),
}


@pytest.mark.parametrize("case", sorted(BAD_API))
def test_bad_api_input_is_refused_and_nothing_changes(env: Env, case: str) -> None:
    assert env.cli("sync").rc == 0  # a last-known-good list exists
    before = env.snapshot()
    body, ctype, reason = BAD_API[case]
    env.serve_api(body, ctype=ctype)
    env.server.expect_request("/ips-v4").respond_with_data("", status=404)
    for args in (("sync",), ("sync", "--dry-run"), ("ranges",)):
        r = env.cli(*args)
        assert r.rc == 4, (args, r.err)
        lines = r.err.strip().splitlines()
        # sync still holds the backends at the last-known-good list, and says so.
        held = ["backends held at the last-known-good list of"] if args[0] == "sync" else []
        assert len(lines) == 1 + len(held), lines
        assert reason in lines[0] and "/client/v4/ips" in lines[0]
        assert all(h in line for h, line in zip(held, lines[1:]))
    assert env.snapshot() == before


def test_glued_text_lists_are_refused(env: Env) -> None:
    assert env.cli("sync").rc == 0
    before = env.snapshot()
    env.serve_api("", status=500)
    glued = fixture_text("ips-v4.txt") + fixture_text("ips-v6.txt")
    assert "131.0.72.0/222400:cb00::/32" in glued
    env.serve_text(glued, fixture_text("ips-v6.txt"))
    r = env.cli("sync")
    assert r.rc == 4 and "131.0.72.0/222400:cb00::/32" in r.err and "/ips-v4" in r.err
    env.server.clear()
    env.serve_api("", status=500)
    env.serve_text("set_real_ip_from <!DOCTYPE html>;", "", ctype="text/html")
    r = env.cli("sync")
    assert r.rc == 4 and "HTML" in r.err
    assert env.snapshot() == before


def test_shrink_guard_refuses_then_force_accepts(env: Env) -> None:
    assert env.cli("sync").rc == 0
    before = env.snapshot()
    doc = json.loads(fixture_text("api-ips.json"))
    doc["result"]["ipv4_cidrs"] = doc["result"]["ipv4_cidrs"][:2]
    env.serve_api(json.dumps(doc))
    r = env.cli("sync")
    assert r.rc == 4 and "13 of 15 known IPv4 ranges would disappear" in r.err
    assert env.snapshot() == before
    forced = env.cli("sync", "--force", "--json")
    assert forced.rc == 0 and len(forced.json()["backends"][0]["remove"]) == 13
    assert len(env.owned()) == 9


def test_text_fallback_end_to_end(env: Env) -> None:
    env.serve_api("", status=503)
    env.serve_text(fixture_text("ips-v4.txt"), fixture_text("ips-v6.txt"))
    r = env.cli("sync", "--json")
    assert r.rc == 0, r.err
    assert r.json()["source"]["url"].endswith("/ips-v4") and len(env.owned()) == 22


def test_first_run_falls_back_to_the_snapshot_later_runs_do_not(env: Env) -> None:
    env.serve_api("", status=503)
    env.server.expect_request("/ips-v4").respond_with_data("", status=503)
    r = env.cli("sync", "--json")
    assert r.rc == 0, r.err
    assert r.json()["source"]["kind"] == "bundled" and len(env.owned()) == 22
    assert "using the bundled snapshot of" in r.err
    assert not (env.state / "last-known-good.json").exists()  # a snapshot is not a live list
    env.serve_api(fixture_text("api-ips.json"))
    assert env.cli("sync").rc == 0
    env.serve_api("", status=503)
    env.server.expect_request("/ips-v4").respond_with_data("", status=503)
    before = env.snapshot()
    r = env.cli("sync")
    assert r.rc == 4 and "HTTP 503" in r.err
    assert env.snapshot() == before


def test_bundled_source_needs_no_network(env: Env) -> None:
    env.server.clear()
    r = env.cli("sync", "--source", "bundled", "--dry-run", "--json")
    assert r.rc == 0 and r.json()["source"]["kind"] == "bundled"
    assert len(env.server.log) == 0


def test_state_file_is_written_atomically_and_garbage_is_tolerated(env: Env) -> None:
    assert env.cli("sync").rc == 0
    lkg = json.loads((env.state / "last-known-good.json").read_text())
    assert lkg["etag"] == "38f79d050aa027e3be3865e495dcc9bc" and len(lkg["ipv4"]) == 15
    assert [p.name for p in env.state.iterdir() if p.name.startswith(".")] == []
    (env.state / "last-known-good.json").write_text('{"ipv4": ["10.0')
    assert State(env.state).load() is None
    r = env.cli("sync")
    assert r.rc == 0 and "ignoring unreadable state file" in r.err


def test_read_only_state_dir_is_a_clear_error_and_nothing_changes(env: Env, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], check=False)
    if (
        os.access(ro, os.W_OK)
        and subprocess.run(["findmnt", str(ro)], check=False, capture_output=True).returncode
    ):
        ro.chmod(0o500)  # not root, or no mount: plain permissions
    try:
        r = run_cli(
            env.capsys, "--config", str(env.config), "--state-dir", str(ro / "state"), "sync"
        )
        assert r.rc == 1 and "cannot open lock" in r.err
        assert not env.target.exists()
    finally:
        subprocess.run(["umount", str(ro)], check=False, capture_output=True)


def test_lock_serialises_and_times_out(env: Env) -> None:
    state = State(env.state)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with state.lock(5):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    try:
        start = time.monotonic()
        r = env.cli("sync", "--lock-timeout", "0.3")
        assert r.rc == 1 and "another cfallow run holds" in r.err
        assert time.monotonic() - start < 3
        assert not env.target.exists()
        assert env.cli("sync", "--dry-run").rc == 0  # dry runs do not take the lock
        assert env.cli("status").rc == 3
    finally:
        release.set()
        t.join()
    assert env.cli("sync").rc == 0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("[source]\ntimeout = 'x'\n", "timeout: expected a number"),
        ("[source]\nbogus = 1\n", "unknown key: bogus"),
        ("wat = 1\n", "unknown key: wat"),
        ("[backends.fake]\nbogus = 1\n", "[backends.fake] unknown key: bogus"),
        ("[backends.nope]\n", "unknown backend 'nope'"),
        ("[source\n", "invalid TOML"),
        ("[source]\nmax_shrink = 2\n", "max_shrink"),
        ("[backends.fake]\nenabled = false\n", "no backend is enabled"),
    ],
)
def test_config_errors_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(config)
    r = run_cli(
        capsys,
        "--config",
        str(path),
        "--state-dir",
        str(tmp_path / "s"),
        "sync",
        "--source",
        "bundled",
        "--dry-run",
    )
    assert r.rc == 2 and message in r.err, r.err


def test_missing_explicit_config_and_bad_usage_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = run_cli(capsys, "--config", str(tmp_path / "absent.toml"), "backends")
    assert r.rc == 2 and "config file not found" in r.err
    assert run_cli(capsys, "sync", "--bogus").rc == 2
    assert run_cli(capsys, "frobnicate").rc == 2


def test_one_failing_backend_does_not_stop_the_others(env: Env) -> None:
    target2 = env.tmp / "target2.json"
    env.config.write_text(
        env.config.read_text().replace("[backends.fake]\n", '[backends.fake]\nfail = "plan"\n')
        + f'\n[backends.fake2]\npath = "{target2}"\n\n[backends.broken]\n'
    )
    r = env.cli("sync", "--json")
    assert r.rc == 1
    by_name = {b["name"]: b for b in r.json()["backends"]}
    assert by_name["fake"]["error"] == "fake: plan failed on purpose"
    assert by_name["broken"]["error"].startswith("plugin cannot be loaded: ModuleNotFoundError")
    assert by_name["fake2"]["error"] is None and by_name["fake2"]["changed"] is True
    assert len(json.loads(target2.read_text())["owned"]) == 22
    assert "cfallow: error: fake: fake: plan failed on purpose" in r.err
    assert "cfallow: error: broken: plugin cannot be loaded" in r.err


def test_fake_backend_failure_is_exit_1_and_reported(env: Env) -> None:
    env.config.write_text(
        env.config.read_text().replace("[backends.fake]\n", '[backends.fake]\nfail = "apply"\n')
    )
    r = env.cli("sync", "--json")
    assert r.rc == 1
    assert r.json()["backends"][0]["error"] == "fake: apply failed on purpose"
    assert "cfallow: error: fake: fake: apply failed on purpose" in r.err
    assert (env.state / "last-known-good.json").exists()


def test_python_m_and_console_script(tmp_path: Path) -> None:
    r = run_proc("--state-dir", str(tmp_path), "ranges", "--source", "bundled", "--json")
    assert r.rc == 0 and len(json.loads(r.out)["source"]["ipv4"]) == 15
    script = Path(sys.executable).parent / "cfallow"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("cfallow ")


def test_ranges_does_not_import_boto3_or_iptc(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cfallow", "ranges", "--source", "bundled"],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {
        line.split("|")[-1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if "|" in line
    }
    assert "cfallow" in imported
    assert "boto3" not in imported and "botocore" not in imported and "iptc" not in imported


def test_a_refused_list_is_a_failed_run_in_the_metrics(env: Env) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    prom = env.tmp / "cfallow.prom"
    env.config.write_text(f'metrics_file = "{prom}"\n' + env.config.read_text())

    def sample(name: str) -> float:
        for fam in text_string_to_metric_families(prom.read_text()):
            for s in fam.samples:
                if s.name == name and not s.labels:
                    return float(s.value)
        raise AssertionError(name)

    assert env.cli("sync").rc == 0
    ok_at = sample("cfallow_last_success_timestamp_seconds")
    assert sample("cfallow_last_run_success") == 1
    env.serve_api("<!DOCTYPE html>", ctype="text/html")
    assert env.cli("sync").rc == 4
    assert sample("cfallow_last_run_success") == 0
    assert sample("cfallow_last_success_timestamp_seconds") == ok_at
    assert sample("cfallow_last_run_timestamp_seconds") >= ok_at
