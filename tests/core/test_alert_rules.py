"""contrib/prometheus/cfallow.rules.yml: ``promtool check rules``, then ``promtool test
rules`` with every alert firing and not firing, on series built from the metrics files the
real CLI wrote (a subprocess syncing from a local HTTP server into the test-only fake
backend): in step, a failing backend, held at last-known-good, Cloudflare's list changed,
a repaired hand edit, a timer that stopped."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pytest_httpserver import HTTPServer
from support import need, need_tool
from support.cli_helpers import fixture_text, run_proc
from support.promseries import TARGET, series

from cfallow.backend import load_class

RULES = Path(__file__).resolve().parents[2] / "contrib" / "prometheus" / "cfallow.rules.yml"
ALERTS = [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


@dataclass
class Runs:
    """One metrics file per kind of run (copies of what the CLI wrote)."""

    first: Path  # first sync, 2021-03 list: everything added
    ok: Path  # the same list again: in step
    changed: Path  # Cloudflare's 2021-04-08 change applied
    ok_after: Path  # in step after the change
    drift: Path  # a hand-deleted entry put back
    failed: Path  # the backend fails
    held: Path  # the fetch fails: held at the last-known-good list
    offline: Path  # --scheduled, not due: no fetch


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    try:
        load_class("fake")
    except Exception as exc:
        need(False, f"the test-only fake backend plugin ({exc})")
    tmp = tmp_path_factory.mktemp("alerts")
    metrics, target, kept = tmp / "cfallow.prom", tmp / "target.json", tmp / "kept"
    kept.mkdir()
    with HTTPServer() as server:
        base = server.url_for("").rstrip("/")

        def run(name: str, fixture: str | None, *extra: str, fail: str = "", rc: int = 0) -> Path:
            server.clear()
            if fixture is not None:
                server.expect_request("/client/v4/ips").respond_with_data(
                    fixture_text(fixture), content_type="application/json"
                )
            config = tmp / "config.toml"
            config.write_text(
                f'metrics_file = "{metrics}"\n'
                f'[source]\napi_url = "{base}/client/v4/ips"\n'
                f'text_urls = ["{base}/ips-v4", "{base}/ips-v6"]\nattempts = 1\n'
                f'[backends.fake]\npath = "{target}"\n' + (f'fail = "{fail}"\n' if fail else "")
            )
            r = run_proc("--config", str(config), "--state-dir", str(tmp / "st"), "sync", *extra)
            assert r.rc == rc, r.err
            shutil.copy(metrics, kept / f"{name}.prom")
            return kept / f"{name}.prom"

        first = run("first", "api-ips-2021-03.json")
        ok = run("ok", "api-ips-2021-03.json")
        failed = run("failed", "api-ips-2021-03.json", fail="plan", rc=1)
        held = run("held", None, rc=4)  # every URL answers 500
        offline = run("offline", None, "--scheduled")  # the retry is not due yet
        changed = run("changed", "api-ips.json")
        ok_after = run("ok_after", "api-ips.json")
        data = json.loads(target.read_text())
        data["owned"] = data["owned"][1:]  # an admin deletes one of cfallow's entries
        target.write_text(json.dumps(data))
        drift = run("drift", "api-ips.json")
    yield Runs(first, ok, changed, ok_after, drift, failed, held, offline)


def _labels(extra: dict[str, str]) -> dict[str, str]:
    return {**dict(TARGET), **extra}


def _annotations(alert: str, labels: dict[str, str]) -> dict[str, str]:
    rule = next(
        r
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for r in g["rules"]
        if r["alert"] == alert
    )
    return {
        k: re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], v)
        for k, v in rule["annotations"].items()
    }


def _expect(at: str, firing: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """One alert_rule_test per alert at ``at``: those in ``firing`` with their labels,
    every other alert with none."""
    tests = []
    for alert in ALERTS:
        exp = []
        if alert in firing:
            labels = _labels(firing[alert])
            rule = next(
                r
                for g in yaml.safe_load(RULES.read_text())["groups"]
                for r in g["rules"]
                if r["alert"] == alert
            )
            exp.append(
                {
                    "exp_labels": {**labels, **rule["labels"]},
                    "exp_annotations": _annotations(alert, labels),
                }
            )
        tests.append({"eval_time": at, "alertname": alert, "exp_alerts": exp})
    return tests


def _promtool_test(tmp_path: Path, cases: list[dict[str, Any]]) -> None:
    doc = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": cases}
    path = tmp_path / "tests.yml"
    path.write_text(json.dumps(doc, indent=1))  # JSON is YAML
    proc = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _case(runs: Sequence[Path | None], checks: list[list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "interval": "4m",
        "input_series": series(runs),
        "alert_rule_test": [t for c in checks for t in c],
    }


FAKE = {"backend": "fake"}


def test_rules_pass_promtool_check() -> None:
    need_tool("promtool")
    proc = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in proc.stdout


def test_in_step_fires_nothing(runs: Runs, tmp_path: Path) -> None:
    need_tool("promtool")
    steps = 3 * 24 * 15  # three days of runs every 4 minutes
    case = _case(
        [runs.ok] * (steps + 1),
        [_expect(at, {}) for at in ("0m", "1h", "1d", "3d")],
    )
    _promtool_test(tmp_path, [case])


def test_stopped_timer_fires_not_running(runs: Runs, tmp_path: Path) -> None:
    need_tool("promtool")
    case = _case(
        [runs.ok] * 3 + [None] * 30,  # the timer stops after 8 minutes
        [_expect("30m", {}), _expect("40m", {"CfallowNotRunning": {}})],
    )
    _promtool_test(tmp_path, [case])


def test_failing_backend_fires_after_15_minutes(runs: Runs, tmp_path: Path) -> None:
    need_tool("promtool")
    case = _case(
        [runs.ok] + [runs.failed] * 20,
        [
            _expect("12m", {}),
            _expect("24m", {"CfallowSyncFailing": {}, "CfallowBackendFailing": FAKE}),
        ],
    )
    _promtool_test(tmp_path, [case])


def test_held_at_last_known_good(runs: Runs, tmp_path: Path) -> None:
    """The fetch fails on every retry; runs in between reconcile offline and write no
    fetch metric. Held after an hour without a good fetch (+30 min); the list goes stale
    after two days; the sync itself is not failing."""
    need_tool("promtool")
    steps = 3 * 24 * 15
    cycle = [runs.held, runs.offline] * (steps // 2)
    case = _case(
        [runs.ok, *cycle],
        [
            _expect("1h20m", {}),
            _expect("2h", {"CfallowHeldAtLastKnownGood": {}}),
            _expect("2d1h", {"CfallowHeldAtLastKnownGood": {}, "CfallowListStale": {}}),
        ],
    )
    _promtool_test(tmp_path, [case])


def test_cloudflare_change_fires_for_a_day_and_is_not_drift(runs: Runs, tmp_path: Path) -> None:
    need_tool("promtool")
    case = _case(
        [runs.ok, runs.changed] + [runs.ok_after] * 400,
        [
            _expect("0m", {}),
            _expect("4m", {"CfallowCloudflareListChanged": {}}),
            _expect("23h", {"CfallowCloudflareListChanged": {}}),
            _expect("25h", {}),
        ],
    )
    _promtool_test(tmp_path, [case])


def test_repaired_hand_edit_fires_drift_for_one_run(runs: Runs, tmp_path: Path) -> None:
    need_tool("promtool")
    case = _case(
        [runs.ok_after] * 20 + [runs.drift] + [runs.ok_after] * 5,
        [
            _expect("76m", {"CfallowCloudflareListChanged": {}}),
            _expect("80m", {"CfallowCloudflareListChanged": {}, "CfallowDrift": FAKE}),
            _expect("84m", {"CfallowCloudflareListChanged": {}}),
        ],
    )
    _promtool_test(tmp_path, [case])


def test_first_sync_counts_as_drift(runs: Runs, tmp_path: Path) -> None:
    """What the docs say: the first sync adds every entry, and no change of Cloudflare's
    has been seen yet."""
    need_tool("promtool")
    case = _case([runs.first, runs.ok], [_expect("0m", {"CfallowDrift": FAKE}), _expect("4m", {})])
    _promtool_test(tmp_path, [case])
