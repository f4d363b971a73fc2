"""Who the probes come from, and where they land: public outsiders, every range, the host's NAT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import need, need_root, need_tool
from support.verify_host import failures, host

pytestmark = [pytest.mark.xdist_group("verify"), pytest.mark.root]

#: The host drops documentation and private space before anything else (a bogon filter).
BOGONS = """table inet bogons {
    chain prerouting {
        type filter hook prerouting priority -300; policy accept;
        ip saddr { 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 100.64.0.0/10 } drop
        ip6 saddr { 2001:db8::/32, fc00::/7 } drop
    }
}
"""
#: The admin's firewall drops one published range on 443 (one in twenty-two ranges: a 520 now
#: and then, never on a probe of the other ranges).
ONE_RANGE = """table inet admin {
    chain input {
        type filter hook input priority filter; policy accept;
        ip saddr 131.0.72.0/22 tcp dport 443 drop
    }
}
"""
#: The admin's port redirect: clients connect to 443, the server listens on 8443.
REDIRECT = """table inet adminnat {
    chain prerouting {
        type nat hook prerouting priority dstnat;
        tcp dport 443 redirect to :8443
    }
}
"""


@pytest.fixture(autouse=True)
def _tools() -> None:
    need_root()
    need_tool("nft")
    from cfallow import backend

    need("nftables" in backend.installed(), "the nftables backend plugin")


def lockdown(tmp: Path) -> str:
    return f'[backends.nftables]\nports = [80, 443]\nfile = "{tmp / "cfallow.nft"}"\n'


def test_a_bogon_filter_does_not_pass_for_a_lockdown(tmp_path: Path) -> None:
    """No cfallow table at all: only the host's bogon filter. Outsiders are public addresses."""
    with host(tmp_path) as h:
        h.nft(BOGONS)
        res = h.cfallow(lockdown(tmp_path), "verify", "--json")
        assert res.returncode == 5, res.stdout + res.stderr
        doc = json.loads(res.stdout)["verify"]
        outsiders = [p for p in doc["probes"] if p["kind"] == "outsider"]
        assert {p["family"] for p in outsiders} == {"ipv4", "ipv6"}
        assert all(not p["ok"] and p["verdict"] == "accept" for p in outsiders)
        sources = {p["source"] for p in outsiders}
        # the neighbours of each published range are among them
        assert {"173.245.47.255", "173.245.64.0", "2400:caff:ffff:ffff:ffff:ffff:ffff:ffff"} <= (
            sources
        )


def test_a_firewall_that_blocks_one_range_fails_naming_it(tmp_path: Path) -> None:
    with host(tmp_path) as h:
        h.nft(ONE_RANGE)
        cfg = lockdown(tmp_path)
        assert h.cfallow(cfg, "sync", "--source", "bundled").returncode == 0
        res = h.cfallow(cfg, "verify")
        assert res.returncode == 5, res.stdout + res.stderr
        lines = failures(res.stderr)
        assert len(lines) == 2, res.stderr  # the first and the last address of that range, on 443
        assert all("(cloudflare 131.0.72.0/22): drop, should be accepted" in ln for ln in lines)
        assert all("inet admin input" in ln for ln in lines)


def test_every_range_is_probed_at_both_ends(tmp_path: Path) -> None:
    from cfallow.fetch.sources import bundled

    with host(tmp_path) as h:
        cfg = lockdown(tmp_path)
        assert h.cfallow(cfg, "sync", "--source", "bundled").returncode == 0
        res = h.cfallow(cfg, "verify", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        probes = json.loads(res.stdout)["verify"]["probes"]
        ranges = {str(n) for n in bundled().desired}
        for port in (80, 443):
            cf = [p for p in probes if p["kind"] == "cloudflare" and p["port"] == port]
            assert {p["range"] for p in cf} == ranges
            assert len(cf) == 2 * len(ranges) and all(p["verdict"] == "accept" for p in cf)
            out = [p for p in probes if p["kind"] == "outsider" and p["port"] == port]
            assert len(out) >= 20 and all(p["verdict"] == "drop" for p in out)


def test_probes_land_where_the_hosts_nat_sends_them(tmp_path: Path) -> None:
    """443 -> 8443: the scratch listens on 8443 too; the verdict is the firewall's."""
    with host(tmp_path) as h:
        h.nft(REDIRECT)
        cfg = lockdown(tmp_path)
        assert h.cfallow(cfg, "sync", "--source", "bundled").returncode == 0
        res = h.cfallow(cfg, "verify", "--json")
        assert res.returncode == 0, res.stdout + res.stderr
        probes = json.loads(res.stdout)["verify"]["probes"]
        on_443 = [p for p in probes if p["port"] == 443]
        assert all(p["verdict"] == "accept" for p in on_443 if p["kind"] == "cloudflare")
        assert all(p["verdict"] == "drop" for p in on_443 if p["kind"] == "outsider")
