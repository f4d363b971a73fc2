"""A legacy x_tables rule names an ipset by the set's index in its namespace, not by its
name: the blob verify copies into the scratch origin holds that index. ``ipset save`` /
``ipset restore`` number the sets again from 0, so on a host where a set was destroyed
(fail2ban's do, at each restart) the copied rule would match another set than the host's.

Here the admin's rule lets the ``trusted`` set in ahead of cfallow's lockdown, and
``trusted`` holds every address: the host lets outsiders in, and verify must say so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import namespace, need_root, need_tool, ns_exec, sh
from support.verify_host import HOST_ADDRS, Host, host, scratch_namespaces

pytestmark = [pytest.mark.xdist_group("verify"), pytest.mark.root]

LOCKDOWN = '[backends.iptables]\nports = [443]\nmode = "lockdown"\nvariant = "legacy"\n'
TRUST = ["-p", "tcp", "--dport", "443", "-m", "set", "--match-set", "trusted", "src"]


def _run(h: Host, *argv: str) -> None:
    lock = f"XTABLES_LOCKFILE={h.tmp / 'xtables.lock'}"
    sh(ns_exec(h.ns, "env", lock, *argv))


def _sets(h: Host, gap: bool) -> None:
    """``trusted`` (every IPv4 address) and ``blocked`` (empty); with ``gap``, a set made
    before them and destroyed, so their indexes are 1 and 2, not 0 and 1."""
    if gap:
        _run(h, "ipset", "create", "gone", "hash:net")
    _run(h, "ipset", "create", "trusted", "hash:net")
    _run(h, "ipset", "create", "blocked", "hash:net")
    for half in ("0.0.0.0/1", "128.0.0.0/1"):
        _run(h, "ipset", "add", "trusted", half)
    if gap:
        _run(h, "ipset", "destroy", "gone")


def _outsiders_v4(h: Host) -> list[tuple[str, str]]:
    res = h.cfallow(LOCKDOWN, "verify", "--json")
    probes = json.loads(res.stdout)["verify"]["probes"]
    return [
        (p["source"], p["verdict"])
        for p in probes
        if p["kind"] == "outsider" and p["family"] == "ipv4"
    ]


_LISTEN = (
    "import socket,time;s=socket.socket();s.bind(('0.0.0.0',443));s.listen();"
    "print('ready',flush=True);time.sleep(120)"
)
_CONNECT = (
    "import socket,sys;s=socket.socket();s.settimeout(2);s.bind((sys.argv[1],0));"
    "sys.exit(s.connect_ex((sys.argv[2],443)))"
)


def _host_lets_in(h: Host, source: str) -> bool:
    """A real connection to the host's 443 from ``source``, in a client namespace on the
    far end of the host's uplink (taken from the host: verify has run)."""
    server = HOST_ADDRS[0].split("/")[0]
    with namespace("ipc") as client:
        sh(ns_exec(h.ns, "ip", "link", "set", "vhp0", "netns", client))
        sh(ns_exec(client, "ip", "addr", "add", f"{source}/32", "dev", "vhp0"))
        sh(ns_exec(client, "ip", "link", "set", "vhp0", "up"))
        sh(ns_exec(client, "ip", "route", "add", f"{server}/32", "dev", "vhp0"))
        sh(ns_exec(h.ns, "ip", "route", "add", f"{source}/32", "dev", h.uplink))
        listener = subprocess.Popen(
            ns_exec(h.ns, sys.executable, "-c", _LISTEN), stdout=subprocess.PIPE, text=True
        )
        try:
            assert listener.stdout is not None and listener.stdout.readline() == "ready\n"
            argv = ns_exec(client, sys.executable, "-c", _CONNECT, source, server)
            return subprocess.run(argv, check=False, timeout=30).returncode == 0
        finally:
            listener.kill()
            listener.wait()


@pytest.mark.parametrize("gap", [False, True], ids=["indexes from 0", "a set destroyed"])
def test_an_ipset_rule_matches_the_hosts_set_in_the_scratch_copy(tmp_path: Path, gap: bool) -> None:
    need_root()
    need_tool("iptables-legacy", "ip6tables-legacy-save", "nft", "ipset")
    with host(tmp_path) as h:
        assert h.cfallow(LOCKDOWN, "sync", "--source", "bundled").returncode == 0
        _sets(h, gap)
        _run(h, "iptables-legacy", "-w", "-I", "INPUT", "1", *TRUST, "-j", "ACCEPT")
        found = _outsiders_v4(h)
        assert found and {v for _, v in found} == {"accept"}, (
            f"the host lets every IPv4 outsider in, verify says {found}"
        )
        assert _host_lets_in(h, found[0][0]), "the host's kernel does let it in"
    assert scratch_namespaces() == []
