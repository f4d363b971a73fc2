"""What a new operator hits first: config errors, `cfallow check`, --json failures, -q.

The real CLI in-process, a real HTTP server on 127.0.0.1, the fake backend plugin.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support.cli_helpers import Result, fixture_text, run_cli, run_proc, write_config

API = "/client/v4/ips"
UNIT = Path(__file__).resolve().parents[2] / "systemd" / "cfallow.service"


class Lab:
    def __init__(self, tmp: Path, server: HTTPServer, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp, self.server, self.capsys = tmp, server, capsys
        self.target = tmp / "target.json"
        self.state = tmp / "state"
        self.config = tmp / "config.toml"
        self.write()

    def write(self, fake: str = "", top: str = "") -> None:
        write_config(
            self.config,
            self.server.url_for("").rstrip("/"),
            backends=f'[backends.fake]\npath = "{self.target}"\n{fake}',
        )
        if top:
            self.config.write_text(top + "\n" + self.config.read_text())

    def cli(self, *args: str) -> Result:
        return run_cli(
            self.capsys, "--config", str(self.config), "--state-dir", str(self.state), *args
        )


@pytest.fixture
def lab(tmp_path: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]) -> Lab:
    httpserver.expect_request(API).respond_with_data(
        fixture_text("api-ips.json"), content_type="application/json"
    )
    return Lab(tmp_path, httpserver, capsys)


def test_unknown_key_names_the_file_and_the_closest_key(lab: Lab) -> None:
    lab.write(fake="pth = 1\n")
    r = lab.cli("sync")
    assert r.rc == 2
    assert r.err.strip() == (
        f"cfallow: error: {lab.config}: [backends.fake] unknown key: pth (did you mean path?)"
    )
    assert not lab.state.exists(), "a config error created the state directory"
    assert not lab.target.exists()


def test_unknown_key_at_the_top_and_in_source(lab: Lab) -> None:
    lab.write(top='metric_file = "/x.prom"')
    r = lab.cli("sync")
    assert r.rc == 2
    assert "unknown key: metric_file (did you mean metrics_file?)" in r.err
    assert str(lab.config) in r.err


def test_a_backend_typo_wins_over_a_bad_state_dir(lab: Lab, tmp_path: Path) -> None:
    """A bad state dir used to hide the typo behind exit 1: the config is checked first."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    lab.write(fake="prots = [80]\n")
    r = run_cli(
        lab.capsys, "--config", str(lab.config), "--state-dir", str(blocker / "sub"), "sync"
    )
    assert r.rc == 2, r.err
    assert "unknown key: prots" in r.err


def test_a_typo_in_a_backend_not_selected_is_still_an_error(lab: Lab) -> None:
    lab.config.write_text(lab.config.read_text() + "\n[backends.fake2]\npaht = 1\n")
    r = lab.cli("sync", "--backend", "fake")
    assert r.rc == 2
    assert "[backends.fake2] unknown key: paht (did you mean path?)" in r.err


def test_unknown_backend_suggests_the_installed_one(lab: Lab) -> None:
    lab.config.write_text(lab.config.read_text() + "\n[backends.iptable]\n")
    r = lab.cli("status")
    assert r.rc == 2
    assert "unknown backend 'iptable' (did you mean iptables?)" in r.err


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("sync", "--json"), 2),  # config error
        (("status", "--json"), 2),
        (("remove", "--json"), 2),
        (("check", "--json"), 2),
        (("sync", "--json", "--no-such-flag"), 2),  # usage error
    ],
)
def test_json_failures_print_a_document(lab: Lab, args: tuple[str, ...], code: int) -> None:
    lab.write(fake="pth = 1\n")
    r = run_proc("--config", str(lab.config), "--state-dir", str(lab.state), *args)
    assert r.rc == code, r.err
    parsed = subprocess.run(
        [sys.executable, "-m", "json.tool"],
        input=r.out,
        capture_output=True,
        text=True,
        check=False,
    )
    assert parsed.returncode == 0, r.out
    doc = json.loads(r.out)
    assert doc["exit_code"] == code and doc["error"]


def test_json_refused_list_exit_4_prints_a_document(lab: Lab) -> None:
    lab.server.clear()
    lab.server.expect_request(API).respond_with_data("<html>", content_type="text/html")
    lab.server.expect_request("/ips-v4").respond_with_data("<html>")
    lab.server.expect_request("/ips-v6").respond_with_data("<html>")
    for args in (("ranges", "--json"), ("sync", "--json", "--dry-run")):
        r = lab.cli(*args)
        if args[0] == "sync":  # no last-known-good list yet: the bundled snapshot, exit 0
            assert r.rc == 0 and json.loads(r.out)["source"]["kind"] == "bundled"
            continue
        assert r.rc == 4
        doc = json.loads(r.out)
        assert doc["exit_code"] == 4 and "error" in doc


def test_a_backend_error_appears_once_in_text_mode(lab: Lab) -> None:
    lab.write(fake='fail = "apply"\n')
    r = lab.cli("sync")
    assert r.rc == 1
    both = r.out + r.err
    assert both.count("apply failed on purpose") == 1, both
    assert "cfallow: error: fake: fake: apply failed on purpose" in r.err
    assert "fake: failed" in r.out.splitlines()


def test_quiet_prints_only_the_summary_lines(lab: Lab) -> None:
    r = lab.cli("-q", "sync", "--dry-run")
    assert r.rc == 0, r.err
    assert r.out.splitlines() == ["fake: +22 -0 =0 would change (dry run)"]
    assert r.err == ""


def test_check_passes_on_a_good_setup(lab: Lab) -> None:
    r = lab.cli("check", "--unit", str(lab.tmp / "no-unit"))
    assert r.rc == 0, r.out
    assert "ok    backend fake: preflight passed" in r.out
    assert r.out.splitlines()[-1] == "check: all passed"
    assert not lab.state.exists(), "check created the state directory"


def test_check_fails_a_failing_preflight_and_a_bad_metrics_path(lab: Lab) -> None:
    lab.write(fake='fail = "check"\n', top=f'metrics_file = "{lab.tmp}/none/cfallow.prom"')
    r = lab.cli("check", "--json", "--unit", str(lab.tmp / "no-unit"))
    assert r.rc == 2
    doc = json.loads(r.out)
    bad = {c["what"]: c["detail"] for c in doc["checks"] if not c["ok"]}
    assert bad["backend fake"] == "fake: check failed on purpose"
    assert "does not exist" in bad["metrics_file"]


def test_check_compares_the_units_read_write_paths(lab: Lab, tmp_path: Path) -> None:
    """The shipped unit: a metrics dir outside ReadWritePaths is named, a drop-in fixes it."""
    metrics_dir = tmp_path / "textfile"
    metrics_dir.mkdir()
    lab.write(top=f'metrics_file = "{metrics_dir}/cfallow.prom"')
    unit_dir = tmp_path / "system"
    unit_dir.mkdir()
    unit = unit_dir / "cfallow.service"
    unit.write_text(UNIT.read_text())
    r = lab.cli("check", "--unit", str(unit))
    assert r.rc == 2
    assert (
        f"metrics_file directory {metrics_dir} is not in cfallow.service's ReadWritePaths" in r.out
    )
    dropin = unit_dir / "cfallow.service.d"
    dropin.mkdir()
    (dropin / "paths.conf").write_text(
        f"[Service]\nReadWritePaths=-{metrics_dir} -{lab.state} -{lab.target.parent}\n"
    )
    r = lab.cli("check", "--unit", str(unit))
    assert "metrics_file directory" not in r.out, r.out
    assert r.rc == 0, r.out


def test_remove_does_not_call_its_deletions_drift(lab: Lab) -> None:
    assert lab.cli("sync").rc == 0
    r = lab.cli("remove")
    assert r.rc == 0, r.err
    assert r.out.splitlines()[0] == "fake: +0 -22 =0 removed" and "drift" not in r.out
