"""cfallow's own lockdown table put to sleep (``nft add table inet cfallow '{ flags
dormant; }'``) is on no hook: the lockdown lets everyone in while ``nft list`` shows
every rule and set as written. It is drift: the next sync loads the table anew (awake)
and outsiders are out again. In sets mode the table is the admin's: the host analysis
says that nothing drops outsiders (it takes dormant tables as on no hook).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cfdata import CURRENT
from support.iptables.traffic import CF, OUTSIDE, Pair, pair, reach
from support.nftables.helpers import OPEN_443, SET_RULES, NftHarness, admin_ruleset

from cfallow.engine import run_backend

pytestmark = pytest.mark.root

ONLY_CF = {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}


@pytest.fixture
def lab() -> Iterator[Pair]:
    with pair() as p:
        yield p


def test_a_dormant_lockdown_table_is_drift_and_woken(lab: Pair, tmp_path: Path) -> None:
    h = NftHarness(lab.server, tmp_path, "lockdown")
    h.nft.load("flush ruleset\n" + admin_ruleset(OPEN_443))
    assert run_backend(h.backend(), CURRENT, dry_run=False).error is None
    assert reach(lab) == ONLY_CF
    h.nft.load("add table inet cfallow { flags dormant; }\n")
    assert reach(lab)[OUTSIDE[0]], "a dormant table drops nothing"
    status = run_backend(h.backend(), CURRENT, dry_run=True)
    assert status.error is None and status.plan is not None and status.changed, status.plan
    assert status.plan.drift[0].startswith("table inet cfallow is dormant"), status.plan.drift
    result = run_backend(h.backend(), CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert reach(lab) == ONLY_CF
    again = run_backend(h.backend(), CURRENT, dry_run=True)
    assert again.error is None and not again.changed, again.plan


def test_sets_mode_says_the_admins_table_sleeps(lab: Pair, tmp_path: Path) -> None:
    h = NftHarness(lab.server, tmp_path, "sets", table="inet filter")
    h.nft.load("flush ruleset\n" + admin_ruleset())
    assert run_backend(h.backend(), CURRENT, dry_run=False).error is None
    h.nft.load("flush ruleset\n" + admin_ruleset(SET_RULES, include_sets=h.file))
    assert reach(lab) == ONLY_CF
    h.nft.load("add table inet filter { flags dormant; }\n")
    result = run_backend(h.backend(), CURRENT, dry_run=True)
    assert result.error is None and result.plan is not None, result.error
    assert any(n.startswith("sets mode: nothing drops tcp/80,443") for n in result.plan.notes), (
        result.plan.notes
    )
    assert all(reach(lab).values()), "asleep, the admin's table lets everyone in"
