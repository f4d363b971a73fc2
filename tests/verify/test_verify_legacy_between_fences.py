"""A legacy host with native nftables chains on the input hook between x_tables' tables
and verify's late chain (priority 1000), and after it: a drop there is a drop the trace
shows, whatever the late chain saw, and an accept there lets no outsider past x_tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import need_root, need_tool
from support.verify_host import host, scratch_namespaces

pytestmark = [pytest.mark.xdist_group("verify"), pytest.mark.root]

LOCKDOWN = '[backends.iptables]\nports = [80, 443]\nmode = "lockdown"\nvariant = "legacy"\n'
MID = """table inet mid {
    chain between {
        type filter hook input priority 500; policy accept;
        tcp dport 80 accept
        meta nfproto ipv4 tcp dport 443 drop
    }
    chain after {
        type filter hook input priority 2000; policy accept;
        meta nfproto ipv6 tcp dport 443 drop
    }
}
"""


@pytest.mark.parametrize("timeout", ["", "600"], ids=["default", "no timeout to wait out"])
def test_nft_chains_around_the_late_chain(tmp_path: Path, timeout: str) -> None:
    need_root()
    need_tool("iptables-legacy", "ip6tables-legacy-save", "nft")
    with host(tmp_path) as h:
        assert h.cfallow(LOCKDOWN, "sync", "--source", "bundled").returncode == 0
        h.nft(MID)
        more = ["--timeout", timeout] if timeout else []
        res = h.cfallow(LOCKDOWN, "verify", "--json", *more, timeout=120)
        assert res.returncode == 5, res.stdout + res.stderr
        probes = json.loads(res.stdout)["verify"]["probes"]
        got = {(p["family"], p["port"], p["kind"], p["verdict"]) for p in probes}
        assert got == {
            ("ipv4", 80, "cloudflare", "accept"),
            ("ipv4", 80, "outsider", "drop"),
            ("ipv4", 443, "cloudflare", "drop"),
            ("ipv4", 443, "outsider", "drop"),
            ("ipv6", 80, "cloudflare", "accept"),
            ("ipv6", 80, "outsider", "drop"),
            ("ipv6", 443, "cloudflare", "drop"),
            ("ipv6", 443, "outsider", "drop"),
        }
        cf443 = {p["decided_by"] for p in probes if p["port"] == 443 and p["kind"] == "cloudflare"}
        assert all("inet mid" in d for d in cf443), cf443
    assert scratch_namespaces() == []
