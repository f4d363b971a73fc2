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

Beside them, in the same namespace: the peak RSS of the no-change runs (cfallow
or its largest child, ``nft``), one ``nft -t -j list ruleset`` (the cost of
reading the whole ruleset), and at the largest size the same runs with
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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "cloudflare"
CFALLOW = str(Path(sys.executable).parent / "cfallow")
ERAS = {"old": "api-ips-2021-03.json", "current": "api-ips.json"}
TARGETS = {"no-change": 0.3, "changing": 0.5}

_SERVER = """
import http.server, pathlib, sys
root = pathlib.Path(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (root / "ips.json").read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def sh(argv: list[str], **kw: object) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout  # type: ignore[call-overload,no-any-return]


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


PEAK: list[float] = []  # MB, the last timed() runs' peak RSS (the process and its children)


def timed(argv: list[str]) -> float:
    """Seconds from start to exit; the peak RSS of the process tree goes to :data:`PEAK`."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    PEAK.append(usage.ru_maxrss / 1024)  # the largest of the process and its waited children
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[-3:])} exited {proc.returncode}: {err.strip()}")
    return took


@dataclass
class Result:
    mode: str
    unrelated_rules: int
    no_change: list[float]
    changing: list[float]
    peak_mb: float = 0.0  # no-change runs: the largest process (cfallow or its nft child)
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
    ns = f"cfa-bench-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="cfallow-bench-"))
    server = None
    sh(["ip", "netns", "add", ns])
    try:
        nsx = ["ip", "netns", "exec", ns]
        sh([*nsx, "ip", "link", "set", "lo", "up"])
        sh([*nsx, "nft", "-f", "-"], input=admin_table(extra))
        (tmp / "ips.json").write_bytes((FIXTURES / ERAS["current"]).read_bytes())
        server = subprocess.Popen(
            [*nsx, sys.executable, "-c", _SERVER, str(tmp)], stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        (tmp / "config.toml").write_text(
            f'[source]\napi_url = "{url}/client/v4/ips"\n'
            f'text_urls = ["{url}/ips-v4", "{url}/ips-v6"]\n\n[backends.nftables]\n'
            f'mode = "{mode}"\nfile = "{tmp / "cfallow.nft"}"\n'
            f"host_check = {str(host_check).lower()}\n"
        )
        argv = [*nsx, CFALLOW, "--config", str(tmp / "config.toml")]
        argv += ["--state-dir", str(tmp / "state"), "-q", "sync"]
        timed(argv)  # first sync: creates the table or the sets
        timed(argv)  # the first run after cfallow's own commit analyses the new generation
        PEAK.clear()
        no_change = [timed(argv) for _ in range(runs)]
        peak = max(PEAK)
        listing = statistics.median(
            timed([*nsx, "nft", "-t", "-j", "list", "ruleset"]) for _ in range(runs)
        )
        changing = []
        for i in range(runs if changing_runs is None else changing_runs):
            era = "old" if i % 2 == 0 else "current"
            part = tmp / "ips.json.part"
            part.write_bytes((FIXTURES / ERAS[era]).read_bytes())
            os.replace(part, tmp / "ips.json")
            changing.append(timed(argv))
        table = "inet cfallow" if mode == "lockdown" else "inet filter"
        listed = sh([*nsx, "nft", "list", "set", *table.split(), "cloudflare_v4"])
        last = "104.16.0.0/12" if len(changing) % 2 else "104.16.0.0/13"
        assert last in listed, "sync did not converge"
        count = sh([*nsx, "nft", "list", "table", "inet", "filter"]).count(" accept")
        assert count >= extra, "the unrelated rules are gone"
        label = mode if host_check else f"{mode}*"
        return Result(label, extra, no_change, changing, peak, listing)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


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
