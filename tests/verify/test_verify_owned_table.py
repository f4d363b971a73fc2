"""A table with ``flags owner`` on the host is part of what the host's kernel does, and
verify's scratch copy must hold it too. Loaded as ``nft list ruleset`` prints it, it
would belong to the ``nft`` that loaded it and go when that exits: the copy would lack
it, and a drop of Cloudflare's connections there would go unproven.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import need_root, need_tool, ns_exec
from support.verify_host import client, host, scratch_namespaces

pytestmark = [pytest.mark.xdist_group("verify"), pytest.mark.root]

LOCKDOWN = '[backends.iptables]\nports = [443]\nmode = "lockdown"\nvariant = "nft"\n'
GUARD = (
    "add table ip guard { flags owner; }\n"
    "add chain ip guard in { type filter hook input priority 10; policy accept; }\n"
    "add rule ip guard in tcp dport 443 drop\n"
)


def _tables(ns: str) -> str:
    argv = ns_exec(ns, "nft", "list", "tables")
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _until(ok: Callable[[], bool]) -> None:
    for _ in range(400):  # a condition, not a time: 20 s at most on a loaded machine
        if ok():
            return
        time.sleep(0.05)
    raise AssertionError("never came")


def test_an_owned_table_that_drops_cloudflare_is_in_the_scratch_copy(tmp_path: Path) -> None:
    need_root()
    need_tool("nft", "iptables-nft")
    with host(tmp_path) as h:
        assert h.cfallow(LOCKDOWN, "sync", "--source", "bundled").returncode == 0
        owner = subprocess.Popen(
            ns_exec(h.ns, "nft", "-i"),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert owner.stdin is not None
            owner.stdin.write(GUARD)
            owner.stdin.flush()
            _until(lambda: "table ip guard" in _tables(h.ns))
            res = h.cfallow(LOCKDOWN, "verify", "--json")
            probes = json.loads(res.stdout)["verify"]["probes"]
            cf4 = [p for p in probes if p["kind"] == "cloudflare" and p["family"] == "ipv4"]
            assert cf4 and all(p["verdict"] == "drop" for p in cf4), cf4
            assert all("ip guard in" in p["decided_by"] for p in cf4), cf4
            assert res.returncode == 5, res.stdout + res.stderr
            assert "table ip guard" in _tables(h.ns), "the host's own table is untouched"
            source = cf4[0]["source"]
            with client(h, source) as connect:
                assert not connect(source), "the host's kernel drops it"
                owner.stdin.close()
                owner.wait(timeout=30)
                _until(lambda: "table ip guard" not in _tables(h.ns))
                assert connect(source), "without the owned table it gets in"
        finally:
            if owner.stdin is not None and not owner.stdin.closed:
                owner.stdin.close()
            owner.wait(timeout=30)
    assert scratch_namespaces() == []
