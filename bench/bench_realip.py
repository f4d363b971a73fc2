"""Benchmark (not a test): the four real-IP backends against private servers on 127.0.0.1.

Run as root from the repo root: ``.venv/bin/python bench/bench_realip.py [RUNS]``.
In-process engine runs (no interpreter start-up), median of RUNS each:
a change (the 2021 list <-> today's, alternating: write, whole-config test,
reload or runtime swap) and a no-change run (one file read, nothing else).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.cfdata import CURRENT, OLD
from support.realip.apache import Apache
from support.realip.caddy import Caddy
from support.realip.haproxy import Haproxy
from support.realip.lab import Server, running, sync
from support.realip.nginx import Nginx


def timed(srv: Server, desired: frozenset) -> float:  # type: ignore[type-arg]
    t0 = time.perf_counter()
    result = sync(srv, desired)
    elapsed = time.perf_counter() - t0
    if result.error is not None:
        raise SystemExit(f"{srv.name}: {result.error}")
    return elapsed


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 9
    print(f"| server | change (ms) | no change (ms) |  median of {runs}")
    print("|---|---|---|")
    for kind in (Nginx, Apache, Haproxy, Caddy):
        with tempfile.TemporaryDirectory(prefix="realip-bench-") as tmp:
            srv = kind(Path(tmp) / kind.name)
            with running(srv):
                timed(srv, CURRENT)
                change = [timed(srv, OLD if i % 2 == 0 else CURRENT) for i in range(runs)]
                timed(srv, CURRENT)
                same = [timed(srv, CURRENT) for _ in range(runs)]
        print(
            f"| {kind.name} | {statistics.median(change) * 1000:.0f} "
            f"| {statistics.median(same) * 1000:.1f} |"
        )


if __name__ == "__main__":
    main()
