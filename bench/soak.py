#!/usr/bin/env python3
"""Soak: 1,000 consecutive ``cfallow sync`` runs on one namespace (run as root).

    sudo .venv/bin/python bench/soak.py [--runs 1000] [--variant nft|legacy] [--processes]

Half the runs see an unchanged list, half alternate between the 2021-03 and the
current Cloudflare list. Default: one long-lived process calling the CLI entry
point repeatedly (a leak accumulates there): exit codes, rule count of the
CFALLOW chains, open file descriptors, resident memory, unreaped children,
files left in the state directory and in a private TMPDIR. ``--processes``
also runs the same sequence as separate ``cfallow`` processes (how the systemd
timer runs it) and reports their exit codes, rule counts and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.proof.lab import Lab, lab  # noqa: E402
from support.proof.soak import EXPECTED, soak, summary  # noqa: E402


def processes(lb: Lab, runs: int) -> dict[str, object]:
    """The same sequence, one ``cfallow sync`` process per run."""
    lb.config()
    half = runs // 2
    failed = wrong = tracebacks = 0
    rss: list[int] = []
    took: list[float] = []
    with tempfile.TemporaryFile("w+") as err:
        for i in range(runs):
            era = "2021-03" if i < half or (i - half) % 2 else "current"
            lb.publish(era)
            err.seek(0)
            err.truncate()
            start = time.perf_counter()
            proc = subprocess.Popen(
                lb.cfallow_argv("-q", "sync"), stdout=subprocess.DEVNULL, stderr=err
            )
            _, status, usage = os.wait4(proc.pid, 0)
            took.append(time.perf_counter() - start)
            proc.returncode = os.waitstatus_to_exitcode(status)
            failed += proc.returncode != 0
            err.seek(0)
            tracebacks += "Traceback" in err.read()
            rss.append(usage.ru_maxrss)
            rules = lb.chain_rules("CFALLOW")
            wrong += len(rules[4] + rules[6]) != EXPECTED[era]
    return {
        "runs": runs,
        "failed_runs": failed,
        "runs_with_traceback": tracebacks,
        "wrong_rule_count": wrong,
        "peak_rss_kib_first": rss[0],
        "peak_rss_kib_max": max(rss),
        "median_run_s": round(statistics.median(took), 3),
        "state_files": sorted(p.name for p in (lb.tmp / "state").iterdir()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--variant", choices=("nft", "legacy"), default="nft")
    ap.add_argument("--processes", action="store_true", help="also run as separate processes")
    opts = ap.parse_args()
    with lab(opts.variant, tag="soak") as lb:
        start = time.perf_counter()
        result = summary(soak(lb, opts.runs))
        result["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps({"in_process": result}, indent=2))
    if opts.processes:
        with lab(opts.variant, tag="soakp") as lb:
            print(json.dumps({"processes": processes(lb, opts.runs)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
