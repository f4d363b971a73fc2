"""Native nftables hosts: an accept in iptables' table does not open an inet policy drop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import need, need_root, need_tool
from support.verify_host import (
    NFT_DROP,
    failures,
    host,
    ipset_host,
    scratch_namespaces,
)

pytestmark = [pytest.mark.xdist_group("verify"), pytest.mark.root]

ALLOW = '[backends.iptables]\nports = [80, 443]\nmode = "allow"\nvariant = "nft"\n'
LOCKDOWN = '[backends.iptables]\nports = [80, 443]\nmode = "lockdown"\nvariant = "nft"\n'


@pytest.fixture(autouse=True)
def _tools() -> None:
    need_root()
    need_tool("nft", "iptables-nft")


def test_iptables_allow_under_inet_policy_drop_is_exit_5_naming_the_policy(tmp_path: Path) -> None:
    with host(tmp_path) as h:
        h.nft(NFT_DROP)
        h.cfallow(ALLOW, "sync", "--source", "bundled")  # writes ip filter; cannot take effect
        res = h.cfallow(ALLOW, "verify")
        assert res.returncode == 5, res.stderr
        lines = failures(res.stderr)
        assert lines and all("inet filter input: policy drop" in line for line in lines)
        assert any("(cloudflare 104.16.0.0/13): drop, should be accepted" in line for line in lines)
        doc = json.loads(h.cfallow(ALLOW, "verify", "--json").stdout)["verify"]
        assert doc["ok"] is False
        cf = [p for p in doc["probes"] if p["kind"] == "cloudflare"]
        assert {(p["family"], p["port"]) for p in cf} == {
            (f, port) for f in ("ipv4", "ipv6") for port in (80, 443)
        }
        assert all(p["verdict"] == "drop" for p in cf)
    assert scratch_namespaces() == []


def test_sync_verify_with_a_plan_that_cannot_work_changes_nothing(tmp_path: Path) -> None:
    with host(tmp_path) as h:
        h.nft(NFT_DROP)
        before = h.ruleset()
        res = h.cfallow(ALLOW, "sync", "--verify", "--source", "bundled")
        assert res.returncode == 5, res.stderr
        # the iptables backend itself refuses this plan in the scratch copy (its host
        # analysis), or the probes fail: either way the deciding policy is named
        assert "inet filter input: policy drop" in res.stderr
        assert h.ruleset() == before  # byte-identical: nothing was written to the host


def test_lockdown_on_an_open_host_proves_cloudflare_in_and_the_outsider_out(tmp_path: Path) -> None:
    with host(tmp_path) as h:
        res = h.cfallow(LOCKDOWN, "sync", "--verify", "--source", "bundled")
        assert res.returncode == 0, res.stderr
        assert "verify: ok" in res.stdout
        assert "ip filter CFALLOW" in h.ruleset() or "CFALLOW" in h.ruleset()
        res = h.cfallow(LOCKDOWN, "verify", "--json")
        assert res.returncode == 0, res.stderr
        probes = json.loads(res.stdout)["verify"]["probes"]
        outsiders = [p for p in probes if p["kind"] == "outsider"]
        assert outsiders and all(p["verdict"] == "drop" for p in outsiders)
        assert all("CFALLOW" in p["decided_by"] for p in probes)
        assert all(p["verdict"] == "accept" for p in probes if p["kind"] == "cloudflare")
    assert scratch_namespaces() == []


SETS_RULESET = """table inet filter {
    set cloudflare_v4 {
        type ipv4_addr
        flags interval
    }
    set cloudflare_v6 {
        type ipv6_addr
        flags interval
    }
    chain input {
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iif "lo" accept
        meta l4proto ipv6-icmp accept
        tcp dport 22 accept
        tcp dport { 80, 443 } ip saddr @cloudflare_v4 accept
        tcp dport { 80, 443 } ip6 saddr @cloudflare_v6 accept
    }
}
"""


def test_the_same_host_with_the_nftables_backend_in_sets_mode_is_proven(tmp_path: Path) -> None:
    from cfallow import backend

    need("nftables" in backend.installed(), "the nftables backend plugin")
    # The admin declared the (empty) sets in their own ruleset: without cfallow's mark they
    # are taken only with adopt_set (issue 23, point 12).
    sets = (
        '[backends.nftables]\nmode = "sets"\ntable = "inet filter"\nports = [80, 443]\n'
        f'adopt_set = true\nfile = "{tmp_path / "cfallow.nft"}"\n'
    )
    with host(tmp_path) as h:
        h.nft(SETS_RULESET)
        assert h.cfallow(ALLOW, "verify").returncode == 5  # empty sets: nobody gets in
        res = h.cfallow(sets, "sync", "--verify", "--source", "bundled")
        assert res.returncode == 0, res.stdout + res.stderr
        res = h.cfallow(sets, "verify", "--json")
        assert res.returncode == 0, res.stderr
        probes = json.loads(res.stdout)["verify"]["probes"]
        cf = [p for p in probes if p["kind"] == "cloudflare"]
        assert cf and all(p["verdict"] == "accept" for p in cf)
        assert all("inet filter input: rule" in p["decided_by"] for p in cf)
        assert all("@cloudflare_v" in p["decided_by"] for p in cf)
        out = [p for p in probes if p["kind"] == "outsider"]
        assert all(p["verdict"] == "drop" for p in out)
    assert scratch_namespaces() == []


def test_ipsets_the_rules_name_are_copied(tmp_path: Path) -> None:
    """A drop by ipset (as Fail2Ban's ipset actions write it): the scratch gets the sets too."""
    need_tool("ipset")
    with host(tmp_path) as h:
        ipset_host(h)
        before = h.ruleset()
        res = h.cfallow(LOCKDOWN, "sync", "--verify", "--source", "bundled")
        assert res.returncode == 5, res.stdout
        assert h.ruleset() == before  # a plan the kernel would not honour: host untouched
        lines = failures(res.stderr)
        assert lines and all("from 104.23.255.255" in x or "from 104.16.0.0" in x for x in lines)
        assert all("xt match set" in x and "drop" in x for x in lines), lines
    assert scratch_namespaces() == []


def test_a_ruleset_the_scratch_cannot_load_is_cannot_verify(tmp_path: Path) -> None:
    """The rules name an ipset, and this cfallow has no ipset tool to copy it with."""
    need_tool("ipset")
    with host(tmp_path) as h:
        ipset_host(h)
        bindir = tmp_path / "bin"
        bindir.mkdir()
        for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
            for tool in Path(d).iterdir() if Path(d).is_dir() else ():
                target = bindir / tool.name
                if tool.name != "ipset" and not target.exists():
                    target.symlink_to(tool)
        res = h.cfallow(LOCKDOWN, "verify", env={"PATH": str(bindir)})
        assert res.returncode == 5
        assert "cannot verify" in res.stderr and "does not load here" in res.stderr
        assert "verify: ok" not in res.stdout + res.stderr
    assert scratch_namespaces() == []


def test_a_dropped_syn_is_decided_by_the_trace_not_by_waiting_out_the_timeout(
    tmp_path: Path,
) -> None:
    # --timeout 600: were a dropped SYN decided by waiting, the run would outlast the
    # harness's 120 s cap; the trace shows each drop, and the run ends with it
    with host(tmp_path) as h:
        assert h.cfallow(LOCKDOWN, "sync", "--source", "bundled").returncode == 0
        res = h.cfallow(LOCKDOWN, "verify", "--json", "--timeout", "600")
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)["verify"]
        outsiders = [p for p in doc["probes"] if p["kind"] == "outsider"]
        assert outsiders and all(p["verdict"] == "drop" for p in outsiders)
        assert {p["decided_by"] for p in outsiders} == {
            "ip filter CFALLOW: rule drop",
            "ip6 filter CFALLOW: rule drop",
        }
    assert scratch_namespaces() == []


def test_lost_trace_events_never_change_a_verdict(tmp_path: Path) -> None:
    with host(tmp_path) as h:
        assert h.cfallow(LOCKDOWN, "sync", "--source", "bundled").returncode == 0
        whole = json.loads(h.cfallow(LOCKDOWN, "verify", "--json").stdout)["verify"]
        res = h.cfallow(LOCKDOWN, "verify", "--json", starved=True)
        assert res.returncode == 0, res.stderr
        starved = json.loads(res.stdout)["verify"]
        verdicts = [(p["source"], p["port"], p["verdict"]) for p in starved["probes"]]
        assert verdicts == [(p["source"], p["port"], p["verdict"]) for p in whole["probes"]]
        named = {p["decided_by"] for p in whole["probes"]}
        # a probe whose events were lost is named as such, never by a guess
        assert {p["decided_by"] for p in starved["probes"]} <= named | {"not traced"}
        assert any(p["decided_by"] == "not traced" for p in starved["probes"])
