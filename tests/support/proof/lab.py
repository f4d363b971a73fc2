"""The proof lab: a server and a client namespace, an admin firewall, a local list source.

Shared by the fault and soak tests and by ``bench/bench_compare.py``. The
server namespace has the admin's ruleset (policy DROP on INPUT, loopback,
established, ICMPv6) written with one iptables variant, a listener on 443 and
an HTTP source on its own 127.0.0.1 that publishes either Cloudflare list.
The client namespace holds an address inside a Cloudflare range (in both
lists) and one outside every range. Nothing leaves the two namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from support import namespace_pair, ns_exec, sh

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parents[1] / "fixtures" / "cloudflare"
PROCS = str(HERE / "procs.py")
CFALLOW = str(Path(sys.executable).parent / "cfallow")

SERVER = ("192.0.2.1", "2001:db8::1")
CF_CLIENT = ("173.245.48.10", "2400:cb00::10")  # in 173.245.48.0/20 and 2400:cb00::/32
OUTSIDE = "198.51.100.7"
PORT = 443
VARIANTS = {
    "nft": ("iptables-nft", "ip6tables-nft"),
    "legacy": ("iptables-legacy", "ip6tables-legacy"),
}

#: era -> (API body file, IPv4 text file); IPv6 did not change.
ERAS = {
    "current": ("api-ips.json", "ips-v4.txt"),
    "2021-03": ("api-ips-2021-03.json", "ips-v4-2021-03.txt"),
}


def era_lists(era: str) -> tuple[list[str], list[str]]:
    """The (IPv4, IPv6) CIDRs of one era, from the text fixtures."""
    v4 = (FIXTURES / ERAS[era][1]).read_text().split()
    v6 = (FIXTURES / "ips-v6.txt").read_text().split()
    return v4, v6


def publish(www: Path, era: str) -> None:
    """Serve one era's lists (API and text) from ``www``, each file replaced atomically."""
    api, v4 = ERAS[era]
    for name, src in (("client/v4/ips", api), ("ips-v4", v4), ("ips-v6", "ips-v6.txt")):
        dest = www / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_suffix(".part")
        part.write_bytes((FIXTURES / src).read_bytes())
        os.replace(part, dest)


def chain_sources(save: str, chain: str) -> list[str]:
    """Source CIDRs of the ``-s CIDR ... -j ACCEPT`` rules of ``chain`` in a save dump."""
    return [m.group(2) for m in map(_RULE.match, save.splitlines()) if m and m.group(1) == chain]


_RULE = re.compile(r"^-A (\S+) .*?-s (\S+) .*-j ACCEPT")


@dataclass
class Lab:
    """One server/client namespace pair with an admin firewall written by ``variant``."""

    server: str
    client: str
    variant: str
    tmp: Path
    port: int = 0
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    # -- firewall -----------------------------------------------------------------
    def ipt(self, family: int) -> str:
        return VARIANTS[self.variant][0 if family == 4 else 1]

    def admin_baseline(self) -> None:
        for fam in (4, 6):
            rules = ["-P INPUT DROP", "-A INPUT -i lo -j ACCEPT"]
            rules.append("-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")
            if fam == 6:
                rules.append("-A INPUT -p ipv6-icmp -j ACCEPT")
            for rule in rules:
                sh(ns_exec(self.server, self.ipt(fam), "-w", *rule.split()))

    def save(self, family: int) -> str:
        """``iptables-save -t filter`` of this variant and family."""
        return sh(ns_exec(self.server, self.ipt(family) + "-save", "-t", "filter"))

    def accept_rules(self, chain: str | None = None) -> list[str]:
        """Source CIDRs of every ``-s CIDR ... -j ACCEPT`` rule (in ``chain``), both families."""
        out = []
        for fam in (4, 6):
            for line in self.save(fam).splitlines():
                m = _RULE.match(line)
                if m and (chain is None or m.group(1) == chain):
                    out.append(m.group(2))
        return out

    def chain_rules(self, chain: str) -> dict[int, list[str]]:
        """Per family, the ``-A CHAIN`` lines of ``chain`` in order."""
        return {
            fam: [ln for ln in self.save(fam).splitlines() if ln.startswith(f"-A {chain} ")]
            for fam in (4, 6)
        }

    # -- processes ----------------------------------------------------------------
    def spawn(self, ns: str, *argv: str) -> subprocess.Popen[str]:
        """Start a helper in ``ns``; wait for its ``ready`` line."""
        proc = subprocess.Popen(
            ns_exec(ns, sys.executable, PROCS, *argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"{argv[0]} did not start in {ns}")
        if argv[0] == "serve":
            self.port = int(line.split()[1])
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
        self.procs.clear()

    # -- the list source ----------------------------------------------------------
    @property
    def www(self) -> Path:
        return self.tmp / "www"

    def publish(self, era: str) -> None:
        """Make the source serve one era's lists."""
        publish(self.www, era)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    # -- cfallow ------------------------------------------------------------------
    def config(self, extra: str = "", name: str = "config.toml", **iptables: object) -> Path:
        """A cfallow config for this lab: the local source, the iptables backend."""
        opts = {"variant": self.variant, "ports": [80, 443], **iptables}
        lines = [
            "[source]",
            f'api_url = "{self.url("client/v4/ips")}"',
            f'text_urls = ["{self.url("ips-v4")}", "{self.url("ips-v6")}"]',
            "timeout = 5",
            "attempts = 2",
            "backoff = 0.05",
            "",
            "[backends.iptables]",
            *(f"{k} = {json.dumps(v)}" for k, v in opts.items()),
            "",
            extra,
        ]
        path = self.tmp / name
        path.write_text("\n".join(lines))
        return path

    def cfallow_cmd(self, *args: str, config: Path | None = None) -> list[str]:
        """``cfallow --config C --state-dir S ARGS`` (to run inside the server namespace)."""
        cfg = config or self.tmp / "config.toml"
        return [CFALLOW, "--config", str(cfg), "--state-dir", str(self.tmp / "state"), *args]

    def cfallow_argv(self, *args: str, config: Path | None = None) -> list[str]:
        """:meth:`cfallow_cmd` wrapped in ``ip netns exec SERVER``."""
        return ns_exec(self.server, *self.cfallow_cmd(*args, config=config))

    # -- traffic ------------------------------------------------------------------
    def can_connect(self, src: str) -> bool:
        """One connection from ``src`` (client namespace) to the server's 443."""
        dst = SERVER[1] if ":" in src else SERVER[0]
        code = (
            "import socket,sys;s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] "
            "else socket.AF_INET);s.settimeout(0.5);s.bind((sys.argv[1],0));"
            "sys.exit(s.connect_ex((sys.argv[2],int(sys.argv[3]))))"
        )
        argv = ns_exec(self.client, sys.executable, "-c", code, src, dst, str(PORT))
        return subprocess.run(argv, check=False, timeout=10).returncode == 0

    @contextlib.contextmanager
    def connect_loop(self, src: str = CF_CLIENT[0], rate: float = 2000) -> Iterator[dict[str, int]]:
        """A bounded connect loop from ``src`` while the block runs; fills the dict on exit."""
        dst = SERVER[1] if ":" in src else SERVER[0]
        stats: dict[str, int] = {}
        proc = self.spawn(self.client, "connect", src, dst, str(PORT), "--rate", str(rate))
        try:
            yield stats
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            stats.update(json.loads(out.strip().splitlines()[-1]))


@contextlib.contextmanager
def lab(variant: str, tag: str = "lab") -> Iterator[Lab]:
    """A ready lab: namespaces, admin firewall, listener on 443, source serving 2021-03."""
    with (
        tempfile.TemporaryDirectory(prefix="cfallow-lab-") as tmp,
        namespace_pair(
            [f"{SERVER[0]}/32", f"{SERVER[1]}/128"],
            [f"{CF_CLIENT[0]}/32", f"{OUTSIDE}/32", f"{CF_CLIENT[1]}/128"],
            tag=tag,
        ) as (srv, cli),
    ):
        lb = Lab(srv, cli, variant, Path(tmp))
        try:
            lb.admin_baseline()
            lb.publish("2021-03")
            lb.spawn(srv, "serve", str(lb.www))
            lb.spawn(srv, "listen", str(PORT))
            yield lb
        finally:
            lb.stop_all()
