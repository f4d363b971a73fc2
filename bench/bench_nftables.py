#!/usr/bin/env python3
"""Whole-process time of ``cfallow sync`` with the nftables backend, per mode.

Run as root (it creates and deletes its own network namespaces; the host's
firewall is never touched)::

    sudo .venv/bin/python bench/bench_nftables.py [--runs 15] [--json FILE]

For each mode (lockdown, sets) and each starting ruleset (the admin's
``table inet filter`` with an input chain, empty or with 20,000 unrelated
rules), a fresh namespace gets a list source on its own 127.0.0.1 that
publishes the real Cloudflare lists (``tests/fixtures/cloudflare``). Timed,
from process start to exit, each run being ``ip netns exec NS cfallow -q sync``
(live source, state directory, lock, fetch, validation, the whole-ruleset read
for the host analysis, plan, apply, the persistence file):

* no-change: the list is what the sets hold;
* changing: the source alternates between the 2021-03 and the current list,
  so every run swaps 104.16.0.0/12 for 104.16.0.0/13 + 104.24.0.0/14 (or back).

Beside them, in the same namespace: the peak RSS of the no-change runs (the
most cfallow and its ``nft`` child held at once), one ``nft -t -j list
ruleset`` (the cost of reading the whole ruleset), and at the largest size the same runs with
``host_check = false`` (the issue's baseline: a no-change run with an
unchanged ruleset keeps the analysis it made for the ruleset's generation).
One untimed run after the first sync: the first run after cfallow's own
commit analyses the ruleset's new generation once.

Targets as for iptables: no-change <= 0.3 s, changing <= 0.5 s (medians).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from benchkit import run, scene, sh

TARGETS = {"no-change": 0.3, "changing": 0.5}


def admin_table(n: int) -> str:
    """The admin's ``inet filter`` with ``n`` unrelated rules (half in input, half in a chain)."""
    half = n // 2
    lines = ["table inet filter {", "\tchain admin {"]
    lines += [
        f"\t\tip saddr 172.16.{i // 250}.{i % 250} tcp dport 22 accept" for i in range(n - half)
    ]
    lines += ["\t}", "\tchain input {", "\t\ttype filter hook input priority 0; policy accept;"]
    lines += [
        f"\t\tip saddr 10.{i // 250}.{i % 250}.0/24 udp dport 5353 accept" for i in range(half)
    ]
    lines += ["\t\tjump admin", "\t}", "}", ""]
    return "\n".join(lines)


@dataclass
class Result:
    mode: str
    unrelated_rules: int
    no_change: list[float]
    changing: list[float]
    peak_mb: float = 0.0  # no-change runs: the most cfallow and its nft child held at once
    list_ruleset: float = 0.0  # baseline: one ``nft -t -j list ruleset`` in the same namespace

    def row(self) -> str:
        nc, ch = self.no_change, self.changing
        return (
            f"{self.mode:9} {self.unrelated_rules:>6}  "
            f"{statistics.median(nc):6.3f} / {max(nc):6.3f}  {self.peak_mb:6.1f}  "
            f"{statistics.median(ch):6.3f} / {max(ch):6.3f}  {self.list_ruleset:6.3f}"
        )

    def met(self) -> bool:
        return (
            statistics.median(self.no_change) <= TARGETS["no-change"]
            and statistics.median(self.changing) <= TARGETS["changing"]
        )


def bench(
    mode: str, extra: int, runs: int, host_check: bool = True, changing_runs: int | None = None
) -> Result:
    with scene() as sc:
        sh(sc.nsx("nft", "-f", "-"), input=admin_table(extra))
        config = sc.tmp / "config.toml"
        config.write_text(
            sc.source() + f'[backends.nftables]\nmode = "{mode}"\n'
            f'file = "{sc.tmp / "cfallow.nft"}"\nhost_check = {str(host_check).lower()}\n'
        )
        argv = sc.cfallow(config, "sync")
        run(argv)  # first sync: creates the table or the sets
        run(argv)  # the first run after cfallow's own commit analyses the new generation
        done = [run(argv) for _ in range(runs)]
        listing = statistics.median(
            run(sc.nsx("nft", "-t", "-j", "list", "ruleset")).seconds for _ in range(runs)
        )
        changing = []
        for i in range(runs if changing_runs is None else changing_runs):
            sc.publish("old" if i % 2 == 0 else "current")
            changing.append(run(argv).seconds)
        table = "inet cfallow" if mode == "lockdown" else "inet filter"
        listed = sh(sc.nsx("nft", "list", "set", *table.split(), "cloudflare_v4"))
        last = "104.16.0.0/12" if len(changing) % 2 else "104.16.0.0/13"
        assert last in listed, "sync did not converge"
        count = sh(sc.nsx("nft", "list", "table", "inet", "filter")).count(" accept")
        assert count >= extra, "the unrelated rules are gone"
        label = mode if host_check else f"{mode}*"
        no_change = [r.seconds for r in done]
        return Result(label, extra, no_change, changing, max(r.peak_mb for r in done), listing)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument(
        "--rules", default="0,20000", help="unrelated rules, comma-separated (0,1000,20000,100000)"
    )
    ap.add_argument("--modes", default="lockdown,sets")
    ap.add_argument("--changing-runs", type=int, help="changing runs (default: --runs)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    opts = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (network namespaces)", file=sys.stderr)
        return 2
    print(
        f"{'mode':9} {'rules':>6}  {'no-change':>15}  {'peak MB':>6}  {'changing':>15}  "
        f"{'nft -t -j list ruleset':>6}   (median / max, s)"
    )
    results = []
    sizes = [int(n) for n in opts.rules.split(",")]
    for mode in opts.modes.split(","):
        for extra in sizes:
            for check in (True, False) if extra == max(sizes) else (True,):
                results.append(bench(mode, extra, opts.runs, check, opts.changing_runs))
                print(results[-1].row(), flush=True)
    print("* host_check = false (no host analysis): the baseline of the issue's <= 2x target")
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
