"""A legacy x_tables rule names an ipset by the set's index in its namespace, not by its
name: the blob verify copies into the scratch origin holds that index. ``ipset save`` /
``ipset restore`` number the sets again from 0, so on a host where a set was destroyed
(fail2ban's do, at each restart) the copied rule would match another set than the host's.

Here the admin's rule lets the ``trusted`` set in ahead of cfallow's lockdown, and
``trusted`` holds every address: the host lets outsiders in, and verify must say so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import need_root, need_tool, ns_exec, sh
from support.verify_host import Host, client, host, scratch_namespaces

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
        with client(h, found[0][0]) as connect:
            assert connect(found[0][0]), "the host's kernel does let it in"
    assert scratch_namespaces() == []
