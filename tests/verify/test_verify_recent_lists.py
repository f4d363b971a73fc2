"""A legacy ``-m recent`` rule decides by the addresses its list holds, state the kernel
keeps beside the rules: verify's scratch copy of the rules alone starts with empty lists.
Here the admin's rule drops the addresses in the list ``BAN`` (a scan detector put
Cloudflare's there, say): the host drops Cloudflare, and verify must say so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import need_root, need_tool, ns_exec, sh
from support.verify_host import Host, client, host, scratch_namespaces

pytestmark = [pytest.mark.xdist_group("verify"), pytest.mark.root]

LOCKDOWN = '[backends.iptables]\nports = [443]\nmode = "lockdown"\nvariant = "legacy"\n'
BAN = ["-p", "tcp", "--dport", "443", "-m", "recent", "--name", "BAN", "--rcheck"]


def _cloudflare(h: Host, family: str) -> list[dict[str, object]]:
    res = h.cfallow(LOCKDOWN, "verify", "--json")
    assert res.returncode in (0, 5), res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert "verify" in doc, doc
    probes = doc["verify"]["probes"]
    return [p for p in probes if p["kind"] == "cloudflare" and p["family"] == family]


def test_the_hosts_recent_lists_are_in_the_scratch_copy(tmp_path: Path) -> None:
    need_root()
    need_tool("iptables-legacy", "ip6tables-legacy-save", "nft")
    with host(tmp_path) as h:
        assert h.cfallow(LOCKDOWN, "sync", "--source", "bundled").returncode == 0
        lock = f"XTABLES_LOCKFILE={h.tmp / 'xtables.lock'}"
        ban = ["-I", "INPUT", "1", *BAN, "-j", "DROP"]
        sh(ns_exec(h.ns, "env", lock, "iptables-legacy", "-w", *ban))
        twice = [*ban[:-2], "--hitcount", "2", "-j", "DROP"]  # IPv6: two hits or more
        sh(ns_exec(h.ns, "env", lock, "ip6tables-legacy", "-w", *twice))
        sources = [str(p["source"]) for p in _cloudflare(h, "ipv4")]
        sources6 = [str(p["source"]) for p in _cloudflare(h, "ipv6")]
        assert sources and sources6
        # the host's list: every Cloudflare address verify probes (IPv6: two hits each)
        for source in [*sources, *sources6, *sources6]:
            sh(ns_exec(h.ns, "sh", "-c", f"echo +{source} > /proc/net/xt_recent/BAN"))
        for family in ("ipv4", "ipv6"):
            cf = _cloudflare(h, family)
            assert cf and all(p["verdict"] == "drop" for p in cf), cf
        with client(h, sources[0]) as connect:
            assert not connect(sources[0]), "the host's kernel drops it"
    assert scratch_namespaces() == []
