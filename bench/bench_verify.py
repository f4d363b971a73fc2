"""Time ``cfallow verify`` on a test host namespace (run as root).

    .venv/bin/python bench/bench_verify.py [RUNS] [--only TEXT] [--before TREE]

The host is a fresh namespace with an uplink, a native ``inet filter``
policy-drop ruleset opening 80/443 and cfallow's iptables lockdown in front;
each run is the real CLI entered with ``nsenter`` (interpreter start included),
so the number is what an operator waits for. Every run proves every published
range at both ends (the bundled list: 15 IPv4 and 7 IPv6 ranges) and the
outsiders. Rows: the lockdown on iptables-nft with 2 ports x 2 families (184
probes) and with 6 ports (552 probes), firewalld's ruleset
(tests/fixtures/verify; about 90 trace events per probe) with the allow mode,
and the lockdown on iptables-legacy (x_tables: no nftables trace, so a dropped
SYN was decided at the 0.5 s time-out before the late input chain; last, as
its tables stay in the host). Prints min / median / max per row.

``--only TEXT``: the rows whose label has TEXT (``legacy``, say). ``--before
TREE``: each row also with the cfallow of the source tree TREE (put first on
``PYTHONPATH``; ``git archive main | tar -x -C TREE``), its runs interleaved
with this tree's, so both face the same load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

CFALLOW = str(Path(sys.executable).with_name("cfallow"))
CONFIG = '[backends.iptables]\nports = [{ports}]\nmode = "{mode}"\nvariant = "{variant}"\n'
FIREWALLD = Path(__file__).resolve().parent.parent / "tests/fixtures/verify/firewalld.nft"
RULESET = """table inet filter {
    chain input {
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iif "lo" accept
        meta l4proto ipv6-icmp accept
        tcp dport { 22, 80, 443, 2053, 2083, 2087, 8443 } accept
    }
}
"""


def rows() -> list[tuple[str, str, str, str, str]]:
    """(label, ports, mode, variant, host ruleset) per row."""
    six = "80, 443, 2053, 2083, 2087, 8443"
    return [
        ("iptables-nft lockdown, 2 ports x 2 families", "80, 443", "lockdown", "nft", RULESET),
        ("iptables-nft lockdown, 6 ports x 2 families", six, "lockdown", "nft", RULESET),
        (
            "firewalld's ruleset, iptables-nft allow, 2 x 2",
            "80, 443",
            "allow",
            "nft",
            FIREWALLD.read_text(),
        ),
        (
            "iptables-legacy lockdown, 2 ports x 2 families",
            "80, 443",
            "lockdown",
            "legacy",
            RULESET,
        ),
    ]


def sh(*argv: str, input: str | None = None) -> None:
    subprocess.run(argv, input=input, text=True, check=True, capture_output=True)


def _time(
    ns: str, tmp: Path, config: str, runs: int, trees: list[str | None]
) -> tuple[list[list[float]], int]:
    """(seconds per run, per tree; probes) of ``verify`` in ``ns`` after a first ``sync``
    (``None``: this tree), the trees taking turns."""
    cfg = tmp / "config.toml"
    cfg.write_text(config)
    state = ["--config", str(cfg), "--state-dir", str(tmp / "state")]
    base = ["nsenter", f"--net=/run/netns/{ns}", CFALLOW, *state]
    sh(*base, "sync", "--source", "bundled")
    times: list[list[float]] = [[] for _ in trees]
    probes = 0
    for _ in range(runs):
        for at, tree in enumerate(trees):
            env = {**os.environ, **({"PYTHONPATH": tree} if tree else {})}
            t = time.monotonic()
            done = subprocess.run(
                [*base, "verify", "-q"], capture_output=True, text=True, check=False, env=env
            )
            times[at].append(time.monotonic() - t)
            if done.returncode != 0:
                raise SystemExit(f"verify failed: {done.stdout}{done.stderr}")
            probes = int(done.stdout.split("(")[1].split()[0])
    sh(*base, "remove")
    return times, probes


def main() -> int:
    ap = argparse.ArgumentParser(description="Time cfallow verify.")
    ap.add_argument("runs", nargs="?", type=int, default=10)
    ap.add_argument("--only", default="", help="the rows whose label has this text")
    ap.add_argument("--before", help="also time the cfallow of this source tree")
    args = ap.parse_args()
    trees = [args.before, None] if args.before else [None]
    ns = f"cfbench-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", ns)
    try:
        x = ("ip", "netns", "exec", ns)
        sh(*x, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "vhp0")
        sh(*x, "ip", "addr", "add", "10.77.0.2/24", "dev", "eth0")
        sh(*x, "ip", "addr", "add", "2001:db8:77::2/64", "dev", "eth0", "nodad")
        sh(*x, "ip", "link", "set", "eth0", "up")
        print(f"cfallow verify, every range at both ends, {args.runs} runs each:")
        for label, ports, mode, variant, ruleset in rows():
            if args.only not in label:
                continue
            sh(*x, "nft", "-f", "-", input="flush ruleset\n" + ruleset)
            with tempfile.TemporaryDirectory() as tmp:
                config = CONFIG.format(ports=ports, mode=mode, variant=variant)
                times, probes = _time(ns, Path(tmp), config, args.runs, trees)
            for tree, took in zip(trees, times):
                name = f", {tree}" if tree else (", this tree" if args.before else "")
                print(
                    f"  {label} ({probes} probes{name}): min {min(took):.2f} s, "
                    f"median {statistics.median(took):.2f} s, max {max(took):.2f} s"
                )
        return 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    sys.exit(main())
