"""Legacy hosts: the scratch copy is the kernel's own x_tables blob, wrong masks included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cfallow.backends.iptables.backend import IptablesBackend
from support import need_root, need_tool, ns_exec, sh
from support.cfdata import CURRENT
from support.iptables.helpers import Fw
from support.iptables.iptc import IptcWriter
from support.iptables.netns import in_netns
from support.verify_host import Host, failures, host, scratch_namespaces

from cfallow.backend import Context, build
from cfallow.engine import run_backend

pytestmark = [pytest.mark.xdist_group("verify"), pytest.mark.root]

LOCKDOWN = '[backends.iptables]\nports = [443]\nmode = "lockdown"\nvariant = "legacy"\n'


def test_the_python_iptables_mask_bug_on_bond0_is_caught(tmp_path: Path) -> None:
    need_root()
    need_tool("iptables-legacy", "ip6tables-legacy-save")
    with host(tmp_path, uplink="bond0") as h:
        fw = Fw(h.ns, "legacy", tmp_path)
        inner = build(
            "iptables",
            {"mode": "lockdown", "ports": [443]},
            Context(runner=fw.runner, state_dir=fw.tmp),
        )
        assert isinstance(inner, IptablesBackend)

        inner.legacy_writer = IptcWriter()  # the former writer, put back behind the seam

        def child() -> Any:  # in the host
            return run_backend(inner, CURRENT, dry_run=False).error

        assert in_netns(h.ns, child, {"XTABLES_LOCKFILE": fw.lock}) is None
        res = h.cfallow(LOCKDOWN, "verify", "--json")
        assert res.returncode == 5, res.stderr
        doc = json.loads(res.stdout)["verify"]
        bad = [p for p in doc["probes"] if not p["ok"]]
        assert {(p["family"], p["kind"], p["verdict"]) for p in bad} == {
            ("ipv6", "outsider", "accept")
        }
        v6 = [p for p in doc["probes"] if p["kind"] == "outsider" and p["family"] == "ipv6"]
        assert len(bad) == len(v6)  # every IPv6 outsider gets in
        # the path the outsider took, from the scratch kernel's own counters
        path = bad[0]["decided_by"]
        assert path.startswith("legacy x_tables: ip6 filter: "), path
        assert "-A CFALLOW -i lo -j RETURN" in path and "INPUT policy ACCEPT" in path, path
        assert len(failures(res.stderr)) == len(bad)
        assert {p["decided_by"] for p in bad} == {path}
        # the same chain written by the restore writer: proven
        assert h.cfallow(LOCKDOWN, "sync", "--source", "bundled").returncode == 0
        res = h.cfallow(LOCKDOWN, "verify")
        assert res.returncode == 0, res.stdout + res.stderr
    assert scratch_namespaces() == []


TWO_PORTS = '[backends.iptables]\nports = [80, 443]\nmode = "lockdown"\nvariant = "legacy"\n'


def _legacy(h: Host, tool: str, *rule: str) -> None:
    """One ``iptables-legacy``-style command in the host (its own lock file)."""
    lock = f"XTABLES_LOCKFILE={h.tmp / 'xtables.lock'}"
    sh(ns_exec(h.ns, "env", lock, tool, "-w", *rule))


@contextmanager
def synced(tmp_path: Path) -> Iterator[Host]:
    """A legacy host with cfallow's rules synced (bundled list, ports 80 and 443); on the
    way out, no scratch namespace of verify's left."""
    need_root()
    need_tool("iptables-legacy", "ip6tables-legacy-save", "nft")
    with host(tmp_path) as h:
        assert h.cfallow(TWO_PORTS, "sync", "--source", "bundled").returncode == 0
        yield h
    assert scratch_namespaces() == []


def test_a_syn_x_tables_drop_is_decided_at_once_not_at_the_timeout(tmp_path: Path) -> None:
    # --timeout 600: were a SYN that x_tables dropped decided by waiting, the run would
    # outlast the harness's 120 s cap; the late input chain shows it never got past x_tables
    with synced(tmp_path) as h:
        res = h.cfallow(TWO_PORTS, "verify", "--json", "--timeout", "600")
        assert res.returncode == 0, res.stdout + res.stderr
        probes = json.loads(res.stdout)["verify"]["probes"]
        outsiders = [p for p in probes if p["kind"] == "outsider"]
        assert {(p["family"], p["port"]) for p in outsiders} == {
            (f, port) for f in ("ipv4", "ipv6") for port in (80, 443)
        }
        assert all(p["verdict"] == "drop" for p in outsiders)
        assert all(p["verdict"] == "accept" for p in probes if p["kind"] == "cloudflare")
        assert {p["decided_by"] for p in probes} == {"legacy x_tables (iptables-legacy)"}


def test_x_tables_drops_and_rejects_in_front_of_cfallow_still_fail_naming_the_rule(
    tmp_path: Path,
) -> None:
    with synced(tmp_path) as h:
        # IPv4: a DROP before cfallow's jump (80), policy DROP (443: cfallow accepts first);
        # IPv6: a raw PREROUTING DROP (443), a REJECT with a TCP reset (80)
        _legacy(
            h, "iptables-legacy", "-I", "INPUT", "1", "-p", "tcp", "--dport", "80", "-j", "DROP"
        )
        _legacy(h, "iptables-legacy", "-P", "INPUT", "DROP")
        drop6 = ["-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "443", "-j", "DROP"]
        _legacy(h, "ip6tables-legacy", *drop6)
        reject = ["-j", "REJECT", "--reject-with", "tcp-reset"]
        _legacy(h, "ip6tables-legacy", "-I", "INPUT", "1", "-p", "tcp", "--dport", "80", *reject)
        res = h.cfallow(TWO_PORTS, "verify", "--json")
        assert res.returncode == 5, res.stdout + res.stderr
        probes = json.loads(res.stdout)["verify"]["probes"]
        cf: dict[tuple[str, int], set[tuple[str, str]]] = {}
        for p in probes:
            if p["kind"] == "cloudflare":
                cf.setdefault((p["family"], p["port"]), set()).add((p["verdict"], p["decided_by"]))
        assert all(len(v) == 1 for v in cf.values()), cf
        verdicts = {k: next(iter(v)) for k, v in cf.items()}
        assert verdicts[("ipv4", 80)] == (
            "drop",
            "legacy x_tables: ip filter: -A INPUT -p tcp -m tcp --dport 80 -j DROP",
        )
        # cfallow's chain accepts Cloudflare before the policy: in, as the kernel does it
        assert verdicts[("ipv4", 443)] == ("accept", "legacy x_tables (iptables-legacy)")
        assert verdicts[("ipv6", 443)] == (
            "drop",
            "legacy x_tables: ip6 raw: -A PREROUTING -p tcp -m tcp --dport 443 -j DROP",
        )
        assert verdicts[("ipv6", 80)][0] == "reject"
        assert "--reject-with tcp-reset" in verdicts[("ipv6", 80)][1]
        outsiders = [p for p in probes if p["kind"] == "outsider"]
        assert all(p["ok"] and p["verdict"] in ("drop", "reject") for p in outsiders)


def test_the_rule_that_dropped_is_named_without_waiting_out_the_timeout(tmp_path: Path) -> None:
    # --timeout 600: the re-probe that names the rule by its counters is decided by the
    # late chain too, and the fences around it never reach x_tables (nor their counters)
    with synced(tmp_path) as h:
        _legacy(
            h, "iptables-legacy", "-I", "INPUT", "1", "-p", "tcp", "--dport", "443", "-j", "DROP"
        )
        _legacy(h, "ip6tables-legacy", "-t", "mangle", "-A", "PREROUTING", "-j", "DROP")
        runs = [
            h.cfallow(TWO_PORTS, "verify", "--json", *more) for more in ([], ["--timeout", "600"])
        ]
        docs = [json.loads(r.stdout)["verify"] for r in runs]
        assert [r.returncode for r in runs] == [5, 5]
        assert docs[0]["probes"] == docs[1]["probes"]
        bad = {(p["family"], p["port"], p["decided_by"]) for p in docs[1]["probes"] if not p["ok"]}
        assert bad == {
            ("ipv4", 443, "legacy x_tables: ip filter: -A INPUT -p tcp -m tcp --dport 443 -j DROP"),
            ("ipv6", 80, "legacy x_tables: ip6 mangle: -A PREROUTING -j DROP"),
            ("ipv6", 443, "legacy x_tables: ip6 mangle: -A PREROUTING -j DROP"),
        }


def test_probes_land_where_the_legacy_nat_sends_them(tmp_path: Path) -> None:
    # 443 -> 8443 in x_tables' nat PREROUTING: the late chain sees the SYN with port 8443;
    # cfallow's chain matches conntrack's original port (443): Cloudflare in, outsiders out
    with synced(tmp_path) as h:
        redirect = ["-p", "tcp", "--dport", "443", "-j", "REDIRECT", "--to-ports", "8443"]
        for tool in ("iptables-legacy", "ip6tables-legacy"):
            _legacy(h, tool, "-t", "nat", "-A", "PREROUTING", *redirect)
        res = h.cfallow(TWO_PORTS, "verify", "--json", "--timeout", "600")
        assert res.returncode == 0, res.stdout + res.stderr
        on_443 = [p for p in json.loads(res.stdout)["verify"]["probes"] if p["port"] == 443]
        assert {(p["family"], p["kind"], p["verdict"]) for p in on_443} == {
            (f, k, v)
            for f in ("ipv4", "ipv6")
            for k, v in (("cloudflare", "accept"), ("outsider", "drop"))
        }


def test_lost_trace_events_on_a_legacy_host_change_no_verdict(tmp_path: Path) -> None:
    # most events lost: a SYN seen at prerouting whose late event may be among them is
    # not called dropped by the trace; it waits out the time-out, as before
    with synced(tmp_path) as h:
        _legacy(
            h, "iptables-legacy", "-I", "INPUT", "1", "-p", "tcp", "--dport", "80", "-j", "DROP"
        )
        whole = json.loads(h.cfallow(TWO_PORTS, "verify", "--json").stdout)["verify"]
        res = h.cfallow(TWO_PORTS, "verify", "--json", starved=True)
        assert res.returncode == 5, res.stderr
        starved = json.loads(res.stdout)["verify"]
        assert starved["probes"] == whole["probes"]
        assert any(not p["ok"] and p["verdict"] == "drop" for p in whole["probes"])
