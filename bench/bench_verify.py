"""Time one ``cfallow verify`` (2 ports x 2 families) on a test host namespace (run as root).

    .venv/bin/python bench/bench_verify.py [RUNS]

The host is a fresh namespace with an uplink, a native ``inet filter``
policy-drop ruleset opening 80/443 and cfallow's iptables lockdown in front;
each run is the real CLI entered with ``nsenter`` (interpreter start included),
so the number is what an operator waits for. Prints min / median / max.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

CFALLOW = str(Path(sys.executable).with_name("cfallow"))
CONFIG = '[backends.iptables]\nports = [80, 443]\nmode = "lockdown"\nvariant = "nft"\n'
RULESET = """table inet filter {
    chain input {
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iif "lo" accept
        meta l4proto ipv6-icmp accept
        tcp dport { 22, 80, 443 } accept
    }
}
"""


def sh(*argv: str, input: str | None = None) -> None:
    subprocess.run(argv, input=input, text=True, check=True, capture_output=True)


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    ns = f"cfbench-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", ns)
    try:
        x = ("ip", "netns", "exec", ns)
        sh(*x, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "vhp0")
        sh(*x, "ip", "addr", "add", "10.77.0.2/24", "dev", "eth0")
        sh(*x, "ip", "addr", "add", "2001:db8:77::2/64", "dev", "eth0", "nodad")
        sh(*x, "ip", "link", "set", "eth0", "up")
        sh(*x, "nft", "-f", "-", input=RULESET)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Path(tmp) / "config.toml"
            cfg.write_text(CONFIG)
            base = [
                "nsenter",
                f"--net=/run/netns/{ns}",
                CFALLOW,
                "--config",
                str(cfg),
                "--state-dir",
                str(Path(tmp) / "state"),
            ]
            sh(*base, "sync", "--source", "bundled")
            times = []
            for _ in range(runs):
                t = time.monotonic()
                argv = [*base, "verify"]
                done = subprocess.run(argv, capture_output=True, text=True, check=False)
                times.append(time.monotonic() - t)
                if done.returncode != 0:
                    print(done.stdout, done.stderr, file=sys.stderr)
                    return 1
        print(
            f"verify, 2 ports x 2 families, every range at both ends, {runs} runs: "
            f"min {min(times):.2f} s, median {statistics.median(times):.2f} s, "
            f"max {max(times):.2f} s"
        )
        return 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    sys.exit(main())
