"""Benchmark (not a test): the firewalld backend on a private firewalld in a namespace.

Run as root from the repo root: ``.venv/bin/python bench/bench_firewalld.py [RUNS]``.

For each mode (zone; restrict with the admin's zone opening https to all):

* in-process, median of RUNS: a no-change sync (read + diff, no write call) and a
  changing sync (the 2021 change, 104.16.0.0/12 <-> /13 + /14, runtime and permanent);
* a whole ``cfallow -q sync --source bundled`` process with nothing to change;
* connections refused from a Cloudflare address while firewalld does what
  cfallow avoids: 10 ``firewall-cmd --reload``, and 50 runtime ``setEntries``
  (flush + refill), against 50 changing cfallow syncs;
* connections refused by the one reload of a first run and of a ``remove``
  (the admin's zone opens https to all, so every refusal is the reload's), RUNS
  rounds of first run + remove.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from cfallow.backends.firewalld.bus import Bus
from support.cfdata import CURRENT, OLD
from support.firewalld.harness import FwHarness, Lab, lab
from support.iptables.traffic import CF

from cfallow.engine import run_backend
from cfallow.model import as_strings, family

CFALLOW = str(Path(sys.executable).parent / "cfallow")


def timed(harness: FwHarness, desired: object) -> float:
    t0 = time.perf_counter()
    result = run_backend(harness.backend(), desired, dry_run=False)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - t0
    assert result.error is None, result.error
    return elapsed


def whole_process(lb: Lab, mode: str, runs: int) -> float:
    with tempfile.TemporaryDirectory(prefix="fwd-bench-") as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(
            f'[backends.firewalld]\nbus = "{lb.fw.address}"\nmode = "{mode}"\n'
            f'ports = [443]\nconfig_dir = "{lb.fw.etc}"\n'
        )
        argv = [CFALLOW, "--config", str(config), "--state-dir", tmp, "-q", "sync"]
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run([*argv, "--source", "bundled"], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)


def refused(lb: Lab, action: object, n: int) -> dict[str, int]:
    with lb.net.connect_loop(CF[0]) as stats:
        for i in range(n):
            action(i)  # type: ignore[operator]
    return stats


def bench(mode: str, runs: int) -> None:
    setup = (("--zone=public", "--add-service=https"),) if mode == "restrict" else ()
    with lab(setup) as lb:
        h = FwHarness(lb.fw, lb.monitor, mode)
        timed(h, OLD)
        writes = lb.monitor.count()
        nochange = statistics.median(timed(h, OLD) for _ in range(runs))
        assert lb.monitor.count() == writes
        changing = statistics.median(timed(h, CURRENT if i % 2 == 0 else OLD) for i in range(runs))
        timed(h, CURRENT)
        proc = whole_process(lb, mode, runs)
        syncs = refused(lb, lambda i: timed(h, OLD if i % 2 == 0 else CURRENT), 50)
        reloads = refused(lb, lambda i: lb.fw.cmd("--reload"), 10)
        with Bus(lb.fw.address) as bus:
            lists = [as_strings(family(x, 4)) for x in (OLD, CURRENT)]
            flush = refused(
                lb, lambda i: bus.runtime_set_entries("cloudflare-v4", lists[i % 2]), 50
            )
        print(f"firewalld backend, mode {mode}, median of {runs}:")
        print(f"  no-change sync (in-process, 0 write calls)   {nochange * 1000:7.1f} ms")
        print(f"  changing sync (2021 change, in-process)      {changing * 1000:7.1f} ms")
        print(f"  no-change sync (whole cfallow process)       {proc * 1000:7.1f} ms")
        for what, st in (
            ("50 changing cfallow syncs", syncs),
            ("10 firewall-cmd --reload", reloads),
            ("50 runtime setEntries", flush),
        ):
            print(f"  refused during {what:30s} {st['failed']} of {st['attempts']}")


def bench_reloads(mode: str, runs: int) -> None:
    with lab((("--zone=public", "--add-service=https"),)) as lb:
        h = FwHarness(lb.fw, lb.monitor, mode)
        first, remove = [], []
        for _ in range(runs):
            first.append(refused(lb, lambda i: timed(h, CURRENT), 1))
            remove.append(refused(lb, lambda i: timed(h, None), 1))
        print(f"firewalld backend, mode {mode}, {runs} rounds, refused per reload:")
        for what, stats in (("first run", first), ("remove", remove)):
            failed = [st["failed"] for st in stats]
            total = sum(st["attempts"] for st in stats)
            print(f"  {what:10s} {failed} of {total} attempts in all")


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 11
    for mode in ("zone", "restrict"):
        bench_reloads(mode, runs)
    if "--reloads-only" in sys.argv:
        return
    for mode in ("zone", "restrict"):
        bench(mode, runs)


if __name__ == "__main__":
    main()
