"""Fetch cadence: a clock the test sets (``CFALLOW_NOW``) drives ``sync --scheduled``
through refresh, failure, back-off and ``Retry-After``; a local server counts the
requests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support.cli_helpers import Result, fixture_text, run_cli, write_config

from cfallow.cli.config import ConfigError, _duration
from cfallow.fetch import cadence
from cfallow.section import Section

API = "/client/v4/ips"
T0 = 1_800_000_000.0
HOUR = 3600.0
#: The fetch time-out here: each request must reach the local server and be counted before
#: the run goes on (at 2 s a loaded machine let a run give up on a request the server
#: counted only after the test had looked: 3 fetches instead of 4).
COUNTED = 60


class Clock:
    def __init__(
        self,
        tmp: Path,
        server: HTTPServer,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        self.server, self.capsys, self.monkeypatch = server, capsys, monkeypatch
        self.state = tmp / "state"
        self.earlier = 0  # fetches before the server's log was last cleared
        self.config = write_config(
            tmp / "config.toml",
            server.url_for("").rstrip("/"),
            backends=f'[backends.fake]\npath = "{tmp / "target.json"}"\n',
            attempts=1,
            refresh="6h",
            retry=5,
            timeout=COUNTED,
        )
        self.answer(200)

    def answer(self, status: int, body: str | None = None) -> None:
        self.earlier = self.fetches()
        self.server.clear()
        if body is None:
            body = fixture_text("api-ips.json") if status == 200 else ""
        self.server.expect_request(API).respond_with_data(body, status=status)
        self.server.expect_request("/ips-v4").respond_with_data("", status=404)

    def fetches(self) -> int:
        return self.earlier + sum(1 for req, _ in self.server.log if req.path == API)

    def point_after(self, at: float, period: float = 6 * HOUR) -> float:
        """This host's first point in a refresh period after ``at`` (its salt is made on
        the first scheduled run); ``period``: a quarter of it once the list is overdue."""
        offset = cadence.phase(self.state) * period
        return offset + ((at - offset) // period + 1) * period

    def run(self, at: float, *args: str) -> Result:
        self.monkeypatch.setenv("CFALLOW_NOW", repr(at))
        base = ("--config", str(self.config), "--state-dir", str(self.state))
        return run_cli(self.capsys, *base, "sync", *args)

    def next_retry(self) -> float:
        doc = json.loads((self.state / cadence.FETCH_LOG).read_text())
        return float(doc["next_retry"])


@pytest.fixture
def clock(
    tmp_path: Path,
    httpserver: HTTPServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Clock:
    return Clock(tmp_path, httpserver, capsys, monkeypatch)


def test_scheduled_runs_fetch_exactly_when_refresh_or_retry_is_due(clock: Clock) -> None:
    def scheduled(at: float, rc: int = 0) -> Result:
        r = clock.run(at, "--scheduled", "--json")
        assert r.rc == rc, r.err
        return r

    assert scheduled(T0).json()["source"]["kind"] == "live"  # no list yet: fetch
    assert clock.fetches() == 1
    due = clock.point_after(T0)  # this host's point in the next refresh period
    assert T0 < due <= T0 + 6 * HOUR
    for at in (T0 + 240, due - 1):  # the timer's runs: reconcile, no fetch
        assert scheduled(at).json()["source"]["kind"] == "last-known-good"
    assert clock.fetches() == 1
    scheduled(due)  # its point reached
    assert clock.fetches() == 2
    assert scheduled(due + 240).json()["source"]["kind"] == "last-known-good"
    assert clock.fetches() == 2

    clock.answer(500)
    failed_at = clock.point_after(due)
    assert failed_at - due == 6 * HOUR  # one refresh period later, to the second
    r = scheduled(failed_at, rc=4)
    assert clock.fetches() == 3 and "HTTP 500" in r.err
    retry = clock.next_retry()
    assert failed_at + 300 <= retry <= failed_at + 300 * (1 + cadence.JITTER)
    r = scheduled(retry - 1)  # held, no fetch, and it says so
    assert clock.fetches() == 3
    assert "last fetch failed; next retry in 1 s" in r.err
    assert "backends held at the last-known-good list of" in r.err
    scheduled(retry, rc=4)  # retry due: fetches, fails again
    assert clock.fetches() == 4
    second = clock.next_retry()
    assert retry + 600 <= second <= retry + 600 * (1 + cadence.JITTER)  # the wait doubled

    clock.answer(200)
    scheduled(second - 1)
    assert clock.fetches() == 4
    scheduled(second)  # Cloudflare is back
    assert clock.fetches() == 5
    scheduled(clock.point_after(second) - 1)  # then this host's point again
    assert clock.fetches() == 5
    scheduled(clock.point_after(second))
    assert clock.fetches() == 6


def test_a_host_down_at_its_point_waits_for_the_next_one(clock: Clock) -> None:
    """A fleet booting after a long outage does not fetch at boot all at once."""
    assert clock.run(T0, "--scheduled").rc == 0
    due = clock.point_after(T0)
    boot = due + cadence.WINDOW  # down over its point (and the window after it)
    for at in (boot, boot + 240, due + 6 * HOUR - 1):
        assert clock.run(at, "--scheduled").rc == 0
    assert clock.fetches() == 1
    assert clock.run(due + 6 * HOUR, "--scheduled").rc == 0
    assert clock.fetches() == 2
    # Down for days: the list is overdue, and the point comes every quarter period.
    quarter = 6 * HOUR / cadence.MAX_AGE
    overdue = due + 6 * HOUR + cadence.MAX_AGE * 6 * HOUR
    point = clock.point_after(overdue + 2 * cadence.WINDOW, quarter)
    boot = point - 2 * cadence.WINDOW  # overdue, and not in the window after a point
    for at in (boot, boot + 240, point - 1):
        r = clock.run(at, "--scheduled", "-v")
        assert r.rc == 0 and "overdue, so this host's point comes every 5400 s" in r.err
    assert clock.fetches() == 2
    assert clock.run(point + 30, "--scheduled").rc == 0
    assert clock.fetches() == 3


def test_an_overdue_fleet_is_spread_over_a_quarter_period_after_it_boots() -> None:
    """A thousand hosts whose lists are days old boot in the same minute: on the timer's
    4-minute runs, each fetches within a quarter period (+ the window) of its boot, and no
    10 minutes hold more than a quarter of them (the first holds the hosts whose point was
    in the window before the boot as well: about 2 x 600 / 5400; before: all at boot)."""
    refresh, boot = 6 * HOUR, T0 + 10 * 6 * HOUR
    known = T0
    ok = cadence.FetchLog(known, False)
    first = []
    for i in range(1000):
        point = i / 1000
        at = boot + (i % 60)
        while not cadence.fetch_due(ok, known, at, refresh, point)[0]:
            at += 240
        first.append(at - boot)
    assert max(first) < refresh / cadence.MAX_AGE + cadence.WINDOW
    bins = [0] * 12
    for t in first:
        bins[int(t // 600)] += 1
    assert max(bins) <= 250 and max(bins[1:]) <= 150, bins


def test_a_cloned_state_directory_gets_its_own_salt(tmp_path: Path) -> None:
    image = tmp_path / "image"
    first = cadence.phase(image, "machine-id\n02:00:00:00:00:01")
    assert cadence.phase(image, "machine-id\n02:00:00:00:00:01") == first  # kept
    salt = (image / cadence.SALT_FILE).read_text()
    points = set()
    for i in range(20):  # twenty clones: the image's state directory, one machine-id
        clone = tmp_path / f"clone{i}"
        clone.mkdir()
        (clone / cadence.SALT_FILE).write_text(salt)
        points.add(cadence.phase(clone, f"machine-id\n02:00:00:00:01:{i:02x}"))
        assert (clone / cadence.SALT_FILE).read_text() != salt
    assert len(points) == 20 and first not in points


def test_429_with_retry_after_one_request_per_source_and_the_next_fetch_waits(
    clock: Clock, tmp_path: Path
) -> None:
    """A stand-in answering 429 with Retry-After: one run asks each source at most
    once (even with ``attempts = 4``), and no run fetches before Retry-After is over."""
    clock.config = write_config(
        tmp_path / "config4.toml",
        clock.server.url_for("").rstrip("/"),
        backends=f'[backends.fake]\npath = "{tmp_path / "target.json"}"\n',
        attempts=4,
        refresh="6h",
        retry=5,
        timeout=COUNTED,
    )
    assert clock.run(T0, "--scheduled").rc == 0
    clock.server.clear()
    for path in (API, "/ips-v4", "/ips-v6"):
        clock.server.expect_request(path).respond_with_data(
            "", status=429, headers={"Retry-After": "7200"}
        )
    at = clock.point_after(T0)
    r = clock.run(at, "--scheduled")
    assert r.rc == 4 and "HTTP 429 (Retry-After: 7200 s)" in r.err
    asked = [req.path for req, _ in clock.server.log]
    assert asked == [API]  # once, and not the text lists (Cloudflare asked us to wait)
    retry = clock.next_retry()
    assert retry >= at + 7200
    for later in (at + 240, at + 3600, retry - 1):
        assert clock.run(later, "--scheduled").rc == 0
    assert len(clock.server.log) == 1

    clock.server.clear()  # 503 with Retry-After from both: each source once
    for path in (API, "/ips-v4", "/ips-v6"):
        clock.server.expect_request(path).respond_with_data(
            "", status=503, headers={"Retry-After": "1800"}
        )
    assert clock.run(retry, "--scheduled").rc == 4
    assert sorted(req.path for req, _ in clock.server.log) == [API, "/ips-v4"]
    again = clock.next_retry()
    assert again >= retry + 1800
    assert clock.run(again - 1, "--scheduled").rc == 0
    assert len(clock.server.log) == 2


def test_a_first_run_that_cannot_fetch_retries_on_the_retry_cadence(clock: Clock) -> None:
    clock.answer(503)
    r = clock.run(T0, "--scheduled", "--json")
    assert r.rc == 0 and r.json()["source"]["kind"] == "bundled"  # the snapshot, warned
    assert r.json()["fetch"]["ok"] is False
    assert clock.fetches() == 1
    retry = clock.next_retry()
    assert clock.run(retry - 1, "--scheduled").rc == 0  # the timer's next runs: no stampede
    assert clock.fetches() == 1
    clock.answer(200)
    assert clock.run(retry, "--scheduled").rc == 0
    assert clock.fetches() == 2


def test_a_manual_sync_always_fetches(clock: Clock) -> None:
    assert clock.run(T0).rc == 0
    assert clock.run(T0 + 1).rc == 0
    assert clock.fetches() == 2
    assert clock.run(T0 + 2, "--scheduled").rc == 0
    assert clock.fetches() == 2


def test_a_refused_list_is_retried_like_a_failed_fetch(clock: Clock) -> None:
    assert clock.run(T0, "--scheduled").rc == 0
    doc = json.loads(fixture_text("api-ips.json"))
    doc["result"]["ipv4_cidrs"] = doc["result"]["ipv4_cidrs"][:2]  # the shrink guard refuses
    clock.answer(200, json.dumps(doc))
    r = clock.run(clock.point_after(T0), "--scheduled")
    assert r.rc == 4 and "would disappear" in r.err
    assert clock.fetches() == 2
    assert clock.run(clock.next_retry() - 1, "--scheduled").rc == 0
    assert clock.fetches() == 2


@pytest.mark.parametrize(
    ("value", "seconds"), [("6h", 21600), ("30m", 1800), ("1d", 86400), (900, 900), ("90s", 90)]
)
def test_refresh_accepts_seconds_or_a_unit(value: object, seconds: float) -> None:
    assert _duration(Section("source", {"refresh": value}), "refresh", 1.0) == seconds


@pytest.mark.parametrize("value", ["6 hours", "10s", 30, True, "h", -5])
def test_refresh_refuses_nonsense_in_one_line(value: object) -> None:
    with pytest.raises(ConfigError, match=r"\[source\] refresh: expected seconds"):
        _duration(Section("source", {"refresh": value}), "refresh", 1.0)


YEAR = 365 * 24 * HOUR


def test_a_list_stamped_in_the_future_is_due_with_a_warning(clock: Clock) -> None:
    r = clock.run(T0 + YEAR, "--scheduled")  # one run with the clock a year ahead
    assert r.rc == 0 and clock.fetches() == 1
    r = clock.run(T0, "--scheduled")  # the clock put right: due at once, and said so
    assert r.rc == 0, r.err
    assert clock.fetches() == 2
    assert "warning: the last-known-good list is stamped 31536000 s in the future" in r.err
    assert clock.run(T0 + 240, "--scheduled").rc == 0  # stamped by the right clock now
    assert clock.fetches() == 2


def test_a_failed_attempt_stamped_in_the_future_is_due_with_a_warning(clock: Clock) -> None:
    assert clock.run(T0, "--scheduled").rc == 0
    clock.answer(500)
    ahead = clock.point_after(T0 + YEAR, 6 * HOUR / cadence.MAX_AGE)  # the list is overdue
    assert clock.run(ahead, "--scheduled").rc == 4  # its retry is a year ahead
    clock.answer(200)
    r = clock.run(clock.point_after(T0), "--scheduled")
    assert r.rc == 0, r.err
    assert clock.fetches() == 3
    assert "warning: the last fetch attempt is stamped" in r.err
