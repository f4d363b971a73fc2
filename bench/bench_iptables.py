#!/usr/bin/env python3
"""Whole-process time of ``cfallow sync`` with the iptables backend, per variant.

Run as root (it creates and deletes its own network namespaces; the host's
firewall is never touched)::

    sudo .venv/bin/python bench/bench_iptables.py [--runs 15] [--json FILE]

For each variant (nft, legacy) and each starting ruleset (empty, and 20,000
unrelated IPv4 rules: 10,000 in INPUT and 10,000 in a custom chain), a fresh
namespace gets a list source on its own 127.0.0.1 that publishes the real
Cloudflare lists (``tests/fixtures/cloudflare``). Timed, from process start to
exit, each run being ``ip netns exec NS cfallow -q sync`` (live source, state
directory, lock, fetch, validation, plan, apply):

* no-change: the list is what the chain holds;
* changing: the source alternates between the 2021-03 and the current list,
  so every run swaps 104.16.0.0/12 for 104.16.0.0/13 + 104.24.0.0/14 (or back).

On legacy, ``iptables`` in the process's PATH is the real ``iptables-legacy``
binary (as ``update-alternatives`` sets it up on a legacy host), so the
backend's own detection picks legacy. Targets: no-change <= 0.3 s, changing
<= 0.5 s (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from benchkit import run, scene, sh

TARGETS = {"no-change": 0.3, "changing": 0.5}


def unrelated_rules(n: int) -> str:
    """``n`` admin rules: half in INPUT, half in a custom chain (restore syntax)."""
    lines = ["*filter", ":ADMIN - [0:0]"]
    half = n // 2
    lines += [
        f"-A INPUT -s 10.{i // 250}.{i % 250}.0/24 -p udp --dport 5353 -j ACCEPT"
        for i in range(half)
    ]
    lines += [
        f"-A ADMIN -s 172.16.{i // 250}.{i % 250}/32 -p tcp --dport 22 -j ACCEPT"
        for i in range(n - half)
    ]
    lines += ["-A INPUT -j ADMIN", "COMMIT", ""]
    return "\n".join(lines)


@dataclass
class Result:
    variant: str
    unrelated_rules: int
    no_change: list[float]
    changing: list[float]

    def row(self) -> str:
        nc, ch = self.no_change, self.changing
        return (
            f"{self.variant:8} {self.unrelated_rules:>6}  "
            f"{statistics.median(nc):6.3f} / {max(nc):5.3f}  "
            f"{statistics.median(ch):6.3f} / {max(ch):5.3f}"
        )

    def met(self) -> bool:
        return (
            statistics.median(self.no_change) <= TARGETS["no-change"]
            and statistics.median(self.changing) <= TARGETS["changing"]
        )


def bench(variant: str, extra: int, runs: int) -> Result:
    with scene() as sc:
        env = dict(os.environ, XTABLES_LOCKFILE=str(sc.tmp / "xtables.lock"))
        if variant == "legacy":
            bindir = sc.tmp / "bin"
            bindir.mkdir()
            for name in ("iptables", "ip6tables"):
                real = shutil.which(f"{name}-legacy")
                assert real, f"{name}-legacy not installed"
                (bindir / name).symlink_to(real)
            env["PATH"] = f"{bindir}:{env['PATH']}"
        if extra:
            sh(sc.nsx(f"iptables-{variant}-restore", "--noflush"), input=unrelated_rules(extra))
        config = sc.tmp / "config.toml"
        config.write_text(sc.source() + "[backends.iptables]\n")
        # on legacy, PATH leads the backend's own detection to iptables-legacy
        argv = sc.cfallow(config, "sync")
        argv[4:4] = ["env", f"PATH={env['PATH']}"]
        run(argv, env)  # first sync: creates the chains
        no_change = [run(argv, env).seconds for _ in range(runs)]
        changing = []
        for i in range(runs):
            sc.publish("old" if i % 2 == 0 else "current")
            changing.append(run(argv, env).seconds)
        save = sh(sc.nsx(f"iptables-{variant}-save", "-t", "filter"))
        last = "-s 104.16.0.0/12 " if runs % 2 else "-s 104.16.0.0/13 "
        assert "-j CFALLOW" in save and last in save, "sync did not converge"
        assert save.count("\n-A ") >= extra, "the unrelated rules are gone"
        return Result(variant, extra, no_change, changing)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--rules", type=int, default=20000, help="unrelated rules for the big case")
    ap.add_argument("--json", type=Path, help="also write the results here")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (network namespaces)", file=sys.stderr)
        return 2
    print(f"{'variant':8} {'rules':>6}  {'no-change':>14}  {'changing':>14}   (median / max, s)")
    results = []
    for variant in ("nft", "legacy"):
        for extra in (0, opts.rules):
            results.append(bench(variant, extra, opts.runs))
            print(results[-1].row(), flush=True)
    ok = all(r.met() for r in results)
    print(
        f"targets: no-change <= {TARGETS['no-change']} s, changing <= {TARGETS['changing']} s: "
        + ("met" if ok else "NOT met")
    )
    if opts.json:
        opts.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
