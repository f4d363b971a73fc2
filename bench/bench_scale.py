#!/usr/bin/env python3
"""Issue 25's figures at scale, each next to its baseline, measured in the same run.

Run as root (it creates and deletes its own network namespaces; the host's
firewall is never touched)::

    sudo .venv/bin/python bench/bench_scale.py [--quick | --rules 0,1000,20000,100000]
        [--backends iptables-nft,iptables-legacy,nftables-lockdown,nftables-sets]
        [--runs 3] [--editable] [--json FILE]

(``--backends nftables-sets-used``: sets mode with the admin's rule naming cfallow's
set, ``ip saddr @cloudflare_v4 tcp dport { 80, 443 } accept`` in the input chain,
added after the first sync as docs/nftables.md says; not in the default list.)

cfallow runs as on an origin server: this checkout built as a wheel and
byte-compiled in a fresh virtualenv (``bench_reconcile.install``; ``--editable``:
this virtualenv's ``cfallow`` instead). For each backend (the iptables backend
on ``iptables-nft`` and on ``iptables-legacy``, the nftables backend in
lockdown and in sets mode) and each number of admin rules, a fresh namespace
gets the admin's ruleset (loaded in one ``iptables-restore`` / ``nft -f``: half
of the rules in the input chain, half in a chain it jumps to) and a list
source on its own 127.0.0.1 serving the real Cloudflare lists. After a first
sync and one run that analyses cfallow's own commit, each figure is the whole
process ``ip netns exec NS cfallow -q sync`` (median and max of ``--runs``),
with the peak memory of its process tree (the most that cfallow and its
children, ``nft`` or ``iptables-save``, held at once):

* no-change: nothing changed since the last run (list nor ruleset);
* no-change, ``host_check = false``: the same run without the host analysis
  (a backend that has no such key says so);
* offline no-change (iptables): ``sync --offline`` after one that recorded the
  run (docs/performance.md, "A run said again"), next to a Python script
  doing only the two reads it cannot avoid (``iptables-save`` and
  ``ip6tables-save -t filter`` of the variant); and the same run in full
  (``CFALLOW_NO_INSTEP=1``: no record, every run plans);
* ruleset changed: an admin commit (one rule added) before each run, so the
  host analysis runs on a ruleset it has not seen;
* changing sync: the published list alternates between the 2021-03 and the
  current list, so each run rewrites the allowlist;
* the read, the baseline, in the same namespace: one ``nft -t -j list
  ruleset`` (nftables), one ``iptables-nft-save -t filter`` or
  ``iptables-legacy-save -t filter`` (iptables);
* a read and a write (iptables): what any tool's changing sync must do at least,
  as a Python script: both families' ``*-save -t filter``, then one
  ``iptables-*-restore --noflush`` that refills a chain of its own (the floor
  under the changing sync's target);
* a read and a split (iptables): both families' ``*-save -t filter`` and each
  line's words split once, as a Python script: what a run that must analyse a
  changed ruleset spends at least (the floor under the ruleset-changed target).

Targets (issue 25), marked met / NOT met: no-change <= 2x the same run with
``host_check = false`` and peak <= 64 MB, offline no-change <= 2x the two
reads (every size); at 100,000 rules and more: ruleset changed <= 1.2x the
read, and a changing iptables sync <= 1.6x ``iptables-save``; growth from the
smallest non-zero size to the largest: (ratio of times) / (ratio of rules) <=
1 (linear or better). The load average is printed before and after: compare
the ratios of one run, never absolute times of runs made beside other load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench_iptables import unrelated_rules
from bench_nftables import admin_table
from bench_reconcile import ENV, TWO_SAVES, install
from benchkit import CFALLOW, Run, Scene, load_average, run, scene, sh

SIZES = (0, 1000, 20000, 100000)
QUICK = (0, 1000)
#: The sizes at which the issue states its baseline ratios.
AT_SCALE = 100000
NO_CHANGE_RATIO, PEAK_MB, CHANGED_RATIO, CHANGING_RATIO, OFFLINE_RATIO = 2.0, 64.0, 1.2, 1.6, 2.0


#: What any tool must do for a changing iptables sync, as a script: read both families'
#: filter tables, then write one family (a chain of its own, flushed and refilled with
#: ``sys.argv[2]`` rules, in one ``*-restore --noflush``). Variant in ``sys.argv[1]``.
READ_AND_WRITE = (
    "import subprocess, sys\n"
    "v, n = sys.argv[1], int(sys.argv[2])\n"
    "for tool in (f'iptables-{v}-save', f'ip6tables-{v}-save'):\n"
    "    subprocess.run([tool, '-t', 'filter'], capture_output=True, check=True)\n"
    "rules = ''.join(f'-A FLOOR -s 192.0.2.{i}/32 -p tcp --dport 443 -j ACCEPT\\n'"
    " for i in range(n))\n"
    "batch = f'*filter\\n:FLOOR - [0:0]\\n-F FLOOR\\n{rules}COMMIT\\n'\n"
    "subprocess.run([f'iptables-{v}-restore', '--noflush'], input=batch, text=True, check=True)\n"
)
#: A Python script that only reads both families' tables and looks at each rule's words
#: once: what any run that must analyse a changed ruleset spends at least.
READ_AND_SPLIT = (
    "import subprocess, sys\n"
    "v, words = sys.argv[1], 0\n"
    "for tool in (f'iptables-{v}-save', f'ip6tables-{v}-save'):\n"
    "    out = subprocess.run([tool, '-t', 'filter'], capture_output=True, text=True, check=True)\n"
    "    for line in out.stdout.splitlines():\n"
    "        words += len(line.split())\n"
)
#: Figures that are baselines (what cfallow's runs are compared with), not cfallow's runs.
BASELINES = (
    "the read",
    "the two saves (Python)",
    "read and write (Python)",
    "read and split (Python)",
)
FIGURE_NAMES = (
    "no-change",
    "no-change, host_check off",
    "offline no-change",
    "offline no-change, in full",
    "ruleset changed",
    "changing sync",
)


@dataclass(frozen=True)
class Setup:
    """The cfallow that runs, the interpreter of the reads-only script, their environment."""

    program: str = CFALLOW
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


@dataclass(frozen=True)
class Backend:
    """How one backend/mode is configured, loaded with admin rules, committed to and read."""

    name: str
    section: Callable[[Scene], str]
    #: (argv, stdin) that loads ``n`` admin rules in one transaction
    load: Callable[[int], tuple[list[str], str]]
    #: argv of the ``i``-th admin commit (one rule added to the admin's chain)
    commit: Callable[[int], list[str]]
    baseline: list[str]
    #: argv that lists the admin's rules (each holds one "accept")
    admin: list[str]
    #: a changing sync's target ratio to the baseline read at scale (None: the issue sets none)
    changing_target: float | None = None
    #: a Python script doing only the reads an offline no-change run cannot avoid ("": none)
    unavoidable: str = ""
    #: argv the admin runs after cfallow's first sync (sets mode: a rule naming its set)
    then: tuple[str, ...] = ()
    #: the iptables variant, for the read-and-write floor of a changing sync ("": none)
    variant: str = ""


def _iptables(variant: str) -> Backend:
    def section(_: Scene) -> str:
        return f'[backends.iptables]\nvariant = "{variant}"\n'

    def load(n: int) -> tuple[list[str], str]:
        return [f"iptables-{variant}-restore", "-w", "--noflush"], unrelated_rules(n)

    def commit(i: int) -> list[str]:
        rule = f"-A ADMIN -s 192.0.2.{i % 250}/32 -p tcp --dport {1000 + i} -j ACCEPT"
        return [f"iptables-{variant}", "-w", *rule.split()]

    save = [f"iptables-{variant}-save", "-t", "filter"]
    saves = TWO_SAVES.replace("tables-nft-save", f"tables-{variant}-save")
    name = f"iptables-{variant}"
    return Backend(name, section, load, commit, save, save, CHANGING_RATIO, saves, variant=variant)


def _nftables(mode: str, used: bool = False) -> Backend:
    def section(sc: Scene) -> str:
        return f'[backends.nftables]\nmode = "{mode}"\nfile = "{sc.tmp / "cfallow.nft"}"\n'

    def load(n: int) -> tuple[list[str], str]:
        return ["nft", "-f", "-"], admin_table(n)

    def commit(i: int) -> list[str]:
        return [
            "nft",
            "add",
            "rule",
            "inet",
            "filter",
            "admin",
            "tcp",
            "dport",
            str(1000 + i),
            "accept",
        ]

    listing = ["nft", "-t", "-j", "list", "ruleset"]
    admin = ["nft", "list", "table", "inet", "filter"]
    if not used:
        return Backend(f"nftables-{mode}", section, load, commit, listing, admin)
    rule = "ip saddr @cloudflare_v4 tcp dport { 80, 443 } accept"
    then = ("nft", "add", "rule", "inet", "filter", "input", *rule.split())
    return Backend(f"nftables-{mode}-used", section, load, commit, listing, admin, then=then)


BACKENDS = {
    b.name: b
    for b in (
        _iptables("nft"),
        _iptables("legacy"),
        _nftables("lockdown"),
        _nftables("sets"),
        _nftables("sets", used=True),
    )
}
#: What ``--backends`` measures unless told.
DEFAULT = ("iptables-nft", "iptables-legacy", "nftables-lockdown", "nftables-sets")


@dataclass
class Figure:
    """One measured figure at one size: times, peak memory, its ratio and verdicts."""

    backend: str
    rules: int
    figure: str
    times: list[float]
    peak_mb: float  # the most the process tree held at once (cfallow and its children)
    largest_mb: float  # the largest single process
    ratio: float | None = None  # median / the median of what it is compared with
    versus: str = ""
    checks: list[tuple[str, bool]] = field(default_factory=list)  # (target, met)
    #: CPU s of each run's process tree (other load moves it far less than the time)
    cpu: list[float] = field(default_factory=list)
    cpu_ratio: float | None = None  # its median / the median of what it is compared with

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def verdict(self) -> str:
        if not self.checks:
            return "-"
        return "met" if all(ok for _, ok in self.checks) else "NOT met"

    def row(self) -> str:
        ratio = f"{self.ratio:6.2f}x {self.versus}" if self.ratio is not None else "-"
        target = ", ".join(t for t, _ in self.checks) or "-"
        cpu = f"{statistics.median(self.cpu):7.3f}" if self.cpu else f"{'-':>7}"
        if self.cpu_ratio is not None:
            cpu += f" ({self.cpu_ratio:.2f}x)"
        return (
            f"{self.rules:>7,}  {self.figure:24} {self.median:7.3f} {max(self.times):7.3f}"
            f" {self.peak_mb:7.1f}  {ratio:24} {target:30} {self.verdict():7}  {cpu}"
        )


def _figure(b: Backend, n: int, name: str, runs: list[Run]) -> Figure:
    return Figure(
        b.name,
        n,
        name,
        [r.seconds for r in runs],
        max(r.peak_mb for r in runs),
        max(r.largest_mb for r in runs),
        cpu=[r.cpu for r in runs],
    )


def _config(sc: Scene, b: Backend, name: str, extra: str = "") -> Path:
    path = sc.tmp / name
    path.write_text(sc.source() + b.section(sc) + extra)
    return path


def _without_analysis(sc: Scene, b: Backend, runs: int, env: dict[str, str]) -> list[Run]:
    """No-change runs with ``host_check = false`` ([] when the backend has no such key)."""
    argv = sc.cfallow(_config(sc, b, "no-check.toml", "host_check = false\n"), "sync")
    try:
        run(argv, env)
    except RuntimeError as exc:
        if "unknown key" in str(exc) and "host_check" in str(exc):
            return []
        raise
    return [run(argv, env) for _ in range(runs)]


def measure(b: Backend, n: int, runs: int, setup: Setup) -> list[Figure]:
    """Every figure of one backend at ``n`` admin rules, in one fresh namespace."""
    with scene("scale", setup.program) as sc:
        env = dict(setup.env, XTABLES_LOCKFILE=str(sc.tmp / "xtables.lock"))
        argv, text = b.load(n)
        sh(sc.nsx(*argv), input=text, env=env)
        config = _config(sc, b, "config.toml")
        sync = sc.cfallow(config, "sync")
        run(sync, env)  # the first sync writes cfallow's own rules or sets
        if b.then:
            sh(sc.nsx(*b.then), env=env)
        run(sync, env)  # the first run after cfallow's own commit analyses it once
        out = [_figure(b, n, "no-change", [run(sync, env) for _ in range(runs)])]
        off = _without_analysis(sc, b, runs, env)
        if off:
            out.append(_figure(b, n, "no-change, host_check off", off))
        if b.unavoidable:
            alone = sc.cfallow(config, "sync", "--offline")
            run(alone, env)  # the first offline run plans (its command line is new) and records
            offline = [run(alone, env) for _ in range(runs)]
            out.append(_figure(b, n, "offline no-change", offline))
            full_env = dict(env, CFALLOW_NO_INSTEP="1")
            planned = [run(alone, full_env) for _ in range(runs)]
            out.append(_figure(b, n, "offline no-change, in full", planned))
            reads = [run(sc.nsx(setup.python, "-c", b.unavoidable), env) for _ in range(runs)]
            out.append(_figure(b, n, "the two saves (Python)", reads))
        reads = [run(sc.nsx(*b.baseline), env) for _ in range(runs)]
        out.append(_figure(b, n, "the read", reads))
        out += _changes(sc, b, n, runs, env)
        if b.variant:  # after the changes: its chain is the floor script's own
            floor = sc.nsx(setup.python, "-c", READ_AND_WRITE, b.variant)
            writes = [run([*floor, str(12 + i % 2)], env) for i in range(runs)]
            out.append(_figure(b, n, "read and write (Python)", writes))
            split = sc.nsx(setup.python, "-c", READ_AND_SPLIT, b.variant)
            splits = [run(split, env) for _ in range(runs)]
            out.append(_figure(b, n, "read and split (Python)", splits))
        listing = sh(sc.nsx(*b.admin), env=env)
        kept = listing.lower().count("accept")
        if kept < n:
            raise RuntimeError(f"{b.name}: {kept} accept rules left of the admin's {n}")
        if b.then and " ".join(b.then[6:]) not in listing:
            raise RuntimeError(f"{b.name}: the admin's rule {' '.join(b.then[6:])!r} is gone")
        return out


def _changes(sc: Scene, b: Backend, n: int, runs: int, env: dict[str, str]) -> list[Figure]:
    """Runs after an admin commit each, then runs whose list changed; in step at the end."""
    sync = sc.cfallow(sc.tmp / "config.toml", "sync")
    changed = []
    for i in range(runs):
        sh(sc.nsx(*b.commit(i)), env=env)
        changed.append(run(sync, env))
    changing = []
    for i in range(runs):
        sc.publish("old" if i % 2 == 0 else "current")
        changing.append(run(sync, env))
    sc.publish("current")
    run(sync, env)
    sh(sc.cfallow(sc.tmp / "config.toml", "status"), env=env)  # exit 3 on drift
    return [_figure(b, n, "ruleset changed", changed), _figure(b, n, "changing sync", changing)]


def judge(b: Backend, figures: list[Figure]) -> None:
    """Each figure's ratio to what the issue compares it with, and its targets at this size."""
    by = {f.figure: f for f in figures}
    base = by["the read"]
    off = by.get("no-change, host_check off")
    scale = base.rules >= AT_SCALE
    nc = by["no-change"]
    if off is not None:
        nc.ratio, nc.versus = nc.median / off.median, "host_check off"
        nc.checks.append((f"<= {NO_CHANGE_RATIO:g}x", nc.ratio <= NO_CHANGE_RATIO))
        off.ratio, off.versus = off.median / base.median, "the read"
    else:
        nc.ratio, nc.versus = nc.median / base.median, "the read"
    nc.checks.append((f"peak <= {PEAK_MB:g} MB", nc.peak_mb <= PEAK_MB))
    changed = by["ruleset changed"]
    changed.ratio, changed.versus = changed.median / base.median, "the read"
    for f in (changed, by["changing sync"]):
        if f.cpu and base.cpu and statistics.median(base.cpu) > 0:
            f.cpu_ratio = statistics.median(f.cpu) / statistics.median(base.cpu)
    if scale:
        changed.checks.append((f"<= {CHANGED_RATIO:g}x", changed.ratio <= CHANGED_RATIO))
    changing = by["changing sync"]
    changing.ratio, changing.versus = changing.median / base.median, "the read"
    if scale and b.changing_target is not None:
        limit = b.changing_target
        changing.checks.append((f"<= {limit:g}x", changing.ratio <= limit))
    for name in ("read and write (Python)", "read and split (Python)"):
        floor = by.get(name)
        if floor is not None:  # what no tool can go under, in the same unit as the target
            floor.ratio, floor.versus = floor.median / base.median, "the read"
    if "offline no-change" in by:
        offline, saves = by["offline no-change"], by["the two saves (Python)"]
        offline.ratio, offline.versus = offline.median / saves.median, "the two saves"
        offline.checks.append((f"<= {OFFLINE_RATIO:g}x", offline.ratio <= OFFLINE_RATIO))
        full = by.get("offline no-change, in full")
        if full is not None:
            full.ratio, full.versus = full.median / saves.median, "the two saves"


def growth(figures: list[Figure]) -> list[str]:
    """Per figure: (time at the largest size / at the smallest non-zero) / (ratio of rules)."""
    lines = []
    names = dict.fromkeys(f.figure for f in figures)
    for name in names:
        sized = sorted((f.rules, f.median) for f in figures if f.figure == name and f.rules)
        if len(sized) < 2:
            continue
        (n0, t0), (n1, t1) = sized[0], sized[-1]
        g = (t1 / t0) / (n1 / n0)
        said = f"  growth {name:24} {n0:,} -> {n1:,} rules: x{t1 / t0:.2f} time for x{n1 / n0:g}"
        if name in BASELINES:
            lines.append(f"{said} rules = {g:.3f} (a baseline)")
            continue
        verdict = "met" if g <= 1 else "NOT met"
        lines.append(f"{said} rules = {g:.3f} (target <= 1, linear or better): {verdict}")
    return lines


def header() -> str:
    return (
        f"{'rules':>7}  {'figure':24} {'median':>7} {'max':>7} {'peak MB':>7}  "
        f"{'ratio':24} {'target':30} verdict  cpu s (x the read's)"
    )


def matrix(
    chosen: list[Backend], sizes: tuple[int, ...], runs: int, setup: Setup
) -> dict[str, Any]:
    """Measure, judge and print every backend at every size; the results as a JSON document."""
    load_before = load_average()
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, {platform.release()}")
    print(f"cfallow: {setup.program}; load average before: {load_before}; {runs} runs a figure")
    results: list[Figure] = []
    notes: list[str] = []
    failed: list[str] = []
    for b in chosen:
        print(f"\n{b.name} (the read: {' '.join(b.baseline)})\n{header()}", flush=True)
        mine: list[Figure] = []
        for n in sizes:
            try:
                figures = measure(b, n, runs, setup)
            except RuntimeError as exc:  # e.g. a command over the runner's timeout: go on
                print(f"{n:>7,}  failed: {exc}", flush=True)
                failed.append(f"{b.name} {n:,}: {exc}")
                continue
            judge(b, figures)
            for f in figures:
                print(f.row(), flush=True)
            mine += figures
        if not any(f.figure == "no-change, host_check off" for f in mine):
            print(f"({b.name} has no host_check key: no-change is compared with the read)")
        lines = growth(mine)
        if lines:
            print("\n".join(lines))
        notes += [f"{b.name}: {line.strip()}" for line in lines]
        results += mine
    load_after = load_average()
    print(f"\nload average after: {load_after}")
    print("peak MB: the most cfallow and its children (nft, iptables-save) held at once")
    missed = [f"{f.backend} {f.rules:,} {f.figure}" for f in results if f.verdict() == "NOT met"]
    missed += [" ".join(line.split()[:3]) for line in notes if line.endswith("NOT met")]
    print("targets NOT met: " + ("; ".join(missed) if missed else "none"))
    if failed:
        print("failed: " + "; ".join(failed))
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average": {"before": load_before, "after": load_after},
        "runs": runs,
        "cfallow": setup.program,
        "figures": [dict(asdict(f), median=f.median, verdict=f.verdict()) for f in results],
        "growth": notes,
        "failed": failed,
    }


SHORT = {"host_check off": "off", "the read": "read", "the two saves": "saves"}


def _cell(f: dict[str, Any] | None, ratio: bool = True, peak: bool = False) -> str:
    if f is None:
        return "n/a"
    text = f"{f['median']:.3f}"
    if peak:
        text += f" / {f['peak_mb']:.0f} MB"
    if ratio and f["ratio"] is not None:
        text += f" ({f['ratio']:.2f}x {SHORT.get(f['versus'], f['versus'])})"
    if f["verdict"] == "NOT met":
        text = f"**{text}**"
    return text


def render(doc: dict[str, Any]) -> str:
    """The results as Markdown tables (median s; peak MB; ratio to what it is compared
    with: off = host_check off, read = the read, saves = the two saves; **bold**: a
    target not met)."""
    by = {(f["backend"], f["rules"], f["figure"]): f for f in doc["figures"]}
    rows = sorted({(f["backend"], f["rules"]) for f in doc["figures"]}, key=lambda r: r[1])
    rows.sort(key=lambda r: list(BACKENDS).index(r[0]))
    out = [
        f"{doc['date']}, load average {doc['load_average']['before']} before, "
        f"{doc['load_average']['after']} after; median of {doc['runs']} runs, s",
        "",
        "| backend | admin rules | no-change / peak | no-change, host_check off "
        "| ruleset changed | changing sync | the read / peak | read and split "
        "| read and write |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for b, n in rows:
        f = {name: by.get((b, n, name)) for name in (*BASELINES, *FIGURE_NAMES)}
        out.append(
            f"| {b} | {n:,} | {_cell(f['no-change'], peak=True)} "
            f"| {_cell(f['no-change, host_check off'], ratio=False)} "
            f"| {_cell(f['ruleset changed'])} | {_cell(f['changing sync'])} "
            f"| {_cell(f['the read'], ratio=False, peak=True)} "
            f"| {_cell(f['read and split (Python)'])} "
            f"| {_cell(f['read and write (Python)'])} |"
        )
    offline = [(b, n) for b, n in rows if by.get((b, n, "offline no-change"))]
    if offline:
        out += [
            "",
            "| backend | admin rules | offline no-change | in full (no record) "
            "| the two saves (Python) |",
            "|---|---|---|---|---|",
        ]
        for b, n in offline:
            full = by.get((b, n, "offline no-change, in full"))
            out.append(
                f"| {b} | {n:,} | {_cell(by[(b, n, 'offline no-change')])} "
                f"| {_cell(full) if full else '-'} "
                f"| {_cell(by[(b, n, 'the two saves (Python)')], ratio=False)} |"
            )
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rules", help="admin rules, comma-separated (default 0,1000,20000,100000)")
    ap.add_argument("--quick", action="store_true", help="only 0 and 1,000 admin rules")
    ap.add_argument(
        "--backends",
        default=",".join(DEFAULT),
        help=f"comma-separated, of {', '.join(BACKENDS)} (default: {','.join(DEFAULT)})",
    )
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (median and max)")
    ap.add_argument(
        "--editable",
        action="store_true",
        help="run this virtualenv's cfallow (default: this checkout as a byte-compiled wheel)",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--markdown", action="store_true", help="also print the results as tables")
    ap.add_argument(
        "--render", type=Path, help="print the tables of a --json file, measure nothing"
    )
    opts = ap.parse_args()
    if opts.render:
        print(render(json.loads(opts.render.read_text())), end="")
        return 0
    if os.geteuid() != 0:
        print("run as root (network namespaces)", file=sys.stderr)
        return 2
    sizes = QUICK if opts.quick else SIZES
    if opts.rules:
        sizes = tuple(int(n) for n in opts.rules.split(","))
    chosen = [BACKENDS[name] for name in opts.backends.split(",")]
    with tempfile.TemporaryDirectory(prefix="cfallow-bench-wheel-") as tmp:
        setup = Setup()
        if not opts.editable:
            python, program = install(Path(tmp))
            setup = Setup(program, python, dict(ENV))
        doc = matrix(chosen, sizes, opts.runs, setup)
    if opts.markdown:
        print("\n" + render(doc), end="")
    if opts.json:
        opts.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if doc["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
