#!/usr/bin/env python3
"""What a run costs when it must analyse the host (the ruleset changed since the last
analysis), next to one ``nft -t -j list ruleset`` in the same namespace.

Run as root (it creates and deletes its own network namespaces; the host's
firewall is never touched)::

    sudo .venv/bin/python bench/bench_analysis.py [--rules 1000,20000,100000] [--runs 3]

For each size, a fresh namespace gets the admin's ``inet filter`` of
``bench_nftables.admin_table`` (half the rules in the input chain, half in a
chain it jumps to) and, with ``--elements K``, a set of K networks that no rule
decides on (CrowdSec's and Fail2Ban's kind). Timed, each as a whole process
from start to exit, with its peak RSS (the process or its largest child):

* analysis: ``python -c`` reading the host (``cfallow.netfilter.host.read``)
  and asking every question lockdown and sets mode ask (both families, both
  sources); with ``--before PATH`` also the same script importing the
  ``cfallow`` package found in PATH (another checkout: the code before);
* run: ``cfallow -q sync`` in lockdown (bundled lists, nothing to change) right
  after an admin commit (an empty table added or deleted), so its memo misses
  and it analyses the host;
* ``nft -t -j list ruleset``: the floor of reading the ruleset once.

With ``--iptables nft,legacy``, the iptables backend's reads at each size
(``bench_iptables.unrelated_rules``, cfallow's chain made by a first sync):
``*-save -t filter`` (what the backend reads), ``-S CFALLOW`` and ``-S INPUT``
(the two chains it would need at least), ``nft -j list chain ip filter
CFALLOW`` (nft only), and a changing ``cfallow -q sync`` (the list alternates
between two eras, served on the namespace's 127.0.0.1), the ratio being to
``*-save -t filter``.

Each figure: median wall time, median CPU time (user + system of the process
and its children: what other processes' load moves least), the ratios of both
to the ``nft -t -j list ruleset`` of the same namespace, and the peak RSS (the
process or its largest child). The growth line: the analysis' CPU time over
the previous size's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_iptables import unrelated_rules
from bench_nftables import admin_table
from benchkit import scene, sh

ANALYSE = """
import sys
if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])
from cfallow.netfilter import host as hostfw
from cfallow.runner import Runner
from cfallow.section import PortRange
h = hostfw.read(Runner(), iptables=False)
web = (PortRange(80, 80), PortRange(443, 443))
for version in (4, 6):
    for cloudflare in (True, False):
        hostfw.outcome(h, version, "tcp", web, cloudflare=cloudflare, own_sets=("cloudflare_v4",))
"""


def timed(argv: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak MB of a process and its children.

    CPU time is what the load of other processes on the machine moves least.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv[-3:])} failed: {err.strip()}")
    return took, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


Figure = tuple[float, float, float]  # median wall s, median CPU s, peak MB


def sample(argv: list[str], runs: int, before: object = None) -> Figure:
    """``runs`` runs of ``argv`` (``before``: called ahead of each)."""
    got = []
    for _ in range(runs):
        if callable(before):
            before()
        got.append(timed(argv))
    wall, cpu, peak = zip(*got)
    return statistics.median(wall), statistics.median(cpu), max(peak)


def elements(n: int) -> str:
    nets = ",".join(f"11.{i // 256 % 256}.{i % 256}.0/24" for i in range(n))
    return "table inet filter {\n\tset crowd { type ipv4_addr; flags interval; }\n}\n" + (
        f"add element inet filter crowd {{ {nets} }}\n" if n else ""
    )


def one(size: int, opts: argparse.Namespace) -> dict[str, Figure]:
    with scene("an") as here:
        nsx = here.nsx()
        sh(here.nsx("nft", "-f", "-"), input=admin_table(size))
        sh(here.nsx("nft", "-f", "-"), input=elements(opts.elements))
        out = {
            "nft -t -j list ruleset": sample(
                here.nsx("nft", "-t", "-j", "list", "ruleset"), opts.runs
            )
        }
        out["analysis"] = sample([*nsx, sys.executable, "-c", ANALYSE], opts.runs)
        if opts.before:
            argv = [*nsx, sys.executable, "-c", ANALYSE, str(opts.before)]
            out["analysis before"] = sample(argv, opts.runs)
        config = here.tmp / "config.toml"
        config.write_text(
            f'[backends.nftables]\nmode = "lockdown"\nfile = "{here.tmp / "cfallow.nft"}"\n'
        )
        sync = here.cfallow(config, "sync", "--source", "bundled")
        timed(sync)  # creates cfallow's table
        timed(sync)  # analyses cfallow's own commit
        bump = iter(["add", "delete"] * opts.runs)
        out["run after a commit"] = sample(
            sync, opts.runs, lambda: sh(here.nsx("nft", next(bump), "table", "inet", "benchbump"))
        )
        return out


def iptables(size: int, variant: str, runs: int) -> dict[str, Figure]:
    """The iptables backend's reads and a changing sync, in one namespace."""
    with scene("ip") as here:
        nsx = here.nsx()
        sh(here.nsx(f"iptables-{variant}-restore", "--noflush"), input=unrelated_rules(size))
        config = here.tmp / "config.toml"
        config.write_text(here.source() + f'[backends.iptables]\nvariant = "{variant}"\n')
        sync = here.cfallow(config, "sync")
        timed(sync)
        tool = f"iptables-{variant}"
        out = {"*-save -t filter": sample([*nsx, f"{tool}-save", "-t", "filter"], runs)}
        out["-S CFALLOW"] = sample([*nsx, tool, "-S", "CFALLOW"], runs)
        out["-S INPUT"] = sample([*nsx, tool, "-S", "INPUT"], runs)
        if variant == "nft":
            argv = [*nsx, "nft", "-j", "list", "chain", "ip", "filter", "CFALLOW"]
            out["nft list chain CFALLOW"] = sample(argv, runs)
        eras = iter(["old", "current"] * runs)
        out["changing sync"] = sample(sync, runs, lambda: here.publish(next(eras)))
        return out


def show(size: int, out: dict[str, Figure], floor: Figure) -> None:
    for name, (wall, cpu, mb) in out.items():
        print(
            f"{size:>7}  {name:24} {wall:7.3f} x{wall / floor[0]:5.2f}  "
            f"{cpu:7.3f} x{cpu / floor[1]:5.2f}  {mb:7.1f}",
            flush=True,
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rules", default="1000,20000,100000", help="admin rules, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--elements", type=int, default=0, help="networks in an admin set")
    ap.add_argument("--before", type=Path, help="a checkout whose cfallow/ to time beside")
    ap.add_argument("--iptables", default="", help="iptables variants to time (nft,legacy)")
    ap.add_argument("--no-nftables", action="store_true", help="only the iptables part")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (network namespaces)", file=sys.stderr)
        return 2
    print(f"load average {os.getloadavg()[0]:.2f}; medians of {opts.runs} runs")
    print(
        f"{'rules':>7}  {'':24} {'wall s':>7} {'x floor':>6}  {'CPU s':>7} {'x floor':>6}  peak MB"
    )
    last = None
    sizes = [int(n) for n in opts.rules.split(",")]
    for size in sizes if not opts.no_nftables else ():
        out = one(size, opts)
        show(size, out, out["nft -t -j list ruleset"])
        cpu = out["analysis"][1]
        growth = f"analysis CPU growth x{cpu / last:.2f}  " if last else ""
        last = cpu
        print(f"{'':>7}  {growth}load average {os.getloadavg()[0]:.2f}", flush=True)
    for variant in filter(None, opts.iptables.split(",")):
        for size in sizes:
            print(f"iptables-{variant}:")
            out = iptables(size, variant, opts.runs)
            show(size, out, out["*-save -t filter"])
            print(f"{'':>7}  load average {os.getloadavg()[0]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
