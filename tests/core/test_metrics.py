"""The metrics file: Prometheus text format (checked with prometheus_client's parser),
values that match the run, atomic replacement, last success kept across failures."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest
from netaddr import IPNetwork
from prometheus_client.parser import text_string_to_metric_families
from support.cfdata import ADDED_2021, CURRENT, OLD, REMOVED_2021

from cfallow.engine import BackendResult
from cfallow.fetch.ranges import Ranges
from cfallow.model import Plan
from cfallow.report import Report
from cfallow.report.metrics import previous_success, write_metrics

NOW = 1_760_000_000.25
FETCHED = NOW - 3600.5


def family(nets: frozenset[IPNetwork], version: int) -> frozenset[IPNetwork]:
    return frozenset(n for n in nets if n.version == version)


def report(*, dry_run: bool = False, error: str | None = None) -> Report:
    """A sync report as `cfallow sync --json` gives it: OLD -> CURRENT on iptables,
    a fail2ban backend already in sync."""
    ranges = Ranges(
        family(CURRENT, 4),
        family(CURRENT, 6),
        "live",
        "https://api.cloudflare.com/client/v4/ips",
        'a"b\\c',
        FETCHED,
    )
    iptables = BackendResult("iptables", Plan("iptables", OLD, ADDED_2021, REMOVED_2021))
    fail2ban = BackendResult("fail2ban", Plan("fail2ban", CURRENT), error=error)
    return Report((iptables, fail2ban), dry_run, ranges)


def parse(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample in the file, keyed by (name, sorted labels)."""
    samples = {}
    for fam in text_string_to_metric_families(path.read_text()):
        assert fam.type == "gauge", fam.name
        assert fam.documentation, fam.name
        for s in fam.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, key
            samples[key] = s.value
    return samples


def test_successful_run_values_match_the_report(tmp_path: Path) -> None:
    path = tmp_path / "cfallow.prom"
    write_metrics(path, report(), now=NOW, success=True)
    m = parse(path)
    assert m[("cfallow_last_run_timestamp_seconds", ())] == NOW
    assert m[("cfallow_last_success_timestamp_seconds", ())] == NOW
    assert m[("cfallow_last_run_success", ())] == 1
    assert m[("cfallow_ranges", (("family", "ipv4"),))] == 15
    assert m[("cfallow_ranges", (("family", "ipv6"),))] == 7
    assert m[("cfallow_source_age_seconds", ())] == pytest.approx(3600.5)
    assert m[("cfallow_source_fetched_timestamp_seconds", ())] == FETCHED
    # The etag survives label escaping (quote and backslash) unchanged.
    assert m[("cfallow_source_info", (("etag", 'a"b\\c'), ("kind", "live")))] == 1
    ipt, f2b = (("backend", "iptables"),), (("backend", "fail2ban"),)
    assert m[("cfallow_backend_failed", ipt)] == 0
    assert m[("cfallow_backend_failed", f2b)] == 0
    assert m[("cfallow_backend_changes_applied", (("action", "add"), *ipt))] == len(ADDED_2021)
    assert m[("cfallow_backend_changes_applied", (("action", "remove"), *ipt))] == 1
    assert m[("cfallow_backend_changes_applied", (("action", "add"), *f2b))] == 0
    assert m[("cfallow_backend_entries", ipt)] == len(CURRENT)
    assert m[("cfallow_backend_entries", f2b)] == len(CURRENT)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["cfallow.prom"]


def test_failed_run_keeps_the_last_success_and_flags_the_backend(tmp_path: Path) -> None:
    path = tmp_path / "cfallow.prom"
    write_metrics(path, report(), now=NOW, success=True)
    later = NOW + 21600
    write_metrics(
        path, report(error="fail2ban-client exited 255: no socket"), now=later, success=False
    )
    m = parse(path)
    assert m[("cfallow_last_run_timestamp_seconds", ())] == later
    assert m[("cfallow_last_run_success", ())] == 0
    assert m[("cfallow_last_success_timestamp_seconds", ())] == NOW
    assert m[("cfallow_backend_failed", (("backend", "fail2ban"),))] == 1
    assert m[("cfallow_backend_failed", (("backend", "iptables"),))] == 0
    # A failed backend owns an unknown number of entries: no made-up value.
    assert ("cfallow_backend_entries", (("backend", "fail2ban"),)) not in m
    # And a third, failing run still remembers the success two runs back.
    write_metrics(path, Report((), dry_run=False), now=later + 1, success=False)
    m = parse(path)
    assert m[("cfallow_last_success_timestamp_seconds", ())] == NOW
    assert ("cfallow_ranges", (("family", "ipv4"),)) not in m


def test_never_succeeded_is_zero(tmp_path: Path) -> None:
    path = tmp_path / "cfallow.prom"
    write_metrics(path, Report((), dry_run=False), now=NOW, success=False)
    assert parse(path)[("cfallow_last_success_timestamp_seconds", ())] == 0
    assert previous_success(path) is None


def test_dry_run_applies_nothing_and_bundled_source_has_no_age(tmp_path: Path) -> None:
    path = tmp_path / "cfallow.prom"
    r = report(dry_run=True)
    assert r.ranges is not None
    bundled = dataclasses.replace(r.ranges, kind="bundled", url=None, etag=None, fetched_at=None)
    write_metrics(path, dataclasses.replace(r, ranges=bundled), now=NOW, success=True)
    m = parse(path)
    add = ("cfallow_backend_changes_applied", (("action", "add"), ("backend", "iptables")))
    assert m[add] == 0
    assert m[("cfallow_backend_entries", (("backend", "iptables"),))] == len(OLD)
    assert m[("cfallow_source_info", (("etag", ""), ("kind", "bundled")))] == 1
    assert ("cfallow_source_age_seconds", ()) not in m


def test_replacement_is_atomic_and_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "cfallow.prom"
    write_metrics(path, report(), now=NOW, success=True)
    before = path.read_text()
    with path.open() as reader:
        write_metrics(path, report(), now=NOW + 60, success=True)
        # A reader holding the old file still sees a whole old file: a rename, not a rewrite.
        assert reader.read() == before
    assert parse(path)[("cfallow_last_run_timestamp_seconds", ())] == NOW + 60

    bad = dataclasses.replace(report(), results=(object(),))  # fails before anything is written
    with pytest.raises(AttributeError):
        write_metrics(path, bad, now=NOW + 120, success=True)
    assert parse(path)[("cfallow_last_run_timestamp_seconds", ())] == NOW + 60
    assert os.listdir(tmp_path) == ["cfallow.prom"]
    with pytest.raises(OSError):
        write_metrics(tmp_path / "missing" / "x.prom", report(), now=NOW, success=True)
