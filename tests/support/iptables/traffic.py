"""Real TCP traffic between two test namespaces, for the iptables backend's tests.

The server namespace gets the admin's firewall and the listeners; the client
namespace holds one address inside a Cloudflare range in both fixture lists,
one inside the range only the 2021-03 list has, and one outside every range,
for both families. Every address lives only inside the two namespaces.
Listeners and the connect loop are ``support/proof/procs.py`` (bounded, stdlib only);
the echo server and the long-lived client are here.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from support import namespace_pair, ns_exec

PROCS = str(Path(__file__).resolve().parents[1] / "proof" / "procs.py")
SERVER = ("192.0.2.1", "2001:db8::1")
CF = ("104.16.0.10", "2400:cb00::10")  # 104.16.0.0/12 (2021-03) and 104.16.0.0/13 (now)
OLD_ONLY = "104.28.0.10"  # only in 104.16.0.0/12, removed on 2021-04-08
OUTSIDE = ("198.51.100.7", "2001:db8:ff::7")
LISTEN, ECHO = 443, 80
OTHER = 8080  # a port outside the jump's

#: The admin's firewall: policy DROP, loopback, established, ICMPv6 (neighbour discovery).
POLICY_DROP = {
    4: "*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\n"
    "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n",
    6: "*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\n"
    "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n"
    "-A INPUT -p ipv6-icmp -j ACCEPT\nCOMMIT\n",
}

_ECHO_SERVER = """
import socket, sys, threading
def serve(conn):
    with conn:
        while True:
            data = conn.recv(100)
            if not data:
                return
            conn.sendall(data)
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""

_HOLDER = """
import socket, sys
s = socket.socket(socket.AF_INET)
s.settimeout(2)
s.bind((sys.argv[1], 0))
s.connect((sys.argv[2], int(sys.argv[3])))
print("ready", flush=True)
for line in sys.stdin:
    try:
        s.sendall(line.encode())
        print(s.recv(100).decode().strip() or "closed", flush=True)
    except OSError as exc:
        print(type(exc).__name__, flush=True)
"""

_CONNECT = (
    "import socket,sys;s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] "
    "else socket.AF_INET);s.settimeout(float(sys.argv[4]));s.bind((sys.argv[1],0));"
    "sys.exit(s.connect_ex((sys.argv[2],int(sys.argv[3]))))"
)


@dataclass
class Pair:
    """The two namespaces and the processes started in them (ended by pid on exit)."""

    server: str
    client: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def spawn(self, ns: str, *argv: str, stdin: bool = False) -> subprocess.Popen[str]:
        """Start ``argv`` in ``ns`` and wait for its ``ready`` line."""
        proc = subprocess.Popen(
            ns_exec(ns, *argv),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ready"), f"{argv[:3]} did not start in {ns}"
        return proc

    def can_connect(
        self, src: str, port: int = LISTEN, timeout: float = 0.5, dst: str | None = None
    ) -> bool:
        """One TCP connect from ``src`` (client namespace) to the server (or ``dst``)."""
        dst = dst or (SERVER[1] if ":" in src else SERVER[0])
        argv = ns_exec(self.client, sys.executable, "-c", _CONNECT, src, dst, str(port))
        return subprocess.run([*argv, str(timeout)], check=False, timeout=10).returncode == 0

    def hold(self, src: str) -> subprocess.Popen[str]:
        """A connection to the echo port from ``src``, kept open; lines in, echoes out."""
        return self.spawn(
            self.client, sys.executable, "-c", _HOLDER, src, SERVER[0], str(ECHO), stdin=True
        )

    @contextlib.contextmanager
    def connect_loop(self, src: str = CF[0]) -> Iterator[dict[str, int]]:
        """Connects from ``src`` as fast as allowed while the block runs (0.3 s = failed)."""
        stats: dict[str, int] = {}
        proc = self.spawn(
            self.client, sys.executable, PROCS, "connect", src, SERVER[0], str(LISTEN)
        )
        try:
            yield stats
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            stats.update(json.loads(out.strip().splitlines()[-1]))


def reach(p: Pair) -> dict[str, bool]:
    """Can each client address reach 443? (in parallel: a dropped SYN costs a timeout)"""
    sources = (*CF, *OUTSIDE)
    with ThreadPoolExecutor(len(sources)) as pool:
        return dict(zip(sources, pool.map(p.can_connect, sources)))


def echo(proc: subprocess.Popen[str], text: str) -> str:
    """Send one line through a :meth:`Pair.hold` connection; the reply (or the error)."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


@contextlib.contextmanager
def pair(server_if: str | None = None) -> Iterator[Pair]:
    """Server and client namespaces joined by a veth pair, listeners on 443 and 80.

    ``server_if``: the name of the server's uplink (default: a random one).
    """
    with namespace_pair(
        [f"{SERVER[0]}/32", f"{SERVER[1]}/128"],
        [f"{CF[0]}/32", f"{OLD_ONLY}/32", f"{OUTSIDE[0]}/32", f"{CF[1]}/128", f"{OUTSIDE[1]}/128"],
        tag="ipt",
        server_if=server_if,
    ) as (srv, cli):
        p = Pair(srv, cli)
        try:
            for port in (LISTEN, OTHER):
                p.spawn(srv, sys.executable, PROCS, "listen", str(port))
            p.spawn(srv, sys.executable, "-c", _ECHO_SERVER, str(ECHO))
            yield p
        finally:
            for proc in p.procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                for stream in (proc.stdin, proc.stdout):
                    if stream:
                        stream.close()
