"""The JSON report is a stable contract: the whole documents, byte for byte.

One sequence of real CLI runs (a local Cloudflare, the test-only fake backend, a
fixed clock) covering every shape the report takes: a dry run, a first sync, a
status, Cloudflare's 2021 change, an offline run, a fetch held at last-known-good,
a failing backend, a removal and its dry run, ``ranges --json``, a refused list
with no last-known-good list. Pinned: stdout of each run, every ``notify_url``
body, the metrics file after each run that wrote it (run times masked: they are the wall
clock). The golden files are in ``golden/report/``; ``CFALLOW_GOLDEN=write``
rewrites them (and fails, so a rewrite is never a pass).
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support.cli_helpers import fixture_text, run_cli, write_config

GOLDEN = Path(__file__).resolve().parent / "golden" / "report"
API = "/client/v4/ips"
NOW = 1_800_000_000
#: Metrics whose values are the wall clock of the run (the rest, a 0 included, are pinned).
_CLOCK = re.compile(
    r"^(cfallow_(?:last_run_timestamp_seconds|last_success_timestamp_seconds|"
    r"source_age_seconds)) [1-9]\S*$",
    re.M,
)


class Lab:
    def __init__(
        self, tmp: Path, server: HTTPServer, capsys: pytest.CaptureFixture[str], name: str
    ) -> None:
        self.tmp, self.server, self.capsys = tmp, server, capsys
        self.base = server.url_for("").rstrip("/")
        self.state = tmp / f"state-{name}"
        self.metrics = tmp / f"{name}.prom"
        self.config = tmp / f"{name}.toml"
        self.write()
        self.out: dict[str, str] = {}

    def write(self, fail: str = "") -> None:
        backend = f'[backends.fake]\npath = "{self.tmp / "target.json"}"\n'
        if fail:
            backend += f'fail = "{fail}"\n'
        write_config(self.config, self.base, backends=backend, attempts=1)
        top = f'metrics_file = "{self.metrics}"\nnotify_url = "{self.base}/hook"\n'
        self.config.write_text(top + self.config.read_text())

    def serve(self, body: str, status: int = 200) -> None:
        self.server.clear()
        self.server.expect_request(API).respond_with_data(
            body, status=status, content_type="application/json"
        )
        self.server.expect_request("/ips-v4").respond_with_data("", status=404)
        self.server.expect_request("/ips-v6").respond_with_data("", status=404)
        self.server.expect_request("/hook", method="POST").respond_with_data("ok")

    def mask(self, text: str) -> str:
        return text.replace(self.base, "http://SERVER").replace(str(self.tmp), "/TMP")

    def run(self, name: str, rc: int, *args: str) -> None:
        hooks = len(self.posts())
        before = self.metrics.stat().st_mtime_ns if self.metrics.exists() else None
        r = run_cli(
            self.capsys, "--config", str(self.config), "--state-dir", str(self.state), *args
        )
        assert r.rc == rc, (name, r.err)
        self.out[f"{name}.json"] = self.mask(r.out)
        host = json.dumps(socket.gethostname())
        for i, body in enumerate(self.posts()[hooks:]):
            self.out[f"{name}.notify{i}.json"] = self.mask(body.replace(host, '"HOST"')) + "\n"
        if self.metrics.exists() and self.metrics.stat().st_mtime_ns != before:
            self.out[f"{name}.prom"] = _CLOCK.sub(r"\1 CLOCK", self.metrics.read_text())

    def posts(self) -> list[str]:
        return [req.data.decode() for req, _ in self.server.log if req.path == "/hook"]


def _check(found: dict[str, str]) -> None:
    if os.environ.get("CFALLOW_GOLDEN") == "write":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        for old in GOLDEN.iterdir():
            old.unlink()
        for name, text in found.items():
            (GOLDEN / name).write_text(text)
        pytest.fail(f"golden files rewritten in {GOLDEN}: rerun without CFALLOW_GOLDEN")
    assert sorted(found) == sorted(p.name for p in GOLDEN.iterdir())
    for name, text in found.items():
        assert text == (GOLDEN / name).read_text(), name


def test_the_report_documents_byte_for_byte(
    tmp_path: Path,
    httpserver: HTTPServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CFALLOW_NOW", str(NOW))
    lab = Lab(tmp_path, httpserver, capsys, "run")
    lab.serve(fixture_text("api-ips-2021-03.json"))
    lab.run("01-sync-dry-run", 0, "sync", "--json", "--dry-run")
    lab.run("02-sync-first", 0, "sync", "--json")
    lab.run("03-status", 0, "status", "--json")
    monkeypatch.setenv("CFALLOW_NOW", str(NOW + 3600))
    lab.serve(fixture_text("api-ips.json"))  # Cloudflare's 2021-04-08 change
    lab.run("04-status-drift", 3, "status", "--json")
    lab.run("05-sync-change", 0, "sync", "--json")
    lab.run("06-sync-offline", 0, "sync", "--json", "--offline")
    monkeypatch.setenv("CFALLOW_NOW", str(NOW + 7200))
    lab.serve("", status=500)
    lab.run("07-sync-held", 4, "sync", "--json")
    lab.run("08-ranges-lkg", 0, "ranges", "--json", "--source", "last-known-good")
    lab.serve(fixture_text("api-ips.json"))
    lab.run("09-remove-dry-run", 0, "remove", "--json", "--dry-run")
    lab.write(fail="apply")
    lab.run("10-remove-fails", 1, "remove", "--json")
    lab.write(fail="plan")
    lab.run("11-sync-plan-fails", 1, "sync", "--json")
    lab.write()
    lab.run("12-remove", 0, "remove", "--json")

    refused = Lab(tmp_path, httpserver, capsys, "refused")
    api = json.loads(fixture_text("api-ips.json"))
    api["result"]["ipv4_cidrs"] += [f"{i}.0.0.0/8" for i in (11, 12, 13, 14, 15)]
    refused.serve(json.dumps(api))
    refused.run("13-sync-refused", 4, "sync", "--json")
    _check({**lab.out, **refused.out})
