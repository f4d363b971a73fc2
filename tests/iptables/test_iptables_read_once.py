"""A changing sync reads each family's table once (nf_tables hosts): ``apply`` writes from
the plan's read when the ruleset generation has not moved since, and reads again when it has.

Counts the ``*-save`` reads through the backend's Runner; every outcome is read back with
the variant's own ``*-save``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import namespace
from support.cfdata import CURRENT, OLD
from support.iptables.helpers import Fw, jumps_for
from support.nftables.helpers import ADMIN_DROP, Nft

from cfallow.errors import BackendError
from cfallow.netfilter.generation import Memo
from cfallow.netfilter.save import version_text
from cfallow.runner import Runner

pytestmark = pytest.mark.root


@pytest.fixture
def fw(tmp_path: Path) -> Iterator[Fw]:
    with namespace("once") as ns:
        yield Fw(ns, "nft", tmp_path)


def saves(fw: Fw) -> int:
    return sum(1 for argv in fw.runner.calls if argv[0].endswith("-save"))


def test_a_changing_sync_reads_each_table_once(fw: Fw) -> None:
    b = fw.backend()
    b.apply(b.plan(OLD))
    fw.runner.calls.clear()
    b.apply(b.plan(CURRENT))
    assert saves(fw) == 2  # one per family, in the plan's read
    assert fw.owned() == CURRENT
    assert fw.jumps(4) == [f"-A INPUT {j}" for j in jumps_for()]


def test_a_commit_between_plan_and_apply_is_read_again(fw: Fw) -> None:
    first, second = fw.backend(), fw.backend()
    plan = first.plan(CURRENT)
    second.apply(second.plan(CURRENT))  # another run wrote the chain and its jumps meanwhile
    fw.runner.calls.clear()
    first.apply(plan)
    assert saves(fw) == 2  # the generation moved: both tables read again under the lock
    for version in (4, 6):
        assert fw.jumps(version) == [f"-A INPUT {j}" for j in jumps_for()], "a second jump"
    assert fw.owned() == CURRENT


def test_allow_modes_analysis_is_kept_while_the_ruleset_stays(fw: Fw) -> None:
    b = fw.backend()
    b.apply(b.plan(CURRENT))
    b.plan(CURRENT)  # the first read after cfallow's own commit analyses that generation
    fw.runner.calls.clear()
    first = b.plan(CURRENT).notes
    second = int(time.time())
    while int(time.time()) == second:  # *-save stamps its output to the second
        time.sleep(0.05)
    assert b.plan(CURRENT).notes == first
    assert ("nft", "-j", "list", "chains") not in fw.runner.calls
    Nft(fw.ns).load(ADMIN_DROP % "")  # the admin's native policy drop: a new generation
    with pytest.raises(BackendError, match="allow mode cannot take effect here"):
        b.plan(CURRENT)


def test_iptables_version_is_asked_once_per_binary(tmp_path: Path) -> None:
    """``iptables --version`` only reads the binary (no firewall state): asked here, in the
    test's own process, with a private memo file."""
    memo = Memo(tmp_path / "version.json")
    runner = Runner()
    first = version_text(runner, memo)
    assert version_text(runner, memo) == first
    assert runner.calls.count(("iptables", "--version")) == 1
    legacy = tmp_path / "bin"
    legacy.mkdir()
    (legacy / "iptables").symlink_to(shutil.which("iptables-legacy") or "/usr/sbin/iptables-legacy")
    other = Runner(env={"PATH": f"{legacy}:{os.environ.get('PATH', '')}"})
    assert "(legacy)" in version_text(other, memo)  # another binary: asked again
    assert other.calls == [("iptables", "--version")]
