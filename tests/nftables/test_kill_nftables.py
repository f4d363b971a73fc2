"""nftables sets mode: a real ``cfallow sync`` SIGKILLed mid-change in a namespace; the next
run converges (the kernel's sets, the include file, and what the admin's rules let through)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ns_exec
from support.cfdata import CURRENT, OLD
from support.iptables.traffic import CF, OLD_ONLY, OUTSIDE, Pair, pair
from support.kill_points import KILLS, Killer, sync_argv
from support.nftables.helpers import SET_RULES, NftHarness, admin_ruleset

from cfallow.engine import run_backend

pytestmark = pytest.mark.root


@pytest.fixture
def lab() -> Iterator[Pair]:
    with pair() as p:
        yield p


def test_sigkill_mid_change_then_the_next_run_converges(lab: Pair, tmp_path: Path) -> None:
    h = NftHarness(lab.server, tmp_path, "sets", table="inet filter")

    def reset() -> None:
        result = run_backend(h.backend(), OLD, dry_run=False)
        assert result.error is None, result.error

    reset()
    # the documented setup: cfallow's file included in the admin's table, their rules on the sets
    h.nft.load("flush ruleset\n" + admin_ruleset(SET_RULES, include_sets=h.file))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[backends.nftables]\nmode = "sets"\nfile = "{h.file}"\n')
    argv = ns_exec(lab.server, *sync_argv(cfg, tmp_path / "state"))
    killer = Killer("nftables sets")
    killer.measure(reset, argv, dict(os.environ))
    for i in range(KILLS):
        reset()
        killer.kill_one(argv, dict(os.environ))
        left = h.owned()
        killer.landed("old" if left == OLD else "new" if left == CURRENT else "between")
        assert left in (OLD, CURRENT), f"{killer.where(i)}: a set half changed: {left ^ CURRENT}"
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        where = killer.where(i)
        assert done.returncode == 0, f"{where}: {done.stderr}"
        assert h.owned() == CURRENT, f"{where}: the kernel's sets are not the current list"
        # the include file holds what the kernel holds: a reload brings back the same sets
        again = subprocess.run(
            [*argv[:-3], "status", "--source", "bundled"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert again.returncode == 0, f"{where}: {again.stdout} {again.stderr}"
        assert lab.can_connect(CF[0]) and lab.can_connect(CF[1]), f"{where}: Cloudflare refused"
        assert not lab.can_connect(OLD_ONLY), f"{where}: the range removed in 2021 gets in"
        assert not lab.can_connect(OUTSIDE[0]), f"{where}: an outsider gets in"
    killer.summary()
