#!/usr/bin/env python3
"""A fleet of hosts on cfallow's timer for a day: how hard does it hit Cloudflare?

Each host runs the scheduled sync on the timer as shipped (systemd/cfallow.timer:
its calendar step, RandomizedDelaySec, FixedRandomDelay and OnBootSec, read from
the file). Whether a run fetches, and what a failure schedules, is decided by
cfallow's own cadence code (:func:`cfallow.fetch.cadence.fetch_due` and the functions
:func:`cfallow.fetch.resolve.record` uses); a fetch is :func:`cfallow.fetch.sources.fetch_live`
with its real retries, redirects and status handling, on a virtual clock: only the
socket read is replaced (by a stand-in answering as the scenario says) and sleeping
advances the clock instead of waiting.

Scenarios (each 24 h, 1,000 hosts by default):

* steady: lists fetched at random times, then a day on the timer before the
  measured day begins;
* in-step: every host fetched in the same run (one push, a baked image);
* cloned: in step, and every host has the same machine-id (a cloned image);
* reboot: the fleet was down for 6 h and boots within a minute;
* 429: as reboot, and Cloudflare answers 429 (Retry-After: 60) for 30 minutes;
* overdue: the fleet was down for 30 h (every list more than 4 periods old).

Printed per scenario: peak requests a second to Cloudflare, requests in the first
hour and in the day, and the time until the fleet's fetches are evenly spread
(every quarter-hour of a refresh period holds at most twice its share of the hosts'
last fetches, from then on).

    .venv/bin/python bench/fleet.py [--hosts 1000] [--hours 24] [--seed 1]
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cfallow.cli.config import SourceConfig
from cfallow.errors import RangesError
from cfallow.fetch import cadence, http, sources

ROOT = Path(__file__).resolve().parent.parent
TIMER = ROOT / "systemd" / "cfallow.timer"
API_BODY = (ROOT / "tests" / "fixtures" / "cloudflare" / "api-ips.json").read_bytes()
V4_BODY = (ROOT / "tests" / "fixtures" / "cloudflare" / "ips-v4.txt").read_bytes()
V6_BODY = (ROOT / "tests" / "fixtures" / "cloudflare" / "ips-v6.txt").read_bytes()
START = 1_800_000_000.0 - 1_800_000_000.0 % 86400  # midnight UTC
BINS = 24  # quarter-hours of a 6 h refresh period
WARM_UP = 86400.0  # the steady fleet has run the cadence for a day before START


@dataclass(frozen=True)
class Timer:
    """What the shipped timer says."""

    step: float  # OnCalendar=*:0/N
    delay: float  # RandomizedDelaySec
    fixed: bool  # FixedRandomDelay
    on_boot: float  # OnBootSec


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)\s*(s|sec|min|m|h)?", text.strip())
    if m is None:
        raise ValueError(f"cannot read a time span: {text!r}")
    return float(m.group(1)) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}.get(
        m.group(2) or "s", 1
    )


def read_timer(path: Path = TIMER) -> Timer:
    """The timer unit's schedule."""
    keys = dict(
        line.split("=", 1) for line in path.read_text().splitlines() if re.match(r"^\w+=", line)
    )
    cal = re.fullmatch(r"\*:0/(\d+)", keys["OnCalendar"].strip())
    if cal is None:
        raise ValueError(f"bench models OnCalendar=*:0/N only, not {keys['OnCalendar']!r}")
    return Timer(
        float(cal.group(1)) * 60,
        _seconds(keys.get("RandomizedDelaySec", "0")),
        keys.get("FixedRandomDelay", "no").strip() == "yes",
        _seconds(keys.get("OnBootSec", "0")),
    )


class Cloudflare:
    """The stand-in: answers by the virtual clock, counts every request."""

    def __init__(self, refuse_until: float = 0.0, retry_after: int = 60) -> None:
        self.refuse_until = refuse_until
        self.retry_after = retry_after
        self.clock = 0.0
        self.requests: list[float] = []

    def answer(self, url: str) -> http.Response:
        self.requests.append(self.clock)
        if self.clock < self.refuse_until:
            return _response(url, 429, b"", str(self.retry_after))
        if url.endswith("ips-v4"):
            return _response(url, 200, V4_BODY, "")
        if url.endswith("ips-v6"):
            return _response(url, 200, V6_BODY, "")
        return _response(url, 200, API_BODY, "")


def _response(url: str, status: int, body: bytes, retry_after: str) -> http.Response:
    ctype = "application/json" if body.startswith(b"{") else "text/plain"
    fields = http.Response.__dataclass_fields__
    if "retry_after" in fields:  # the stand-in sends Retry-After where cfallow reads it
        return http.Response(url, status, body, ctype, "", retry_after)  # type: ignore[call-arg]
    return http.Response(url, status, body, ctype, "")


@dataclass
class Host:
    """One host: its machine-id, its state directory's contents, its uptime."""

    machine_id: str
    known_at: float | None
    log: cadence.FetchLog | None = None
    boot: float | None = None  # booted at (else up all along)
    point: float = 0.0  # cadence.phase of its state directory, on this machine


def place(hosts: list[Host], root: Path, *, cloned: bool) -> None:
    """Each host's phase, by :func:`cfallow.fetch.cadence.phase` on a state directory of its
    own: a fresh one, or (``cloned``) a copy of the image's, salt included. Every host
    has its own network card's address; clones share the image's machine-id."""
    image = root / "image"
    cadence.phase(image, "image")
    for i, host in enumerate(hosts):
        state = root / f"host{i}"
        state.mkdir()
        if cloned:
            shutil.copy2(image / cadence.SALT_FILE, state / cadence.SALT_FILE)
        host.point = cadence.phase(state, f"{host.machine_id}\n02:00:00:{i:06x}")


def fixed_offset(machine_id: str, delay: float) -> float:
    """FixedRandomDelay: the same offset on every run, derived from the machine-id
    (and the unit's name), as systemd does."""
    digest = hashlib.sha256(f"{machine_id}:cfallow.timer".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * delay


def runs(host: Host, timer: Timer, begin: float, end: float, rng: random.Random) -> Iterator[float]:
    """When the timer starts ``cfallow sync --scheduled`` on ``host``."""
    if host.boot is not None:
        yield host.boot + timer.on_boot
    k = int((host.boot or begin) // timer.step) + 1
    offset = fixed_offset(host.machine_id, timer.delay)
    while (tick := k * timer.step) < end:
        k += 1
        yield tick + (offset if timer.fixed else rng.uniform(0, timer.delay))


class Fleet:
    """Runs the real cadence and fetch code for every host's runs, in time order."""

    def __init__(self, hosts: list[Host], cf: Cloudflare, cfg: SourceConfig) -> None:
        self.hosts, self.cf, self.cfg = hosts, cf, cfg

    def fetch(self, at: float) -> RangesError | None:
        """One live fetch at ``at`` with cfallow's fetch code; its failure, if any."""
        self.cf.clock = at
        try:
            sources.fetch_live(self.cfg)
        except RangesError as exc:
            return exc
        return None

    def run(self, host: Host, at: float) -> None:
        """``sync --scheduled`` at ``at``: the cadence decides, a fetch is recorded."""
        due, _ = cadence.fetch_due(host.log, host.known_at, at, self.cfg.refresh, host.point)
        if not due:
            return
        failure = self.fetch(at)
        if failure is None:
            host.known_at = at
            host.log = cadence.fetched_at(at, host.log, changed=False)
        else:
            host.log = cadence.failed_at(
                at,
                self.cfg.retry,
                str(failure),
                refresh=self.cfg.refresh,
                previous=host.log,
                retry_after=failure.retry_after,
            )


def simulate(
    hosts: list[Host], cf: Cloudflare, hours: float, seed: int, warm_up: float = 0.0
) -> tuple[list[float], float | None]:
    """Every request's time from START, and when the fleet's fetches were last evenly
    spread from; the hosts run ``warm_up`` seconds before START already."""
    timer = read_timer()
    cfg = SourceConfig(
        api_url="https://api.test/client/v4/ips",
        text_urls=("https://www.test/ips-v4", "https://www.test/ips-v6"),
    )
    end = START + hours * 3600
    rng = random.Random(seed)  # noqa: S311 - a reproducible simulation
    begin = START - warm_up
    queue = [
        (t, i) for i, h in enumerate(hosts) for t in runs(h, timer, begin, end, rng) if t < end
    ]
    heapq.heapify(queue)
    fleet = Fleet(hosts, cf, cfg)
    even_since: float | None = None
    next_sample = START
    with _virtual(cf):
        while queue:
            at, i = heapq.heappop(queue)
            while next_sample <= at:
                ok = _even(hosts, cfg.refresh)
                even_since = (even_since or next_sample) if ok else None
                next_sample += timer.step
            fleet.run(hosts[i], at)
    return [t for t in cf.requests if t >= START], even_since


def _even(hosts: list[Host], refresh: float) -> bool:
    phases = Counter(int((h.known_at or 0) % refresh // (refresh / BINS)) for h in hosts)
    return max(phases.values()) <= 2 * len(hosts) / BINS


class _virtual:
    """Sleeping advances the stand-in's clock; the socket read is the stand-in."""

    def __init__(self, cf: Cloudflare) -> None:
        self.cf = cf

    def __enter__(self) -> None:
        self.saved = (time.sleep, http._read_within)
        time.sleep = self._sleep  # type: ignore[assignment]
        http._read_within = self._read
        random.seed(0)

    def __exit__(self, *exc: object) -> None:
        time.sleep, http._read_within = self.saved

    def _sleep(self, seconds: float) -> None:
        self.cf.clock += seconds

    def _read(
        self, session: object, target: object, url: str, remaining: float, slow: object = None
    ) -> http.Response:
        return self.cf.answer(url)


Scenario = Callable[[], "tuple[list[Host], Cloudflare, bool]"]


def scenarios(n: int, seed: int) -> dict[str, Scenario]:
    """Each scenario's fleet and stand-in."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible simulation
    refresh = SourceConfig().refresh

    def ids(same: bool) -> list[str]:
        return ["0" * 32 if same else f"{rng.getrandbits(128):032x}" for _ in range(n)]

    def steady() -> tuple[list[Host], Cloudflare, bool]:  # run for a day before START
        hosts = [Host(m, START - WARM_UP - rng.uniform(0, refresh)) for m in ids(False)]
        return hosts, Cloudflare(), False

    def in_step(same: bool) -> Scenario:
        return lambda: ([Host(m, START - 60) for m in ids(same)], Cloudflare(), same)

    def reboot(refuse: float, down: float = 6 * 3600) -> Scenario:
        def make() -> tuple[list[Host], Cloudflare, bool]:
            hosts = [
                Host(m, START - down - rng.uniform(0, refresh), boot=START + rng.uniform(0, 60))
                for m in ids(False)
            ]
            return hosts, Cloudflare(refuse_until=START + refuse), False

        return make

    return {
        "steady state": steady,
        "all in step": in_step(False),
        "cloned machine-id": in_step(True),
        "reboot after 6 h down": reboot(0),
        "429 for 30 min after reboot": reboot(1800),
        "reboot after 30 h down (lists overdue)": reboot(0, 30 * 3600),
    }


def main() -> None:
    """Run every scenario and print the table (Markdown)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--hours", type=float, default=24)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", default="", help="run the scenarios whose name contains this")
    args = ap.parse_args()
    timer = read_timer()
    print(
        f"{args.hosts} hosts, {args.hours:g} h; timer: every {timer.step:g} s, "
        f"RandomizedDelaySec={timer.delay:g}, FixedRandomDelay={'yes' if timer.fixed else 'no'}"
    )
    print()
    print("| scenario | peak requests/s | requests, first hour | requests, day | even spread |")
    print("|---|---:|---:|---:|---|")
    for name, make in scenarios(args.hosts, args.seed).items():
        if args.only not in name:
            continue
        hosts, cf, cloned = make()
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            place(hosts, Path(tmp), cloned=cloned)
        warm_up = WARM_UP if name == "steady state" else 0.0
        requests, even = simulate(hosts, cf, args.hours, args.seed, warm_up)
        per_second = Counter(int(t) for t in requests)
        peak = max(per_second.values()) if per_second else 0
        first_hour = sum(1 for t in requests if t < START + 3600)
        spread = "never" if even is None else f"after {(even - START) / 3600:.1f} h"
        print(
            f"| {name} | {peak:,} | {first_hour:,} | {len(requests):,} | {spread} |"
            f"  <!-- {time.perf_counter() - started:.0f} s -->"
        )


if __name__ == "__main__":
    main()
