"""A test "host" for ``cfallow verify``: a namespace with an uplink, addresses and a ruleset.

The verify runs inside it (``nsenter --net=/run/netns/HOST cfallow ...``), so
what it snapshots as "the host" is this namespace. ``nsenter`` switches only
the network namespace: the scratch namespaces' ``/run/netns`` entries land
in the test's own mount namespace, where a leftover would be seen (``ip netns
exec`` would give the run a private mount namespace that hides them).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from support import namespace, ns_exec, sh

CFALLOW = str(Path(sys.executable).with_name("cfallow"))
HOST_ADDRS = ("10.77.0.2/24", "2001:db8:77::2/64")
NFT_DROP = """table inet filter {
    chain input {
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iif "lo" accept
        meta l4proto ipv6-icmp accept
        tcp dport 22 accept
    }
}
"""

#: The real CLI with the trace socket's buffer cut to almost nothing: most events are lost.
STARVED = """import sys
from cfallow.verify import nftrace
nftrace.RCVBUF = 2048
from cfallow.cli.commands import main
sys.exit(main())
"""


@dataclass
class Host:
    """One test host namespace and a temp dir for its config and state."""

    ns: str
    tmp: Path
    uplink: str

    def nft(self, text: str) -> None:
        """Load an nft ruleset into the host."""
        sh(ns_exec(self.ns, "nft", "-f", "-"), input=text)

    def ruleset(self) -> str:
        """``nft list ruleset`` of the host."""
        return sh(ns_exec(self.ns, "nft", "list", "ruleset"))

    def cfallow(
        self,
        config: str,
        *args: str,
        timeout: float = 120,
        env: dict[str, str] | None = None,
        starved: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real CLI inside the host with ``config`` (TOML text), ``env`` added
        (``starved``: with its trace socket's buffer cut, :data:`STARVED`)."""
        cfg = self.tmp / "config.toml"
        cfg.write_text(config)
        program = [sys.executable, "-c", STARVED] if starved else [CFALLOW]
        argv = [*program, "--config", str(cfg), "--state-dir", str(self.tmp / "state"), *args]
        return subprocess.run(
            enter(self.ns, *argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **(env or {})},
        )

    def popen(self, config: str, *args: str) -> subprocess.Popen[str]:
        """Start the CLI inside the host (for kill tests)."""
        cfg = self.tmp / "config.toml"
        cfg.write_text(config)
        argv = [CFALLOW, "--config", str(cfg), "--state-dir", str(self.tmp / "state"), *args]
        return subprocess.Popen(
            enter(self.ns, *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )


def enter(ns: str, *argv: str) -> list[str]:
    """argv run in ``ns``'s network namespace only."""
    return ["nsenter", f"--net=/run/netns/{ns}", *argv]


@contextlib.contextmanager
def host(
    tmp: Path, uplink: str = "eth0", extra: Sequence[tuple[str, Sequence[str]]] = ()
) -> Iterator[Host]:
    """A host namespace: ``uplink`` with :data:`HOST_ADDRS` and a default route, plus ``extra``
    interfaces (name, addresses). Each interface is one end of a veth pair inside the host."""
    with namespace("vh") as ns:
        for i, (name, addrs) in enumerate(((uplink, HOST_ADDRS), *extra)):
            sh(ns_exec(ns, "ip", "link", "add", name, "type", "veth", "peer", "name", f"vhp{i}"))
            for addr in addrs:
                sh(
                    ns_exec(
                        ns,
                        "ip",
                        "addr",
                        "add",
                        addr,
                        "dev",
                        name,
                        *(["nodad"] if ":" in addr else []),
                    )
                )
            sh(ns_exec(ns, "ip", "link", "set", name, "up"))
            sh(ns_exec(ns, "ip", "link", "set", f"vhp{i}", "up"))
        sh(ns_exec(ns, "ip", "route", "add", "default", "via", "10.77.0.1", "dev", uplink))
        yield Host(ns, tmp, uplink)


#: A blocklist in raw PREROUTING (before any filter chain, so cfallow's accept cannot undo it).
IPSET_RULE = [
    "-t",
    "raw",
    "-A",
    "PREROUTING",
    "-p",
    "tcp",
    "-m",
    "set",
    "--match-set",
    "cfv-blocked",
    "src",
    "-j",
    "DROP",
]


def ipset_host(h: Host) -> None:
    """A Cloudflare range in an ipset blocklist in raw PREROUTING."""
    sh(ns_exec(h.ns, "ipset", "create", "cfv-blocked", "hash:net"))
    sh(ns_exec(h.ns, "ipset", "add", "cfv-blocked", "104.16.0.0/13"))
    sh(ns_exec(h.ns, "iptables-nft", *IPSET_RULE))


def _left_behind(name: str) -> bool:
    """A ``cfverify-PID-...`` name whose PID no longer runs (or is this test process):
    what a finished run left. A live PID is another run in progress on the machine (a
    concurrent verify, another test session), not this test's to judge."""
    pid = name[len("cfverify-") :].split("-", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return True
    return not Path(f"/proc/{pid}").exists()


def scratch_namespaces(*, running: bool = False) -> list[str]:
    """Every verify scratch namespace a finished run left behind (see :func:`_left_behind`);
    ``running``: those of runs still going too."""
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith("cfverify-") and (running or _left_behind(n)))


def scratch_temp() -> list[str]:
    """Every verify temp dir a finished run left behind (see :func:`_left_behind`)."""
    import tempfile

    found = Path(tempfile.gettempdir()).glob("cfverify-*")
    return sorted(p.name for p in found if _left_behind(p.name))


def failures(err: str) -> list[str]:
    """The ``verify:`` failure lines of stderr."""
    return [line for line in err.splitlines() if line.startswith("cfallow: error: verify: ")]


_LISTEN = (
    "import socket,time;s=socket.socket();s.bind(('0.0.0.0',443));s.listen();"
    "print('ready',flush=True);time.sleep(120)"
)
_CONNECT = (
    "import socket,sys;s=socket.socket();s.settimeout(2);s.bind((sys.argv[1],0));"
    "sys.exit(s.connect_ex((sys.argv[2],443)))"
)


@contextlib.contextmanager
def client(h: Host, *sources: str) -> Iterator[Callable[[str], bool]]:
    """Real connections to the host's 443: a listener there, and a client namespace on the
    far end of the host's uplink (taken from the host: use it after verify) holding
    ``sources``; yields ``connect(source)``, True when the connection is made."""
    server = HOST_ADDRS[0].split("/")[0]
    with namespace("ipc") as far:
        sh(ns_exec(h.ns, "ip", "link", "set", "vhp0", "netns", far))
        for source in sources:
            sh(ns_exec(far, "ip", "addr", "add", f"{source}/32", "dev", "vhp0"))
            sh(ns_exec(h.ns, "ip", "route", "add", f"{source}/32", "dev", h.uplink))
        sh(ns_exec(far, "ip", "link", "set", "vhp0", "up"))
        sh(ns_exec(far, "ip", "route", "add", f"{server}/32", "dev", "vhp0"))
        listener = subprocess.Popen(
            ns_exec(h.ns, sys.executable, "-c", _LISTEN), stdout=subprocess.PIPE, text=True
        )
        try:
            assert listener.stdout is not None and listener.stdout.readline() == "ready\n"

            def connect(source: str) -> bool:
                argv = ns_exec(far, sys.executable, "-c", _CONNECT, source, server)
                return subprocess.run(argv, check=False, timeout=30).returncode == 0

            yield connect
        finally:
            listener.kill()
            listener.wait()
