"""cfallow's own commit does not make the next run read the tables again (iptables-nft).

After a changing sync, the tables read before it, with cfallow's batch applied,
are kept for the generation after the commit, but only where the generation
proves that nothing else committed: under the lock it is the one the tables were
read under, and after the batches it moved by exactly one per table part written.
Each test runs the real ``cfallow sync`` inside a namespace (as the timer runs it)
with ``*-save`` / ``*-restore`` wrappers that log their calls (and, when a test
asks, commit an admin change or fail), and compares what the next run uses with
a fresh ``iptables-nft-save`` / ``ip6tables-nft-save``, byte for byte once the
timestamp comments are dropped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netaddr import IPNetwork
from support import namespace, ns_exec, sh
from support.cfdata import CURRENT, OLD
from support.iptables.helpers import Fw, rules_only, tool

from cfallow.model import Networks, as_strings, family

pytestmark = pytest.mark.root

V4_EXTRA = IPNetwork("198.41.128.0/17")  # one of Cloudflare's ranges, left out and put back
V6_EXTRA = IPNetwork("2c0f:f248::/32")
#: The lists a changing sync goes through: 2021-03 <-> current, one range out and back in.
LISTS = (
    OLD,
    CURRENT,
    CURRENT - {V6_EXTRA},
    CURRENT,
    CURRENT - {V4_EXTRA},
    OLD - {V6_EXTRA},
    CURRENT,
)
ADMIN_RULE = ("-A", "INPUT", "-s", "192.0.2.7/32", "-p", "tcp", "--dport", "22", "-j", "DROP")


def wrappers(where: Path, log: Path, hooks: Path) -> Path:
    """``*-save``, ``*-restore``, ``nft`` and ``iptables-nft`` that log their call; a restore
    runs ``hooks/before``
    before the real one and ``hooks/after`` after it (its exit status is the restore's),
    a save ``hooks/save`` after the real one, when the test has put them there."""
    where.mkdir(exist_ok=True)
    hooks.mkdir(exist_ok=True)
    for version in (4, 6):
        for suffix in ("-save", "-restore"):
            name = tool("nft", version, suffix)
            real = sh(["sh", "-c", f"command -v {name}"]).strip()
            if suffix == "-save":
                body = (
                    f'echo {name} "$@" >> {log}\n{real} "$@" || exit $?\n'
                    f"[ -x {hooks}/save ] && exec {hooks}/save\n"
                    "exit 0\n"
                )
            else:
                body = (
                    f"echo {name} >> {log}\n"
                    f"[ -x {hooks}/before ] && {{ {hooks}/before || exit 1; }}\n"
                    f'{real} "$@" || exit $?\n'
                    f"[ -x {hooks}/after ] && exec {hooks}/after\n"
                    "exit 0\n"
                )
            wrapper = where / name
            wrapper.write_text("#!/bin/sh\n" + body)
            wrapper.chmod(0o755)
    for name in ("nft", tool("nft", 4), tool("nft", 6)):  # logged, then themselves
        real = sh(["sh", "-c", f"command -v {name}"]).strip()
        wrapper = where / name
        wrapper.write_text(f'#!/bin/sh\necho {name} "$@" >> {log}\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
    return where


class Host:
    """``cfallow sync`` of a pushed list in the namespace, one state directory."""

    def __init__(self, fw: Fw, config: str) -> None:
        self.fw = fw
        self.log = fw.tmp / "calls.log"
        self.hooks = fw.tmp / "hooks"
        self.path = f"{wrappers(fw.tmp / 'bin', self.log, self.hooks)}:{os.environ['PATH']}"
        self.conf = fw.tmp / "config.toml"
        self.conf.write_text('[backends.iptables]\nvariant = "nft"\n' + config)
        self.state = fw.tmp / "state"
        self.pushed = 0

    def sync(self, networks: Networks) -> subprocess.CompletedProcess[str]:
        """One run with ``networks`` as the list; what it called is in :meth:`calls`."""
        self.log.write_text("")
        self.pushed += 1
        doc = {
            "source": {
                "kind": "api",
                "etag": f"list-{self.pushed}",
                "ipv4": as_strings(family(networks, 4)),
                "ipv6": as_strings(family(networks, 6)),
                "fetched_at": 1795305600.0 + 60 * self.pushed,
            }
        }
        pushed = self.fw.tmp / "pushed.json"
        pushed.write_text(json.dumps(doc))
        argv = ["/usr/bin/env", f"PATH={self.path}", sys.executable, "-m", "cfallow"]
        argv += ["--config", str(self.conf), "--state-dir", str(self.state), "sync"]
        argv += ["--force", "--source-file", str(pushed)]
        return subprocess.run(
            ns_exec(self.fw.ns, *argv), capture_output=True, text=True, timeout=120, check=False
        )

    def calls(self, name: str) -> int:
        """The last run's calls of ``nft``, or of the tools ending in ``-save``/``-restore``."""
        names = [ln.split()[0] for ln in self.log.read_text().splitlines()]
        return sum(1 for n in names if n == name or (name[0] == "-" and n.endswith(name)))

    def hook(self, when: str, script: str | None) -> None:
        """Run ``script`` (sh) around the next restores (``None``: no more)."""
        path = self.hooks / when
        if script is None:
            path.unlink(missing_ok=True)
            return
        path.write_text("#!/bin/sh\n" + script)
        path.chmod(0o755)

    def kept(self) -> list[str]:
        """The tables the read memo holds, comments dropped."""
        doc = json.loads((self.state / "iptables-read.json").read_text())
        return [rules_only(text) for text in doc["value"]]

    def fresh(self, *tables: str) -> list[str]:
        return ["".join(self.fw.save(v, table=t) for t in tables) for v in (4, 6)]

    def in_step(self, networks: Networks) -> None:
        assert self.fw.owned() == networks


@pytest.fixture
def fw(tmp_path: Path) -> Iterator[Fw]:
    with namespace("carry") as ns:
        yield Fw(ns, "nft", tmp_path)


def settle(host: Host, networks: Networks) -> None:
    """A first sync (creates the chain: nothing carried), then a run that reads once."""
    proc = host.sync(networks)
    assert proc.returncode == 0, proc.stderr
    proc = host.sync(networks)
    assert proc.returncode == 0 and "in sync" in proc.stdout, proc.stdout + proc.stderr


MODES = {
    "allow": "",
    "lockdown": 'mode = "lockdown"\n',
    "lockdown, parent DOCKER-USER": 'mode = "lockdown"\nparent = "DOCKER-USER"\n',
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_changing_sync_keeps_exactly_what_the_kernel_holds(fw: Fw, mode: str) -> None:
    host = Host(fw, MODES[mode])
    tables = ("filter", "mangle") if "DOCKER-USER" in mode else ("filter",)
    settle(host, CURRENT)
    for networks in LISTS:
        proc = host.sync(networks)
        assert proc.returncode == 0 and "changed" in proc.stdout, proc.stdout + proc.stderr
        assert host.calls("-save") == 0, "the tables carried past cfallow's last commit"
        assert host.calls("-restore") >= 1
        assert host.kept() == host.fresh(*tables)
        host.in_step(networks)
    proc = host.sync(CURRENT)
    assert proc.returncode == 0 and "in sync" in proc.stdout, proc.stdout + proc.stderr
    assert host.calls("-save") == 0 and host.calls("-restore") == 0


def carried_and_afresh(host: Host) -> list[str]:
    """A changing sync; the run after it, which reads nothing (carried); the same run
    again with the memos gone (made afresh): what the last two reported after the source."""
    host.sync(OLD)
    proc = host.sync(CURRENT)
    assert proc.returncode == 0 and "changed" in proc.stdout, proc.stderr
    carried = host.sync(CURRENT)
    assert host.calls("-save") == 0 and host.calls("nft") == 0
    for memo in ("iptables-host.json", "iptables-read.json"):
        (host.state / memo).unlink()
    afresh = host.sync(CURRENT)
    return [out.stdout.split("\n", 1)[1] for out in (carried, afresh)]


def test_the_analysis_carried_is_the_one_made_afresh(fw: Fw) -> None:
    """allow mode's host analysis is carried with the tables: the next run asks nft nothing,
    and the notes it reports are those of an analysis made again from scratch."""
    fw.ipt(4, "-P", "INPUT", "ACCEPT")  # allow mode then notes that outsiders still get in
    host = Host(fw, "")
    settle(host, CURRENT)
    notes = carried_and_afresh(host)
    assert host.calls("-save") == 2 and host.calls("nft") > 0
    assert notes[0] == notes[1] and "outsiders still get" in notes[0]


def test_an_admin_commit_right_before_cfallows_is_not_carried(fw: Fw) -> None:
    host = Host(fw, "")
    settle(host, CURRENT)
    host.hook("before", f"iptables-nft {' '.join(ADMIN_RULE)}\n")
    proc = host.sync(OLD)
    assert proc.returncode == 0 and "changed" in proc.stdout, proc.stderr
    host.hook("before", None)
    proc = host.sync(OLD)
    assert proc.returncode == 0 and "in sync" in proc.stdout, proc.stdout + proc.stderr
    assert host.calls("-save") == 2, "a generation +2: the tables are read again"
    assert "-A INPUT -s 192.0.2.7/32 -p tcp -m tcp --dport 22 -j DROP" in fw.save(4)
    assert host.kept() == host.fresh("filter")
    host.in_step(OLD)


def test_an_admin_commit_between_read_and_lock_is_not_carried(fw: Fw) -> None:
    """A commit after cfallow's read, before its lock: the tables are read again under
    the lock (as before), and what the batch was computed from is not what was kept."""
    host = Host(fw, "")
    settle(host, CURRENT)
    fw.ipt(4, *ADMIN_RULE)  # the next run reads
    host.hook(
        "save",
        "[ -e %s ] || { touch %s; iptables-nft -A INPUT -j ACCEPT; }\n"
        % ((host.hooks / "done",) * 2),
    )
    proc = host.sync(OLD)
    assert proc.returncode == 0 and "changed" in proc.stdout, proc.stderr
    assert host.calls("-save") == 2 + host.calls("-restore"), "read again under the lock"
    host.hook("save", None)
    proc = host.sync(OLD)
    assert proc.returncode == 0 and "in sync" in proc.stdout, proc.stdout + proc.stderr
    assert host.calls("-save") == 2
    assert host.kept() == host.fresh("filter")


#: The admin's changes between two runs that the next run repairs (a rewrite of the
#: chain, new jumps), or only reads.
BETWEEN = {
    "an admin rule": [ADMIN_RULE],
    "a foreign rule in cfallow's chain": [("-A", "CFALLOW", "-s", "192.0.2.0/24", "-j", "DROP")],
    "a jump deleted": [("-D", "INPUT", "1")],
}


@pytest.mark.parametrize("change", sorted(BETWEEN))
def test_an_admin_commit_between_two_runs_is_read_then_carried(fw: Fw, change: str) -> None:
    host = Host(fw, "")
    settle(host, CURRENT)
    for args in BETWEEN[change]:
        fw.ipt(4, *args)
    proc = host.sync(OLD)
    assert proc.returncode == 0 and "changed" in proc.stdout, proc.stderr
    assert host.calls("-save") == 2, "the admin's commit is read"
    assert host.kept() == host.fresh("filter"), "the admin's rule is in what is kept"
    proc = host.sync(CURRENT)
    assert proc.returncode == 0 and host.calls("-save") == 0
    assert host.kept() == host.fresh("filter")
    host.in_step(CURRENT)


def test_a_commit_after_cfallows_is_not_carried(fw: Fw) -> None:
    """The generation moved by two (cfallow's batch, then someone's table): read again."""
    host = Host(fw, "")
    settle(host, CURRENT)
    host.hook("after", "nft add table ip admin\n")
    proc = host.sync(OLD)
    assert proc.returncode == 0 and "changed" in proc.stdout, proc.stderr
    host.hook("after", None)
    proc = host.sync(OLD)
    assert proc.returncode == 0 and "in sync" in proc.stdout, proc.stdout + proc.stderr
    assert host.calls("-save") == 2


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_failed_restore_is_not_carried(fw: Fw, when: str) -> None:
    """A restore that fails (before committing, or after: cfallow cannot know what it did)."""
    host = Host(fw, "")
    settle(host, CURRENT)
    host.hook(when, "echo 'iptables-nft-restore: line 3 failed' >&2\nexit 1\n")
    proc = host.sync(OLD)
    assert proc.returncode != 0, proc.stdout
    host.hook(when, None)
    proc = host.sync(OLD)
    assert proc.returncode == 0, proc.stderr
    # nothing committed: the tables kept for that generation still hold; else read again
    assert host.calls("-save") == (0 if when == "before" else 2)
    host.in_step(OLD)
    assert host.kept() == host.fresh("filter")


def test_an_admin_deletion_after_a_carried_sync_is_repaired(fw: Fw) -> None:
    host = Host(fw, "")
    settle(host, CURRENT)
    proc = host.sync(OLD)
    assert proc.returncode == 0 and host.calls("-save") == 0
    fw.ipt(4, "-D", "CFALLOW", "-s", "173.245.48.0/20", "-j", "ACCEPT")
    assert fw.owned() != OLD
    proc = host.sync(OLD)
    assert proc.returncode == 0 and "changed" in proc.stdout, proc.stdout + proc.stderr
    assert host.calls("-save") == 2
    host.in_step(OLD)
    proc = host.sync(OLD)
    assert proc.returncode == 0 and "in sync" in proc.stdout and host.calls("-save") == 0
