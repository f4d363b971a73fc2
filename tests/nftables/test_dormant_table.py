"""A table with ``flags dormant`` is on no hook: its chains decide nothing.

The host analysis listed a dormant table's base chains as if they were hooked: the
admin's guard, switched off, was said to drop Cloudflare, and sets mode did not say
that nothing restricted outsiders (they got in). Switched on again, it is judged
again (the switch is a commit: the memo is not kept).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import namespace
from support.cfdata import CURRENT
from support.iptables.helpers import Fw
from support.iptables.traffic import CF, OUTSIDE, Pair, pair
from support.nftables.helpers import (
    ADMIN_DROP,
    OPEN_443,
    SET_RULES,
    Nft,
    NftHarness,
    admin_ruleset,
)

from cfallow.engine import run_backend
from cfallow.errors import BackendError

pytestmark = [pytest.mark.root, pytest.mark.slow]

GUARD = (
    "table inet guard {\n\tflags dormant\n\tchain in {\n\t\ttype filter hook input priority 10;"
    " policy accept;\n\t\ttcp dport 443 drop\n\t}\n}\n"
)
OPEN = "sets mode: nothing drops tcp/80,443 from outsiders (IPv4, IPv6)"
GUARD_DROPS = "sets mode: inet guard in: rule handle"


@pytest.fixture
def lab() -> Iterator[Pair]:
    with pair() as p:
        yield p


def _notes(h: NftHarness) -> tuple[str, ...]:
    result = run_backend(h.backend(), CURRENT, dry_run=True)
    assert result.error is None and result.plan is not None, result.error
    return tuple(result.plan.notes)


def test_a_dormant_table_drops_nothing(lab: Pair, tmp_path: Path) -> None:
    h = NftHarness(lab.server, tmp_path, "sets", table="inet filter")
    (tmp_path / "state").mkdir()  # the memo's (the harness makes none)
    h.nft.load("flush ruleset\n" + admin_ruleset())
    assert run_backend(h.backend(), CURRENT, dry_run=False).error is None
    h.nft.load("flush ruleset\n" + admin_ruleset(SET_RULES + OPEN_443, include_sets=h.file))
    h.nft.load(GUARD)
    assert lab.can_connect(CF[0]) and lab.can_connect(OUTSIDE[0])  # the guard is off
    notes = _notes(h)
    assert not any(n.startswith(GUARD_DROPS) for n in notes), notes
    assert any(n.startswith(OPEN) for n in notes), notes
    h.nft("add", "table", "inet", "guard")  # switched on: no flags
    assert not lab.can_connect(CF[0]) and not lab.can_connect(OUTSIDE[0])
    notes = _notes(h)
    assert any(n.startswith(GUARD_DROPS) for n in notes), notes
    assert not any(n.startswith(OPEN) for n in notes), notes


def test_iptables_allow_mode_is_not_refused_for_a_dormant_table(tmp_path: Path) -> None:
    """The admin's inet filter (policy drop) switched off: iptables' accept takes effect
    (no refusal); switched on, allow mode is refused again."""
    with namespace("dormant") as ns:
        fw = Fw(ns, "nft", tmp_path)
        nft = Nft(ns)
        nft.load(ADMIN_DROP % "")
        nft.load("table inet filter {\n\tflags dormant\n}\n")
        b = fw.backend()
        b.apply(b.plan(CURRENT))
        assert b.plan(CURRENT).changed is False
        nft("add", "table", "inet", "filter")  # switched on
        with pytest.raises(BackendError, match="allow mode cannot take effect here"):
            b.plan(CURRENT)
