"""An unchanged nf_tables ruleset is not read again; any change between two runs is.

The real ``cfallow`` CLI runs inside a test namespace (as the timer runs it) with
``*-save`` tools that log each call and then run the real one. While the ruleset
generation holds, a run reuses the tables it read under that generation; every
change between two runs (one of cfallow's rules deleted, its chain or the whole
table flushed, an admin rule, an IPv6-only change, another ``*-save`` binary) is
read and repaired by the next run. Legacy tables have no generation: the digest of
their blobs stands in for one, with the same outcome.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import namespace, ns_exec
from support.cfdata import CURRENT
from support.iptables.helpers import Fw, jumps_for, legacy_bin, tool

pytestmark = pytest.mark.root

CONF = '[backends.iptables]\nvariant = "{variant}"\n'


def logging_saves(where: Path, log: Path) -> Path:
    """A directory of ``*-save`` tools that note their call in ``log``, then run the real one."""
    where.mkdir(exist_ok=True)
    for variant in ("nft", "legacy"):
        for version in (4, 6):
            name = tool(variant, version, "-save")
            real = subprocess.run(
                ["sh", "-c", f"command -v {name}"], capture_output=True, text=True, check=True
            ).stdout.strip()
            wrapper = where / name
            wrapper.write_text(f'#!/bin/sh\necho {name} >> {log}\nexec {real} "$@"\n')
            wrapper.chmod(0o755)
    return where


class Runs:
    """``cfallow sync`` in the namespace, one state directory, counting the ``*-save`` calls."""

    def __init__(self, fw: Fw) -> None:
        self.fw = fw
        self.log = fw.tmp / "saves.log"
        self.path = f"{logging_saves(fw.tmp / 'bin', self.log)}:{os.environ['PATH']}"
        if fw.variant == "legacy":
            self.path = f"{legacy_bin(fw.tmp / 'legacy-bin')}:{self.path}"
        (fw.tmp / "config.toml").write_text(CONF.format(variant=fw.variant))

    def sync(self, *, path: str | None = None) -> tuple[int, subprocess.CompletedProcess[str]]:
        """One run: how many ``*-save`` calls it made, and the process."""
        self.log.write_text("")
        conf, state = self.fw.tmp / "config.toml", self.fw.tmp / "state"
        argv = ["/usr/bin/env", f"PATH={path or self.path}", sys.executable, "-m", "cfallow"]
        argv += ["--config", str(conf), "--state-dir", str(state), "sync", "--source", "bundled"]
        env = {**os.environ, "XTABLES_LOCKFILE": self.fw.lock}
        proc = subprocess.run(
            ns_exec(self.fw.ns, *argv),
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        return len(self.log.read_text().splitlines()), proc

    def settled(self, carried: bool = False) -> None:
        """Runs until one makes no change: cfallow's own commit is a generation too, so the
        run after a write that created the chain reads once more (``carried``: a write
        that only changed rules, whose outcome the run kept); the one after reads nothing."""
        reads, proc = self.sync()
        assert proc.returncode == 0 and "in sync" in proc.stdout, proc.stdout + proc.stderr
        assert reads == (0 if carried else 2), "the first run after a commit reads again"
        reads, proc = self.sync()
        assert proc.returncode == 0 and "in sync" in proc.stdout, proc.stdout + proc.stderr
        assert reads == 0, "the generation held: the tables of the last read are kept"

    def in_step(self) -> None:
        assert self.fw.owned() == CURRENT
        for version in (4, 6):
            assert self.fw.jumps(version) == [f"-A INPUT {j}" for j in jumps_for()]


@pytest.fixture
def nft(tmp_path: Path) -> Iterator[Runs]:
    with namespace("ipmemo") as ns:
        yield Runs(Fw(ns, "nft", tmp_path))


RULE_V4 = ("-s", "173.245.48.0/20", "-j", "ACCEPT")
RULE_V6 = ("-s", "2400:cb00::/32", "-j", "ACCEPT")
#: What happens between two runs: (family, the admin's ``iptables`` arguments), in order.
CHANGES: dict[str, list[tuple[int, tuple[str, ...]]]] = {
    "one of cfallow's rules deleted": [(4, ("-D", "CFALLOW", *RULE_V4))],
    "an IPv6 rule deleted": [(6, ("-D", "CFALLOW", *RULE_V6))],
    "cfallow's chain flushed": [(4, ("-F", "CFALLOW"))],
    "the whole table flushed": [(4, ("-F",)), (4, ("-X",)), (6, ("-F",)), (6, ("-X",))],
    "a jump deleted": [(4, ("-D", "INPUT", "1"))],
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_between_two_runs_is_read_and_repaired(nft: Runs, change: str) -> None:
    reads, proc = nft.sync()
    assert proc.returncode == 0 and reads == 2, proc.stderr
    nft.settled()
    for version, args in CHANGES[change]:
        nft.fw.ipt(version, *args)
    assert nft.fw.owned() != CURRENT or len(nft.fw.jumps(4)) != 3
    reads, proc = nft.sync()
    assert proc.returncode == 0, proc.stderr
    assert reads == 2 and "changed" in proc.stdout, proc.stdout
    nft.in_step()
    # a chain created, or one whose rules were all gone (where they go is unsaid): read again
    nft.settled(carried=change not in ("the whole table flushed", "cfallow's chain flushed"))
    nft.in_step()


def test_an_admin_rule_is_read_and_nothing_of_it_is_touched(nft: Runs) -> None:
    nft.sync()
    nft.settled()
    nft.fw.ipt(4, "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
    reads, proc = nft.sync()
    assert proc.returncode == 0 and reads == 2 and "in sync" in proc.stdout, proc.stdout
    assert "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT" in nft.fw.save(4).splitlines()
    nft.in_step()
    reads, proc = nft.sync()
    assert reads == 0 and proc.returncode == 0


def test_a_replaced_save_binary_is_run_and_its_failure_reported(nft: Runs, tmp_path: Path) -> None:
    """A replaced ``*-save`` (an upgrade; here one that fails) is run, not trusted blindly."""
    nft.sync()
    nft.settled()
    broken = tmp_path / "broken"
    broken.mkdir()
    for version in (4, 6):
        bad = broken / tool("nft", version, "-save")
        bad.write_text("#!/bin/sh\necho 'cannot read the table' >&2\nexit 1\n")
        bad.chmod(0o755)
    _, proc = nft.sync(path=f"{broken}:{nft.path}")
    assert proc.returncode != 0 and "cannot read the table" in proc.stderr, proc.stderr


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_legacy_tables_are_read_again_only_after_a_change(tmp_path: Path, change: str) -> None:
    """Legacy x_tables have no generation: the digest of their blobs stands in for it."""
    with namespace("ipmemo") as ns:
        runs = Runs(Fw(ns, "legacy", tmp_path))
        for expected in (2, 2, 0):  # the first read; after cfallow's own commit; unchanged
            reads, proc = runs.sync()
            assert proc.returncode == 0 and reads == expected, proc.stdout + proc.stderr
        for version, args in CHANGES[change]:
            runs.fw.ipt(version, *args)
        reads, proc = runs.sync()
        assert proc.returncode == 0, proc.stderr
        assert reads == 2 and "changed" in proc.stdout, proc.stdout  # and written from that read
        runs.in_step()
        for expected in (2, 0):  # nothing carried past cfallow's own commit on legacy
            reads, proc = runs.sync()
            assert proc.returncode == 0 and reads == expected and "in sync" in proc.stdout
        runs.in_step()
