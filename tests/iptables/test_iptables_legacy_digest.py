"""iptables-legacy: the digest of the kernel's x_tables blobs stands in for a ruleset generation.

The digest (``cfallow.netfilter.xtables.digest``: each table's blob with every
entry's counters zeroed, the boot and the namespace's cookie) must hold while
traffic moves counters and move with any change of a rule, a chain or a
policy, in filter, nat and mangle. The backend keeps what it read under it:
a run over an unchanged ruleset starts no ``*-save``; any change between two
runs is read (and its verdict reported); a changing sync writes from the
plan's table when the digest under the xtables lock is the plan's, and reads
again when anything moved in between, so the kernel then lets through what it
should. Every test runs in its own namespaces.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cfallow.backends.iptables import legacy
from support import namespace, need_tool, ns_exec, sh
from support.cfdata import CURRENT, OLD
from support.iptables.helpers import Fw, jumps_for, legacy_bin, tool
from support.iptables.netns import in_netns
from support.iptables.traffic import CF, OUTSIDE, POLICY_DROP, pair, reach

from cfallow.netfilter import xtables
from cfallow.runner import Runner

pytestmark = pytest.mark.root

ALL = tuple((v, t) for v in (4, 6) for t in ("filter", "nat", "mangle"))
#: nat and mangle rules matching the namespace's own loopback traffic (both families).
NAT_MANGLE = """*nat
:OUTPUT ACCEPT [0:0]
-A OUTPUT -p udp --dport 9 -j RETURN
COMMIT
*mangle
:OUTPUT ACCEPT [0:0]
-A OUTPUT -p udp -j RETURN
COMMIT
"""
#: The admin's legacy tables: rules in filter (a user chain, an empty one, an -i rule,
#: cfallow's chain), nat and mangle, each matching the namespace's own loopback traffic.
SETUP = {
    4: """*filter
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:ADMIN - [0:0]
:EMPTY - [0:0]
:CFALLOW - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -j ADMIN
-A OUTPUT -p udp -j ADMIN
-A ADMIN -s 10.0.0.0/8 -p tcp --dport 22 -j ACCEPT
-A CFALLOW -s 173.245.48.0/20 -j ACCEPT
COMMIT
"""
    + NAT_MANGLE,
    6: """*filter
:INPUT ACCEPT [0:0]
:ADMIN - [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -j ADMIN
COMMIT
"""
    + NAT_MANGLE,
}
SEND = (
    "import socket\n"
    "for host in ('127.0.0.1', '::1'):\n"
    "    fam = socket.AF_INET6 if ':' in host else socket.AF_INET\n"
    "    with socket.socket(fam, socket.SOCK_DGRAM) as s:\n"
    "        for _ in range(20):\n"
    "            s.sendto(b'x' * 100, (host, 9))\n"
)


#: An admin DNAT onto 443 (a NAT note in lockdown).
REDIRECT_8443 = "-t nat -A PREROUTING -p tcp --dport 8443 -j REDIRECT --to-ports 443"


def _legacy_ns_env(tmp: Path) -> dict[str, str]:
    return dict(os.environ, XTABLES_LOCKFILE=str(tmp / "xtables.lock"))


def _restore(ns: str, version: int, text: str, tmp: Path) -> None:
    argv = ns_exec(ns, tool("legacy", version, "-restore"), "--noflush")
    proc = subprocess.run(
        argv, input=text, capture_output=True, text=True, env=_legacy_ns_env(tmp), check=False
    )
    assert proc.returncode == 0, proc.stderr


def _ipt(ns: str, version: int, tmp: Path, *args: str) -> None:
    argv = ns_exec(ns, tool("legacy", version), "-w", "10", *args)
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=_legacy_ns_env(tmp), check=False
    )
    assert proc.returncode == 0, proc.stderr


def _digest(ns: str, tables: tuple[tuple[int, str], ...] = ALL) -> xtables.Digest:
    found: xtables.Digest = in_netns(ns, lambda: xtables.digest(tables))
    return found


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[str]:
    need_tool(*(tool("legacy", v, s) for v in (4, 6) for s in ("", "-save", "-restore")))
    with namespace("xdig") as ns:
        for version in (4, 6):
            _restore(ns, version, SETUP[version], tmp_path)
        yield ns


def test_the_digest_holds_while_traffic_moves_the_counters(admin: str, tmp_path: Path) -> None:
    before = _digest(admin)
    sh(ns_exec(admin, sys.executable, "-c", SEND))
    counted = sh(ns_exec(admin, "iptables-legacy-save", "-c", "-t", "mangle"))
    assert "[20:2" in counted, "the packets did not move the counters: nothing was tested"
    after = _digest(admin)
    assert after.value == before.value
    moved = after.policies[("filter", "OUTPUT")][0] - before.policies[("filter", "OUTPUT")][0]
    assert moved >= 20, "the policies' counters are read as they are now"
    assert _digest(admin).value == after.value


def _mask(ns: str) -> None:
    """The IPv4 ``-i lo`` rule's interface mask made 0x01 bytes (the rule text stays)."""

    def edit() -> None:
        blob = xtables.read_table(4, "filter")
        data = bytearray(blob.entries)
        pos = blob.hook_entry[1]  # INPUT's first entry: -i lo -j ACCEPT
        assert data[pos + 48 : pos + 51] == b"\xff\xff\xff"
        data[pos + 48 : pos + 51] = b"\x01\x01\x01"
        xtables.load_table(blob.replace(entries=bytes(data)))

    in_netns(ns, edit)


#: One change each, in any table, chain or family; each must move the digest.
CHANGES: dict[str, Callable[[str, Path], None]] = {
    "an admin rule in INPUT": lambda ns, t: _ipt(
        ns, 4, t, "-I", "INPUT", "-s", "192.0.2.9", "-j", "DROP"
    ),
    "a rule in cfallow's chain": lambda ns, t: _ipt(ns, 4, t, "-D", "CFALLOW", "1"),
    "a rule in a user chain": lambda ns, t: _ipt(
        ns, 4, t, "-A", "ADMIN", "-p", "udp", "-j", "DROP"
    ),
    "a policy": lambda ns, t: _ipt(ns, 4, t, "-P", "FORWARD", "DROP"),
    "a user chain added": lambda ns, t: _ipt(ns, 4, t, "-N", "NEW"),
    "a user chain removed": lambda ns, t: _ipt(ns, 4, t, "-X", "EMPTY"),
    "a user chain renamed": lambda ns, t: _ipt(ns, 4, t, "-E", "EMPTY", "OTHER"),
    "an IPv6 rule": lambda ns, t: _ipt(
        ns, 6, t, "-A", "ADMIN", "-s", "2001:db8::/32", "-j", "DROP"
    ),
    "a rule's port": lambda ns, t: _ipt(
        ns,
        4,
        t,
        "-R",
        "ADMIN",
        "1",
        "-s",
        "10.0.0.0/8",
        "-p",
        "tcp",
        "--dport",
        "23",
        "-j",
        "ACCEPT",
    ),
    "an -i mask only": lambda ns, t: _mask(ns),
    "a nat rule": lambda ns, t: _ipt(
        ns, 4, t, *REDIRECT_8443.replace("PREROUTING", "OUTPUT").split()
    ),
    "an IPv6 nat rule removed": lambda ns, t: _ipt(ns, 6, t, "-t", "nat", "-F", "OUTPUT"),
    "a mangle rule": lambda ns, t: _ipt(ns, 4, t, "-t", "mangle", "-A", "FORWARD", "-j", "RETURN"),
    "a table created": lambda ns, t: _ipt(
        ns, 4, t, "-t", "raw", "-A", "PREROUTING", "-j", "ACCEPT"
    ),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_the_digest_moves_with_every_change(admin: str, tmp_path: Path, change: str) -> None:
    tables = (*ALL, (4, "raw"))
    before = _digest(admin, tables)
    assert "raw" not in in_netns(admin, lambda: xtables.table_names(4)), "the digest created raw"
    CHANGES[change](admin, tmp_path)
    assert _digest(admin, tables).value != before.value


def test_the_digest_is_the_runners_namespaces(admin: str, tmp_path: Path) -> None:
    """Through a runner with a prefix (the module runs there): that namespace's digest."""
    there = legacy.digest(Runner(prefix=ns_exec(admin)), ALL)
    assert there is not None and there == _digest(admin)
    with namespace("xdig2") as other:
        for version in (4, 6):
            _restore(other, version, SETUP[version], tmp_path)
        same_rules = legacy.digest(Runner(prefix=ns_exec(other)), ALL)
    assert same_rules is not None and same_rules.value != there.value, "the namespace is in it"


def test_without_the_privilege_there_is_no_digest_and_it_is_said_once(
    admin: str, caplog: pytest.LogCaptureFixture
) -> None:
    need_tool("setpriv")
    drop = ["setpriv", "--bounding-set", "-net_raw,-net_admin", "--inh-caps", "-all"]
    runner = Runner(prefix=[*ns_exec(admin), *drop])
    legacy._undigested.clear()
    with caplog.at_level(logging.WARNING, logger="cfallow"):
        assert legacy.digest(runner, ALL) is None
        assert legacy.digest(runner, ALL) is None
    said = [r.getMessage() for r in caplog.records if "tell whether they changed" in r.getMessage()]
    assert len(said) == 1 and "read with *-save every run" in said[0], said


# -- the backend ----------------------------------------------------------------------


def _logging_saves(where: Path, log: Path) -> Path:
    """``*-legacy-save`` tools that note their call (with arguments) in ``log``."""
    where.mkdir(exist_ok=True)
    for version in (4, 6):
        name = tool("legacy", version, "-save")
        real = subprocess.run(
            ["sh", "-c", f"command -v {name}"], capture_output=True, text=True, check=True
        ).stdout.strip()
        wrapper = where / name
        wrapper.write_text(f'#!/bin/sh\necho {name} "$@" >> {log}\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
    nft_path = shutil.which("nft")
    if nft_path is not None:  # the host analysis starts with ``nft -j list chains``
        nft = where / "nft"
        nft.write_text(f'#!/bin/sh\necho nft "$@" >> {log}.nft\nexec {nft_path} "$@"\n')
        nft.chmod(0o755)
    return where


class Counting:
    """A legacy :class:`Fw` whose backend's ``*-save`` calls are counted (one state dir)."""

    def __init__(self, ns: str, tmp: Path) -> None:
        self.fw = Fw(ns, "legacy", tmp)
        self.log = tmp / "saves.log"
        self.log.write_text("")
        path = f"{_logging_saves(tmp / 'bin', self.log)}:{legacy_bin(tmp / 'legacy-bin')}"
        self.fw.runner = Runner(
            env={"PATH": f"{path}:{os.environ['PATH']}", "XTABLES_LOCKFILE": self.fw.lock}
        )

    def calls(self) -> list[str]:
        """The ``*-save`` calls since the last time asked."""
        out = self.log.read_text().splitlines()
        self.log.write_text("")
        return out

    def analyses(self) -> int:
        """How many host analyses ran since the last time asked (``nft -j list chains``)."""
        log = Path(f"{self.log}.nft")
        out = log.read_text().count("list chains") if log.exists() else 0
        log.write_text("")
        return out

    def sync(self, desired: frozenset = CURRENT, /, **section: object) -> list[str]:  # type: ignore[type-arg]
        """read, diff, apply: the saves it ran."""
        b = self.fw.backend(**section)
        plan = b.diff(b.read(), desired)
        b.apply(plan)
        return self.calls()


@pytest.fixture
def counting(tmp_path: Path) -> Iterator[Counting]:
    with namespace("xdigb") as ns:
        yield Counting(ns, tmp_path)


def test_an_unchanged_legacy_ruleset_is_not_read_again(counting: Counting) -> None:
    assert len(counting.sync()) == 2, "the first run reads both families"
    assert len(counting.sync()) == 2, "cfallow's own commit moved the digest: read again"
    assert counting.sync() == [], "nothing changed: no *-save"
    assert counting.fw.owned() == CURRENT


def test_a_changing_sync_reads_each_table_once(counting: Counting) -> None:
    """The plan's tables, read under the digest, are written from under the same digest."""
    counting.sync()
    counting.sync()
    counting.fw.ipt(4, "-A", "INPUT", "-s", "192.0.2.7", "-j", "DROP")  # so the plan reads
    saves = counting.sync(OLD)
    assert sorted(saves) == [
        "ip6tables-legacy-save -c -t filter",
        "iptables-legacy-save -c -t filter",
    ]
    assert counting.fw.owned() == OLD
    saves = counting.sync(CURRENT)  # the plan's read: cfallow's own commit moved the digest
    assert len(saves) == 2 and counting.fw.owned() == CURRENT
    assert len(counting.sync(CURRENT)) == 2, "the run after cfallow's commit reads"
    assert counting.sync(CURRENT) == []
    assert "-A INPUT -s 192.0.2.7/32 -j DROP" in counting.fw.save(4)


def test_a_change_between_the_plans_read_and_the_lock_is_read_again(tmp_path: Path) -> None:
    """The admin deletes cfallow's jumps after the plan's read: the write reads again and puts
    them back (written from the plan's table they would stay gone: Cloudflare shut out)."""
    with pair() as p:
        counting = Counting(p.server, tmp_path)
        fw = counting.fw
        for version in (4, 6):
            fw.restore(version, POLICY_DROP[version])
        counting.sync(OLD)
        counting.sync(OLD)
        assert reach(p) == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}
        b = fw.backend()
        plan = b.diff(b.read(), CURRENT)
        assert len(counting.calls()) == 0, "the plan's read was kept"
        assert [step.version for step in plan.steps] == [4], "IPv6: the same in both lists"
        for jump in jumps_for():
            fw.ipt(4, "-D", "INPUT", *jump.split())
        assert not p.can_connect(CF[0])
        b.apply(plan)
        assert counting.calls() == ["iptables-legacy-save -c -t filter"], (
            "read again under the lock"
        )
        assert reach(p) == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}
        assert fw.owned() == CURRENT
        assert fw.jumps(4) == [f"-A INPUT {j}" for j in jumps_for()]


def test_policy_counters_are_written_back_as_they_are_at_the_write(tmp_path: Path) -> None:
    """Written from the plan's table, the ``-c`` restore sets the built-in policies'
    counters to the kernel's under the lock, not to the older ones of the plan's read."""
    with pair() as p:
        counting = Counting(p.server, tmp_path)
        fw = counting.fw
        counting.sync(OLD)
        counting.sync(OLD)
        b = fw.backend()
        plan = b.diff(b.read(), CURRENT)
        assert counting.calls() == []
        assert reach(p)[OUTSIDE[0]], "policy ACCEPT: the outsider's packets count on INPUT's policy"
        before = _policy_packets(fw)
        b.apply(plan)
        assert counting.calls() == [], "written from the plan's table"
        assert _policy_packets(fw) >= before > 0


def _policy_packets(fw: Fw) -> int:
    line = next(ln for ln in fw.save(4, counters=True).splitlines() if ln.startswith(":INPUT "))
    return int(line.split("[", 1)[1].split(":", 1)[0])


#: Between two runs: the admin's change, and what the second run must say of it.
BETWEEN: dict[str, tuple[tuple[str, ...], str]] = {
    "a DROP inserted before the jumps": (
        ("-I", "INPUT", "1", "-p", "tcp", "--dport", "443", "-j", "DROP"),
        "jump at position 2 of INPUT, not 1",
    ),
    "a DROP after the jumps (allow mode now holds)": (
        ("-A", "INPUT", "-p", "tcp", "-m", "multiport", "--dports", "80,443", "-j", "DROP"),
        "tcp/80,443 (IPv6)",
    ),
}


@pytest.mark.parametrize("change", sorted(BETWEEN))
def test_a_change_between_two_runs_is_read_and_its_verdict_reported(
    counting: Counting, change: str
) -> None:
    args, said = BETWEEN[change]
    counting.sync()
    counting.sync()
    b = counting.fw.backend()
    plan = b.diff(b.read(), CURRENT)
    assert counting.calls() == [] and not plan.changed
    assert any("outsiders still get in" in n and "(IPv6)" not in n for n in plan.notes)
    counting.fw.ipt(4, *args)
    b = counting.fw.backend()
    plan = b.diff(b.read(), CURRENT)
    assert len(counting.calls()) == 2, "the change was read"
    assert said in " ".join([*plan.drift, *plan.notes]), (plan.drift, plan.notes)


def test_lockdown_nat_notes_are_kept_while_the_nat_tables_hold(counting: Counting) -> None:
    counting.fw.ipt(
        4, "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "443", "-j", "ACCEPT"
    )
    counting.sync(mode="lockdown")
    counting.sync(mode="lockdown")
    b = counting.fw.backend(mode="lockdown")
    plan = b.diff(b.read(), CURRENT)
    assert counting.calls() == [], "nothing changed: neither filter nor nat read"
    assert not [n for n in plan.notes if n.startswith("NAT:")]
    counting.fw.ipt(4, *REDIRECT_8443.split())
    plan = b.diff(b.read(), CURRENT)
    assert counting.calls() == ["iptables-legacy-save -t nat"], "only the nat table moved"
    notes = [n for n in plan.notes if n.startswith("NAT:")]
    assert len(notes) == 1 and "onto locked port 443" in notes[0], notes
    plan = b.diff(b.read(), CURRENT)
    assert counting.calls() == [] and [n for n in plan.notes if n.startswith("NAT:")] == notes


def test_host_check_false_leaves_the_host_analysis_out(counting: Counting) -> None:
    """As the nftables backend's key: no allow-mode analysis (its note), no NAT notes."""
    counting.fw.ipt(4, *REDIRECT_8443.split())
    for section, analysed in (({}, True), ({"host_check": False}, False)):
        for mode, note in (("allow", "outsiders still get in"), ("lockdown", "NAT:")):
            b = counting.fw.backend(mode=mode, **section)
            plan = b.diff(b.read(), CURRENT)
            assert any(note in n for n in plan.notes) == analysed, (section, mode, plan.notes)


def test_the_counters_and_only_they_are_zeroed(admin: str, tmp_path: Path) -> None:
    """Entries of mixed sizes, with counters that moved: the walk zeroes each entry's
    counters (checked entry by entry, by ``next_offset``) and no other byte."""
    sh(ns_exec(admin, sys.executable, "-c", SEND))

    def check() -> int:
        blob = xtables.read_table(4, "filter")
        data = bytearray(xtables.ENTRIES_HEAD) + bytearray(blob.entries)
        with memoryview(data) as view:
            xtables._zero_counters(view, 4, xtables.ENTRIES_HEAD, len(data))
        pos, seen, moved = 0, set(), 0
        while pos < len(blob.entries):
            step = int.from_bytes(blob.entries[pos + 90 : pos + 92], "little")
            at = xtables.ENTRIES_HEAD + pos + 96
            assert data[at : at + 16] == bytes(16)
            moved += blob.entries[pos + 96 : pos + 112] != bytes(16)
            data[at : at + 16] = blob.entries[pos + 96 : pos + 112]
            seen.add(step)
            pos += step
        assert bytes(data[xtables.ENTRIES_HEAD :]) == blob.entries, "a byte besides counters"
        assert len(seen) >= 3, "entries of one size only: the mixed walk was not tested"
        return moved

    assert in_netns(admin, check) > 0, "no counter had moved: nothing was zeroed"


def test_a_sync_that_only_rewrote_cfallows_chain_keeps_the_allow_analysis(
    counting: Counting, tmp_path: Path
) -> None:
    """Allow mode's analysis never reads cfallow's own chain: kept past a sync that only
    rewrote its rules (the tables are read again: the digest moved), and what it says is
    what a fresh analysis says; an admin rule in INPUT is analysed again."""
    need_tool("nft")
    counting.sync(OLD)
    counting.sync(OLD)
    counting.analyses()
    counting.sync(CURRENT)
    assert counting.analyses() == 0, "the sync's own read: the analysis was kept"
    b = counting.fw.backend()
    kept = b.diff(b.read(), CURRENT)
    assert len(counting.calls()) == 2 and counting.analyses() == 0 and not kept.changed
    fresh = Counting(counting.fw.ns, tmp_path / "fresh")
    b = fresh.fw.backend()
    assert b.diff(b.read(), CURRENT).notes == kept.notes and kept.notes
    assert fresh.analyses() == 1
    counting.fw.ipt(
        4, "-A", "INPUT", "-p", "tcp", "-m", "multiport", "--dports", "80,443", "-j", "DROP"
    )
    b = counting.fw.backend()
    assert b.diff(b.read(), CURRENT).notes != kept.notes and counting.analyses() == 1


def test_with_the_mangle_guard_a_mangle_change_is_read_and_repaired(counting: Counting) -> None:
    """parent = "DOCKER-USER" (lockdown): the digest covers mangle, where the guard is."""
    fw, section = counting.fw, {"parent": "DOCKER-USER", "mode": "lockdown"}
    for version in (4, 6):
        fw.docker_starts(version)
    counting.sync(**section)
    counting.sync(**section)
    assert counting.sync(**section) == [], "nothing changed: no *-save"
    guard = fw.chain(4, "FORWARD", table="mangle")
    assert guard, "no guard in mangle FORWARD"
    fw.ipt(4, "-t", "mangle", "-D", "FORWARD", "1")
    saves = counting.sync(**section)
    assert "iptables-legacy-save -c -t mangle" in saves, saves
    assert fw.chain(4, "FORWARD", table="mangle") == guard, "the guard was put back"
