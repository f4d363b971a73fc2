#!/usr/bin/env python3
"""cfallow side by side with the two approaches operators use today.

Run as root (it creates and deletes its own network namespaces; the host's
firewall is never touched):

    sudo .venv/bin/python bench/bench_compare.py [--alternations 50] [--json FILE]

Approaches, each on each iptables variant (nft, legacy), each on a fresh pair
of namespaces with the admin's ruleset (policy DROP on INPUT), a listener on
443 and a local HTTP source publishing one of the two real Cloudflare lists:

  cfallow      ``cfallow sync`` with the iptables backend (variant forced)
  tutorial     bench/tutorial.sh: flush a chain, append one ACCEPT per range
  append-only  bench/append_only.sh: append a range unless ``iptables -C`` finds it

Per approach: the first apply (2021-03 list), an unchanged re-run (and how many
kernel writes it made: ``nft monitor`` generations on nft, IPT_SO_SET_REPLACE
calls seen by strace on legacy), ACCEPT rules after 3 runs, stale ranges left
after the 2021 change (is 104.16.0.0/12 still allowed), and failed connections
from a client inside a Cloudflare range while N runs alternate the two lists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support import ns_exec  # noqa: E402
from support.proof.lab import CF_CLIENT, OUTSIDE, Lab, era_lists, lab  # noqa: E402

APPROACHES = ("cfallow", "tutorial", "append-only")
SCRIPTS = {
    "tutorial": ROOT / "bench" / "tutorial.sh",
    "append-only": ROOT / "bench" / "append_only.sh",
}
OLD_V4, V6 = era_lists("2021-03")
NEW_V4, _ = era_lists("current")
REMOVED = sorted(set(OLD_V4) - set(NEW_V4))  # ["104.16.0.0/12"]


def command(lb: Lab, approach: str) -> list[str]:
    """The approach's one run, as argv to run inside the server namespace (no prefix)."""
    if approach == "cfallow":
        return lb.cfallow_cmd("-q", "sync")
    return [
        "bash",
        str(SCRIPTS[approach]),
        lb.ipt(4),
        lb.ipt(6),
        lb.url("ips-v4"),
        lb.url("ips-v6"),
    ]


def run(lb: Lab, approach: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        ns_exec(lb.server, *command(lb, approach)), capture_output=True, text=True, check=False
    )
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{approach} exited {proc.returncode}: {proc.stderr.strip()}")
    return took


def kernel_writes(lb: Lab, approach: str) -> int:
    """Firewall writes one run makes, seen from the kernel side of the namespace."""
    if lb.variant == "nft":
        with tempfile.TemporaryFile("w+") as out:
            mon = subprocess.Popen(ns_exec(lb.server, "nft", "monitor"), stdout=out, text=True)
            time.sleep(0.3)
            run(lb, approach)
            time.sleep(0.3)
            mon.kill()
            mon.wait()
            out.seek(0)
            return sum(1 for line in out if line.startswith("# new generation"))
    with tempfile.NamedTemporaryFile("r") as trace:
        argv = ["strace", "-f", "-qq", "-e", "trace=setsockopt", "-o", trace.name]
        subprocess.run(
            ns_exec(lb.server, *argv, *command(lb, approach)), check=True, capture_output=True
        )
        return sum(1 for line in trace if "SO_SET_REPLACE" in line)


def measure(approach: str, variant: str, alternations: int) -> dict[str, object]:
    with lab(variant, tag="bc") as lb:
        lb.config()
        lb.publish("2021-03")
        first = run(lb, approach)
        rerun = run(lb, approach)
        writes = kernel_writes(lb, approach)
        rules = lb.accept_rules()
        lb.publish("current")
        run(lb, approach)
        after = lb.accept_rules()
        stale = [c for c in REMOVED if c in after]
        missing = sorted(set(NEW_V4 + V6) - set(after))
        times = []
        with lb.connect_loop(CF_CLIENT[0]) as traffic:
            for i in range(alternations):
                lb.publish("2021-03" if i % 2 == 0 else "current")
                times.append(run(lb, approach))
        assert lb.can_connect(CF_CLIENT[0]), "the Cloudflare client is cut off at the end"
        assert not lb.can_connect(OUTSIDE), "the outside client got through: the test is void"
        return {
            "approach": approach,
            "variant": variant,
            "first_apply_s": round(first, 3),
            "unchanged_rerun_s": round(rerun, 3),
            "rerun_kernel_writes": writes,
            "rules_after_3_runs": len(rules),
            "stale_after_2021": stale,
            "missing_after_2021": missing,
            "changing_run_median_s": round(statistics.median(times), 3),
            "alternations": alternations,
            "attempts": traffic["attempts"],
            "failed": traffic["failed"],
        }


def cfallow_ready() -> tuple[bool, str]:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "cfallow"), "backends"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("iptables ")), "")
    return " ok " in line, line.strip() or "iptables backend not installed"


def machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.machine(),
    )
    ipt = subprocess.run(["iptables", "--version"], capture_output=True, text=True, check=False)
    return (
        f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, "
        f"{ipt.stdout.strip()}, Python {platform.python_version()}"
    )


def table(rows: list[dict[str, object]]) -> str:
    head = (
        "| approach | variant | first apply | unchanged re-run | kernel writes on re-run "
        "| ACCEPT rules after 3 runs | 104.16.0.0/12 left after 2021 change "
        "| changing run (median) | failed connections during alternations |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['approach']} | {r['variant']} | {r['first_apply_s']:.3f} s "
            f"| {r['unchanged_rerun_s']:.3f} s | {r['rerun_kernel_writes']} "
            f"| {r['rules_after_3_runs']} | {'yes' if r['stale_after_2021'] else 'no'} "
            f"| {r['changing_run_median_s']:.3f} s "
            f"| {r['failed']} of {r['attempts']} ({r['alternations']} alternations) |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alternations", type=int, default=50)
    ap.add_argument("--approach", action="append", choices=APPROACHES)
    ap.add_argument("--variant", action="append", choices=("nft", "legacy"))
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    opts = ap.parse_args()
    ok, why = cfallow_ready()
    approaches = opts.approach or list(APPROACHES)
    if "cfallow" in approaches and not ok:
        print(f"skipping cfallow: {why}", file=sys.stderr)
        approaches.remove("cfallow")
    rows = []
    for approach in approaches:
        for variant in opts.variant or ("nft", "legacy"):
            print(f"... {approach} on {variant}", file=sys.stderr, flush=True)
            rows.append(measure(approach, variant, opts.alternations))
    print(f"{time.strftime('%Y-%m-%d')}, {machine()}\n")
    print(table(rows))
    missing = [r for r in rows if r["missing_after_2021"]]
    for r in missing:
        print(f"\n{r['approach']}/{r['variant']} missed ranges: {r['missing_after_2021']}")
    if opts.json:
        opts.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
