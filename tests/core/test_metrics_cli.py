"""``metrics_file`` end to end: the real CLI (subprocess) syncing from a local HTTP
server into the test-only fake backend; the file is read back with prometheus_client's
parser after each run and compared with what that run did."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from pytest_httpserver import HTTPServer
from support import need
from support.cfdata import ADDED_2021, CURRENT, OLD, REMOVED_2021
from support.cli_helpers import Result, fixture_text, run_proc

from cfallow.backend import load_class

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
FAKE = (("backend", "fake"),)


def read(path: Path) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(path.read_text())
        for s in fam.samples
    }


def test_metrics_file_follows_the_runs(tmp_path: Path, httpserver: HTTPServer) -> None:
    try:
        load_class("fake")
    except Exception as exc:
        need(False, f"the test-only fake backend plugin ({exc})")
    metrics = tmp_path / "textfile" / "cfallow.prom"
    metrics.parent.mkdir()
    base = httpserver.url_for("").rstrip("/")

    def sync(fixture: str, *extra: str, fail: str = "") -> tuple[Result, float, float]:
        httpserver.clear()
        httpserver.expect_request("/client/v4/ips").respond_with_data(
            fixture_text(fixture), content_type="application/json"
        )
        config = tmp_path / "config.toml"
        config.write_text(
            f'metrics_file = "{metrics}"\n'
            f'[source]\napi_url = "{base}/client/v4/ips"\n'
            f'text_urls = ["{base}/ips-v4", "{base}/ips-v6"]\nattempts = 1\n'
            f'[backends.fake]\npath = "{tmp_path / "target.json"}"\n'
            + (f'fail = "{fail}"\n' if fail else "")
        )
        start = time.time()
        result = run_proc("--config", str(config), "--state-dir", str(tmp_path / "st"), *extra)
        return result, start, time.time()

    # 1: first sync, Cloudflare's list as of 2021-03
    r, start, end = sync("api-ips-2021-03.json", "sync", "--json")
    assert r.rc == 0, r.err
    m = read(metrics)
    source = r.json()["source"]
    ran = m[("cfallow_last_run_timestamp_seconds", ())]
    assert start <= ran <= end
    assert m[("cfallow_last_run_success", ())] == 1
    assert m[("cfallow_last_success_timestamp_seconds", ())] == ran
    assert m[("cfallow_ranges", (("family", "ipv4"),))] == 14
    assert m[("cfallow_ranges", (("family", "ipv6"),))] == 7
    assert m[("cfallow_source_info", (("etag", source["etag"]), ("kind", "live")))] == 1
    assert m[("cfallow_source_fetched_timestamp_seconds", ())] == source["fetched_at"]
    assert 0 <= m[("cfallow_source_age_seconds", ())] == ran - source["fetched_at"]
    assert m[("cfallow_backend_changes_applied", (("action", "add"), *FAKE))] == len(OLD)
    assert m[("cfallow_backend_changes_applied", (("action", "remove"), *FAKE))] == 0
    assert m[("cfallow_backend_entries", FAKE)] == len(OLD)
    assert m[("cfallow_backend_failed", FAKE)] == 0
    first_success = ran

    # 2: the 2021-04-08 change: +2 -1
    r, _, _ = sync("api-ips.json", "sync")
    assert r.rc == 0, r.err
    m = read(metrics)
    assert m[("cfallow_ranges", (("family", "ipv4"),))] == 15
    assert m[("cfallow_backend_changes_applied", (("action", "add"), *FAKE))] == len(ADDED_2021)
    remove = ("cfallow_backend_changes_applied", (("action", "remove"), *FAKE))
    assert m[remove] == len(REMOVED_2021)
    assert m[("cfallow_backend_entries", FAKE)] == len(CURRENT)
    last_success = m[("cfallow_last_success_timestamp_seconds", ())]
    assert last_success > first_success

    # 3: a dry run writes no metrics
    before = metrics.read_bytes()
    r, _, _ = sync("api-ips-2021-03.json", "sync", "--dry-run")
    assert r.rc == 0, r.err
    assert metrics.read_bytes() == before

    # 4: the backend fails: flagged, and the last success stays where it was
    r, start, end = sync("api-ips.json", "sync", fail="plan")
    assert r.rc == 1
    m = read(metrics)
    assert start <= m[("cfallow_last_run_timestamp_seconds", ())] <= end
    assert m[("cfallow_last_run_success", ())] == 0
    assert m[("cfallow_last_success_timestamp_seconds", ())] == last_success
    assert m[("cfallow_backend_failed", FAKE)] == 1
    assert ("cfallow_backend_entries", FAKE) not in m
