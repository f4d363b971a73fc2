"""Legacy hosts: the scratch copy is the kernel's own x_tables blob, wrong masks included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cfallow.backends.iptables.backend import IptablesBackend
from support import need_root, need_tool
from support.cfdata import CURRENT
from support.iptables.helpers import Fw
from support.iptables.iptc import IptcWriter
from support.iptables.netns import in_netns
from support.verify_host import failures, host, scratch_namespaces

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
