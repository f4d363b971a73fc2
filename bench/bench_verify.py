"""Time ``cfallow verify`` on a test host namespace (run as root).

    .venv/bin/python bench/bench_verify.py [RUNS]

The host is a fresh namespace with an uplink, a native ``inet filter``
policy-drop ruleset opening 80/443 and cfallow's iptables lockdown in front;
each run is the real CLI entered with ``nsenter`` (interpreter start included),
so the number is what an operator waits for. Every run proves every published
range at both ends (the bundled list: 15 IPv4 and 7 IPv6 ranges) and the
outsiders. Rows: the lockdown on iptables-nft with 2 ports x 2 families (184
probes) and with 6 ports (552 probes), firewalld's ruleset
(tests/fixtures/verify; about 90 trace events per probe) with the allow mode,
and the lockdown on iptables-legacy (x_tables: no nftables trace, so a dropped
SYN waits out the 0.5 s time-out; last, as its tables stay in the host).
Prints min / median / max per row.
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


def _time(ns: str, tmp: Path, config: str, runs: int) -> tuple[list[float], int]:
    """(seconds per run, probes) of ``verify`` in ``ns`` after a first ``sync``."""
    cfg = tmp / "config.toml"
    cfg.write_text(config)
    state = ["--config", str(cfg), "--state-dir", str(tmp / "state")]
    base = ["nsenter", f"--net=/run/netns/{ns}", CFALLOW, *state]
    sh(*base, "sync", "--source", "bundled")
    times, probes = [], 0
    for _ in range(runs):
        t = time.monotonic()
        done = subprocess.run([*base, "verify", "-q"], capture_output=True, text=True, check=False)
        times.append(time.monotonic() - t)
        if done.returncode != 0:
            raise SystemExit(f"verify failed: {done.stdout}{done.stderr}")
        probes = int(done.stdout.split("(")[1].split()[0])
    sh(*base, "remove")
    return times, probes


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
        print(f"cfallow verify, every range at both ends, {runs} runs each:")
        for label, ports, mode, variant, ruleset in rows():
            sh(*x, "nft", "-f", "-", input="flush ruleset\n" + ruleset)
            with tempfile.TemporaryDirectory() as tmp:
                config = CONFIG.format(ports=ports, mode=mode, variant=variant)
                times, probes = _time(ns, Path(tmp), config, runs)
            print(
                f"  {label} ({probes} probes): min {min(times):.2f} s, "
                f"median {statistics.median(times):.2f} s, max {max(times):.2f} s"
            )
        return 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    sys.exit(main())
