"""A table with ``flags owner`` goes when the process that made it exits, and the kernel
does not count that as a new ruleset generation (measured on 6.18: the generation stays).

A host analysis kept for the generation alone would then describe a ruleset the kernel
no longer holds: here an owned table dropped outsiders' connections to 443; once it is
gone they get in, and sets mode must say that its sets restrict nothing.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ns_exec
from support.cfdata import CURRENT
from support.iptables.traffic import CF, OUTSIDE, Pair, pair
from support.nftables.helpers import OPEN_443, SET_RULES, NftHarness, admin_ruleset

from cfallow.engine import run_backend
from cfallow.netfilter import generation

pytestmark = [pytest.mark.root, pytest.mark.slow]

#: A guard in a table its process owns: outsiders' connections to 443 are dropped.
GUARD = (
    "add table ip guard { flags owner; }\n"
    "add chain ip guard in { type filter hook input priority -10; policy accept; }\n"
    "add rule ip guard in ip saddr != 104.16.0.0/13 tcp dport 443 drop\n"
)
OPEN_V4 = "sets mode: nothing drops tcp/80,443 from outsiders (IPv4"


@pytest.fixture
def lab() -> Iterator[Pair]:
    with pair() as p:
        yield p


def _tables(ns: str) -> str:
    return subprocess.run(
        ns_exec(ns, "nft", "list", "tables"), capture_output=True, text=True, check=True
    ).stdout


def _until(what: str, ok: object) -> None:
    for _ in range(400):  # a condition, not a time: 20 s at most on a loaded machine
        if callable(ok) and ok():
            return
        time.sleep(0.05)
    raise AssertionError(f"never: {what}")


def _owner(ns: str) -> subprocess.Popen[str]:
    """``nft -i`` in ``ns`` holding the guard table (its netlink socket owns it)."""
    proc = subprocess.Popen(
        ns_exec(ns, "nft", "-i"),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(GUARD)
    proc.stdin.flush()
    _until("the owned table is there", lambda: "table ip guard" in _tables(ns))
    return proc


def _synced(lab: Pair, tmp_path: Path) -> NftHarness:
    """Sets mode synced; then the admin lets the sets in and, on the host itself, 443 for
    everyone."""
    h = NftHarness(lab.server, tmp_path, "sets", table="inet filter")
    h.nft.load("flush ruleset\n" + admin_ruleset())
    assert run_backend(h.backend(), CURRENT, dry_run=False).error is None
    h.nft.load("flush ruleset\n" + admin_ruleset(SET_RULES + OPEN_443, include_sets=h.file))
    return h


def _notes(h: NftHarness) -> tuple[str, ...]:
    result = run_backend(h.backend(), CURRENT, dry_run=True)
    assert result.error is None and result.plan is not None, result.error
    return tuple(result.plan.notes)


def test_an_owned_table_gone_is_a_new_ruleset(lab: Pair, tmp_path: Path) -> None:
    h = _synced(lab, tmp_path)
    owner = _owner(lab.server)
    try:
        assert lab.can_connect(CF[0]) and not lab.can_connect(OUTSIDE[0])
        before = _notes(h)  # the guard decides IPv4: no "restricts nothing" for it
        assert not any(n.startswith(OPEN_V4) for n in before), before
        gen = generation.generation(h.runner)
    finally:
        assert owner.stdin is not None
        owner.stdin.close()
        owner.wait(timeout=30)
    _until("the owned table is gone", lambda: "table ip guard" not in _tables(lab.server))
    assert lab.can_connect(OUTSIDE[0]), "the guard still drops outsiders"
    assert generation.generation(h.runner) != gen, "the same generation names two rulesets"
    after = _notes(h)
    assert any(n.startswith(OPEN_V4) for n in after), f"a stale verdict was kept: {after}"


def test_an_owned_table_that_stays_keeps_the_memo(lab: Pair, tmp_path: Path) -> None:
    """The shortcut where it is honest: the owned table still there, nothing committed."""
    h = _synced(lab, tmp_path)
    owner = _owner(lab.server)
    try:
        first = _notes(h)
        h.runner.calls.clear()
        assert _notes(h) == first
        listed = [c for c in h.runner.calls if c[:3] == ("nft", "-j", "list")]
        assert not [c for c in listed if c[3] in ("chain", "table", "ruleset")], listed
    finally:
        assert owner.stdin is not None
        owner.stdin.close()
        owner.wait(timeout=30)
