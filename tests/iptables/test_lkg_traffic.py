"""The last-known-good list re-asserted, judged by traffic over a veth pair.

The admin's ruleset is policy DROP on INPUT (allow mode, ports 443). The
``cfallow`` CLI runs inside the server namespace; the Cloudflare stand-in runs
there too, on its loopback (answering 200, then 500, or not running at all).
The client namespace holds a Cloudflare address, an outside address, and
10.0.0.7, inside the 0.0.0.0/1 a planted state file lists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import namespace_pair, need_tool, ns_exec, sh
from support.cfdata import CURRENT
from support.iptables.traffic import _CONNECT, PROCS

from cfallow.model import as_strings

pytestmark = [pytest.mark.root, pytest.mark.slow]

SERVER = "192.0.2.1"
CF, OUTSIDE, PLANTED = "104.16.0.10", "198.51.100.7", "10.0.0.7"
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "cloudflare" / "api-ips.json"
POLICY_DROP = (
    "*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\n"
    "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n"
)
UPSTREAM = """
import http.server, sys
status, body = int(sys.argv[2]), open(sys.argv[3], "rb").read()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body if status == 200 else b"")
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
srv.serve_forever()
"""
CONFIG = """\
[source]
api_url = "http://127.0.0.1:8080/client/v4/ips"
text_urls = ["http://127.0.0.1:8080/ips-v4", "http://127.0.0.1:8080/ips-v6"]
attempts = 1
timeout = 2

[backends.iptables]
variant = "nft"
ports = [443]
ipv6 = false
"""


@dataclass
class Lab:
    server: str
    client: str
    tmp: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    upstream: subprocess.Popen[str] | None = None

    def spawn(self, *argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ns_exec(self.server, *argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
        return proc

    def serve(self, status: int | None) -> None:
        """The stand-in answering ``status`` (None: nothing listens)."""
        if self.upstream is not None:
            self.upstream.kill()
            self.upstream.wait()
            self.upstream = None
        if status is not None:
            self.upstream = self.spawn(
                sys.executable, "-c", UPSTREAM, "8080", str(status), str(FIXTURE)
            )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        conf = self.tmp / "config.toml"
        conf.write_text(CONFIG)
        argv = [sys.executable, "-m", "cfallow", "--config", str(conf)]
        argv += ["--state-dir", str(self.tmp / "state"), *args]
        env = {**os.environ, "XTABLES_LOCKFILE": str(self.tmp / "xtables.lock")}
        return subprocess.run(
            ns_exec(self.server, *argv),
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    def wipe(self) -> None:
        """The kernel back to the admin's saved ruleset: cfallow's chain and jump gone."""
        sh(ns_exec(self.server, "iptables-nft-restore"), input=POLICY_DROP)
        assert "CFALLOW" not in sh(ns_exec(self.server, "iptables-nft-save"))

    def reach(self) -> dict[str, bool]:
        def one(src: str) -> bool:
            argv = ns_exec(self.client, sys.executable, "-c", _CONNECT, src, SERVER, "443", "0.5")
            return subprocess.run(argv, check=False, timeout=10).returncode == 0

        sources = (CF, OUTSIDE, PLANTED)
        with ThreadPoolExecutor(len(sources)) as pool:
            return dict(zip(sources, pool.map(one, sources)))

    def owned(self) -> set[str]:
        save = sh(ns_exec(self.server, "iptables-nft-save"))
        return {ln.split()[3] for ln in save.splitlines() if ln.startswith("-A CFALLOW -s ")}


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    need_tool("iptables-nft-restore", "iptables-nft-save")
    client = [f"{a}/32" for a in (CF, OUTSIDE, PLANTED)]
    with namespace_pair([f"{SERVER}/32"], client, tag="lkg") as (srv, cli):
        lab = Lab(srv, cli, tmp_path)
        try:
            lab.spawn(sys.executable, PROCS, "listen", "443")
            sh(ns_exec(srv, "iptables-nft-restore"), input=POLICY_DROP)
            yield lab
        finally:
            for proc in [*lab.procs]:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                if proc.stdout:
                    proc.stdout.close()


IN_STEP = {CF: True, OUTSIDE: False, PLANTED: False}
V4 = {n for n in as_strings(CURRENT) if ":" not in n}


def test_lost_chain_and_upstream_500_one_sync_restores_and_exits_4(lab: Lab) -> None:
    lab.serve(200)
    assert lab.cli("sync").returncode == 0
    assert lab.reach() == IN_STEP
    lab.wipe()
    assert lab.reach()[CF] is False  # the 522s an operator sees
    lab.serve(500)
    r = lab.cli("sync")
    assert r.returncode == 4, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert "HTTP 500" in lines[0]
    assert "backends held at the last-known-good list of" in lines[1]
    assert lab.reach() == IN_STEP and lab.owned() == V4
    # status says where it compared, and that it is in step.
    st = lab.cli("status")
    assert st.returncode == 0, st.stderr
    assert "compared with the last-known-good list of" in st.stderr
    lab.wipe()
    drift = lab.cli("status", "--json")
    assert drift.returncode == 3 and json.loads(drift.stdout)["source"]["kind"] == "last-known-good"


def test_offline_sync_with_no_upstream_at_all(lab: Lab) -> None:
    lab.serve(200)
    assert lab.cli("sync").returncode == 0
    lab.serve(None)
    lab.wipe()
    r = lab.cli("sync", "--offline", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["source"]["kind"] == "last-known-good"
    assert doc["source"]["etag"] == "38f79d050aa027e3be3865e495dcc9bc"
    assert doc["source"]["date"] == time.strftime("%Y-%m-%d", time.gmtime())
    assert lab.reach() == IN_STEP and lab.owned() == V4


@pytest.mark.parametrize("path", ["live, upstream 500", "offline"])
def test_a_planted_state_file_is_never_applied(lab: Lab, path: str) -> None:
    state = lab.tmp / "state"
    state.mkdir()
    planted = json.loads(FIXTURE.read_text())["result"]
    planted["ipv4_cidrs"].append("0.0.0.0/1")
    doc = {"ipv4": planted["ipv4_cidrs"], "ipv6": planted["ipv6_cidrs"], "fetched_at": 1e9}
    (state / "last-known-good.json").write_text(json.dumps(doc))
    if path == "offline":
        r = lab.cli("sync", "--offline")
        assert r.returncode == 0, r.stderr
    else:
        lab.serve(500)
        r = lab.cli("sync")
        assert r.returncode == 0, r.stderr  # first-run rules: the bundled snapshot
    assert "ignoring unreadable state file" in r.stderr and "0.0.0.0/1" in r.stderr
    assert "using the bundled snapshot" in r.stderr
    assert "0.0.0.0/1" not in lab.owned() and lab.owned() == V4
    assert lab.reach() == IN_STEP
