"""iptables-nft with many rules in other chains: a read after a commit lists INPUT and
cfallow's chain only (``iptables-nft -S``), where the kernel's counts prove no other
chain jumps into cfallow's; the whole table otherwise. Traffic through a veth pair
decides, with the admin's rules (2,500 in a chain of theirs) in place.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from support import ns_exec
from support.cfdata import CURRENT, OLD
from support.iptables.helpers import Fw, jumps_for
from support.iptables.traffic import CF, OLD_ONLY, OTHER, OUTSIDE, POLICY_DROP, Pair, pair, reach

from cfallow.engine import run_backend
from cfallow.netfilter import generation
from cfallow.netfilter.save import parse_save
from cfallow.runner import Completed, Runner

pytestmark = [pytest.mark.root, pytest.mark.slow]

ADMIN_RULES = 2500


def admin_chain(n: int = ADMIN_RULES) -> str:
    """The admin's chain of ``n`` rules (ssh from single hosts), jumped to at INPUT's end."""
    rules = [
        f"-A ADMIN -s 172.16.{i // 250}.{i % 250}/32 -p tcp --dport 22 -j ACCEPT" for i in range(n)
    ]
    return "\n".join(["*filter", ":ADMIN - [0:0]", *rules, "-A INPUT -j ADMIN", "COMMIT", ""])


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Pair, Fw]]:
    with pair() as p:
        fw = Fw(p.server, "nft", tmp_path)
        for version in (4, 6):
            fw.restore(version, POLICY_DROP[version])
        fw.restore(4, admin_chain())
        yield p, fw


def reads(fw: Fw) -> tuple[int, int]:
    """(``*-save -t filter`` runs, ``iptables-nft -S`` runs) since the calls were cleared
    (lockdown's NAT notes read the nat tables: not counted)."""
    calls = fw.runner.calls
    return (
        sum(1 for argv in calls if argv[0].endswith("-save") and "filter" in argv),
        sum(1 for argv in calls if argv[1:2] == ("-S",)),
    )


def commit(fw: Fw, i: int) -> None:
    """An admin commit of a rule that changes nothing for the test's addresses."""
    fw.ipt(4, "-A", "ADMIN", "-s", f"192.0.2.{100 + i}/32", "-p", "tcp", "--dport", "22")


def test_a_commit_is_read_by_chain_and_the_allowlist_holds(lab: tuple[Pair, Fw]) -> None:
    p, fw = lab
    assert not any(reach(p).values()), "the admin's policy DROP stops everyone first"
    result = run_backend(fw.backend(), OLD, dry_run=False)
    assert result.error is None, result.error
    assert reads(fw) == (0, 2), "no chain of cfallow's yet: INPUT of each family"
    assert reach(p) == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}
    assert p.can_connect(OLD_ONLY)
    for i, (desired, old_only) in enumerate([(CURRENT, False), (OLD, True), (CURRENT, False)]):
        commit(fw, i)  # a new generation: the next plan reads
        fw.runner.calls.clear()
        result = run_backend(fw.backend(), desired, dry_run=False)
        assert result.error is None and result.plan is not None, result.error
        assert result.plan.changed and not result.plan.drift, result.plan
        assert reads(fw) == (0, 4), fw.runner.calls
        assert p.can_connect(OLD_ONLY) is old_only, "the 2021 change in the kernel"
        assert reach(p) == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}
    assert fw.owned() == CURRENT
    for version in (4, 6):
        assert fw.jumps(version) == [f"-A INPUT {j}" for j in jumps_for()]
    assert len(fw.chain(4, "ADMIN")) == ADMIN_RULES + 3, "the admin's rules untouched"


def test_the_text_read_by_chain_is_a_whole_saves_lines(lab: tuple[Pair, Fw]) -> None:
    """INPUT's and cfallow's rules, every chain declared with the built-ins' policies,
    each INPUT rule on the line it has in ``*-save`` (the analysis names rules by it)."""
    _, fw = lab
    run_backend(fw.backend(), CURRENT, dry_run=False)
    for name in ("ufw-before-input", "DOCKER", "INPUT_direct"):  # the analysis's names
        fw.ipt(4, "-N", name)
    fw.ipt(4, "-P", "FORWARD", "DROP")
    from cfallow.backends.iptables import bychain
    from cfallow.backends.iptables.nft import NftIO

    snap = generation.chains(fw.runner)
    assert snap is not None
    texts = bychain.read(NftIO(fw.runner), (4, 6), "CFALLOW", snap)
    assert texts is not None
    for version, text in zip((4, 6), texts):
        whole = subprocess.run(
            ns_exec(fw.ns, "iptables-nft-save" if version == 4 else "ip6tables-nft-save"),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        ours, save = parse_save(text), parse_save(whole)
        assert ours.policies == save.policies
        assert [n for n, _ in ours.chains] == [n for n, _ in save.chains]
        for name in ("INPUT", "CFALLOW"):
            assert ours.rules(name) == save.rules(name)
        assert ours.input_lines == save.input_lines
        if version == 4:
            assert ours.rules("ADMIN") == (), "the other chains' rules are not read"
        declared = [ln for ln in whole.splitlines() if ln.startswith(":")]
        assert [ln for ln in text.splitlines() if ln.startswith(":")] == declared


@pytest.mark.parametrize("stray", [("ADMIN", "-j"), ("FORWARD", "-g")])
def test_a_jump_into_cfallows_chain_from_elsewhere_is_read_whole_and_undone(
    lab: tuple[Pair, Fw], stray: tuple[str, str]
) -> None:
    """The count of cfallow's chain is its rules plus INPUT's jumps plus the stray one:
    the whole table is read, the stray jump is drift and goes. In lockdown it dropped
    outsiders on a port lockdown does not cover (8080, reached through ADMIN)."""
    p, fw = lab
    fw.restore(4, "*filter\n-A INPUT -p tcp --dport 8080 -j ACCEPT\nCOMMIT\n")
    chain, verb = stray
    run_backend(fw.backend(mode="lockdown"), CURRENT, dry_run=False)
    assert p.can_connect(OUTSIDE[0], port=OTHER)
    spec = ["-p", "tcp", "--dport", str(OTHER), verb, "CFALLOW"]
    fw.ipt(4, "-I", "ADMIN" if chain == "ADMIN" else "INPUT", *spec)  # reached before 8080's
    if chain == "FORWARD":  # and one more in FORWARD, a goto
        fw.ipt(4, "-A", "FORWARD", *spec)
    assert not p.can_connect(OUTSIDE[0], port=OTHER), "the stray jump drops outsiders"
    fw.runner.calls.clear()
    result = run_backend(fw.backend(mode="lockdown"), CURRENT, dry_run=False)
    assert result.error is None and result.plan is not None, result.error
    assert p.can_connect(OUTSIDE[0], port=OTHER), "the stray jump is gone"
    assert any("stray jump" in d or "jumps into" in d for d in result.plan.drift), result.plan
    assert reads(fw) == (2, 4), "the counts do not add up: the whole table is read"
    assert reach(p) == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}
    fw.runner.calls.clear()
    commit(fw, 0)
    assert not run_backend(fw.backend(mode="lockdown"), CURRENT, dry_run=True).changed
    assert reads(fw) == (0, 4), "in step again: read by chain"


class CommitsDuringTheListing(Runner):
    """Runs in the namespace; right after the first ``-S`` listing an admin commits."""

    def __init__(self, fw: Fw) -> None:
        super().__init__(prefix=fw.runner.prefix)
        self.fw, self.done = fw, False

    def run(self, argv: Sequence[str], **kw: object) -> Completed:
        out = super().run(argv, **kw)  # type: ignore[arg-type]
        if tuple(argv[1:2]) == ("-S",) and not self.done:
            self.done = True
            self.fw.ipt(4, "-I", "INPUT", "-s", OUTSIDE[0], "-p", "tcp", "--dport", "443")
        return out


def test_a_commit_during_the_listings_is_read_whole(lab: tuple[Pair, Fw]) -> None:
    p, fw = lab
    run_backend(fw.backend(), CURRENT, dry_run=False)
    commit(fw, 0)
    hooked = CommitsDuringTheListing(fw)
    b = fw.backend()
    b.ctx = dataclasses.replace(b.ctx, runner=hooked)
    plan = b.plan(CURRENT)
    assert hooked.done
    assert sum(1 for argv in hooked.calls if argv[0].endswith("-save")) == 2, hooked.calls
    # the rule inserted above cfallow's jumps was read: the jumps are no longer first
    assert any("position" in d for d in plan.drift), plan.drift
    b.apply(plan)
    assert fw.jumps(4) == [f"-A INPUT {j}" for j in jumps_for()]
    assert fw.chain(4, "INPUT")[:3] == list(jumps_for()), "cfallow's jumps first again"
    assert reach(p) == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}


def test_removal_after_a_read_by_chain_leaves_the_admins_firewall(lab: tuple[Pair, Fw]) -> None:
    p, fw = lab
    run_backend(fw.backend(), CURRENT, dry_run=False)
    before = fw.chain(4, "ADMIN")
    commit(fw, 0)
    fw.runner.calls.clear()
    result = run_backend(fw.backend(), None, dry_run=False)
    assert result.error is None, result.error
    assert reads(fw) == (0, 4)
    for version in (4, 6):
        assert fw.jumps(version) == [] and "CFALLOW" not in fw.save(version)
    assert len(fw.chain(4, "ADMIN")) == len(before) + 1
    assert not any(reach(p).values()), "the admin's policy DROP again"


def test_a_small_table_is_read_whole(tmp_path: Path) -> None:
    with pair() as p:
        fw = Fw(p.server, "nft", tmp_path)
        fw.restore(4, admin_chain(100))
        run_backend(fw.backend(), CURRENT, dry_run=False)
        commit(fw, 0)
        fw.runner.calls.clear()
        assert not run_backend(fw.backend(), CURRENT, dry_run=True).changed
        assert reads(fw) == (2, 0)


def test_cfallows_own_commit_after_a_read_by_chain_is_carried(lab: tuple[Pair, Fw]) -> None:
    """``cfallow sync`` as the timer runs it: the text read by chain, with cfallow's batch
    applied, is kept for the generation after it, so the next changing syncs read
    nothing; what they keep is a whole save's INPUT and CFALLOW, and the kernel holds
    each list."""
    from test_iptables_carry import Host

    p, fw = lab
    host = Host(fw, "")
    for networks in (CURRENT, CURRENT):  # creates the chain, then analyses it
        assert host.sync(networks).returncode == 0
    commit(fw, 0)
    proc = host.sync(OLD)  # read by chain, then written
    assert proc.returncode == 0 and "changed" in proc.stdout, proc.stderr
    assert host.calls("-save") == 0 and host.calls("iptables-nft") == 2, host.log.read_text()
    for networks, old_only in ((CURRENT, False), (OLD, True), (CURRENT, False)):
        proc = host.sync(networks)
        assert proc.returncode == 0 and "changed" in proc.stdout, proc.stderr
        assert host.calls("-save") + host.calls("iptables-nft") == 0, host.log.read_text()
        assert p.can_connect(OLD_ONLY) is old_only
        for version, kept in zip((4, 6), host.kept()):
            whole = parse_save(fw.save(version))
            ours = parse_save(kept)
            assert ours.rules("INPUT") == whole.rules("INPUT")
            assert ours.rules("CFALLOW") == whole.rules("CFALLOW")
    assert reach(p) == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}
    assert fw.owned() == CURRENT
