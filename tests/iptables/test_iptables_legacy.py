"""The legacy writer under concurrency: the xtables lock, EAGAIN retries, no lost rule.

All of it runs inside a test namespace (python-iptables in a forked child that
entered it), with an xtables lock file private to the test.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cfallow.backends.iptables import IptablesBackend
from cfallow.backends.iptables_legacy import LegacyIO, xtables_lock
from support import namespace, need_tool
from support.cfdata import CURRENT, OLD
from support.ipt_netns import NetnsBackend, in_netns
from support.ipt_support import JUMP, Fw

from cfallow.backend import Context, build
from cfallow.engine import run_backend
from cfallow.errors import BackendError
from cfallow.model import as_strings
from cfallow.runner import Runner

pytestmark = pytest.mark.root


@pytest.fixture
def fw(tmp_path: Path) -> Iterator[Fw]:
    with namespace("ipl") as ns:
        yield Fw(ns, "legacy", tmp_path)


def racer(fw: Fw, rules: list[str]) -> object:
    """A writer that ignores the xtables lock (another lock file): adds one rule per call."""

    def race() -> None:
        if not rules:
            return
        text = f"*filter\n-A INPUT {rules.pop(0)}\nCOMMIT\n"
        env = dict(os.environ, XTABLES_LOCKFILE=fw.lock + ".elsewhere")
        subprocess.run(
            ["iptables-legacy-restore", "--noflush"], input=text, text=True, env=env, check=True
        )

    return race


def run_with_racer(fw: Fw, rules: list[str]) -> tuple[str | None, int]:
    """One sync in the namespace whose commit a lock-ignoring writer races ``len(rules)`` times."""
    backend = fw.backend()
    inner = backend.inner  # type: ignore[attr-defined]
    assert isinstance(inner, IptablesBackend)

    def child() -> tuple[str | None, int]:
        io = inner._open()
        assert isinstance(io, LegacyIO)
        io.before_commit = racer(fw, rules)  # type: ignore[assignment]
        result = run_backend(inner, CURRENT, dry_run=False)
        return result.error, io.retries

    return in_netns(fw.ns, child, {"XTABLES_LOCKFILE": fw.lock})


def test_a_racing_commit_is_retried_and_no_rule_is_lost(fw: Fw) -> None:
    error, retries = run_with_racer(fw, ["-s 10.9.0.1/32 -j ACCEPT"])
    assert error is None and retries == 1
    assert fw.save(4).splitlines()[5:7] == [f"-A INPUT {JUMP}", "-A INPUT -s 10.9.0.1/32 -j ACCEPT"]
    assert fw.owned() == CURRENT


def test_a_commit_raced_every_time_gives_up_cleanly(fw: Fw) -> None:
    error, retries = run_with_racer(fw, [f"-s 10.9.0.{i}/32 -j ACCEPT" for i in range(1, 9)])
    assert error == (
        "IPv4: the filter table changed under every one of 5 commits; "
        "something writes it without taking the xtables lock"
    )
    assert retries == 5
    # Nothing of cfallow's landed; every racing rule did.
    assert fw.chain(4, "INPUT") == [f"-s 10.9.0.{i}/32 -j ACCEPT" for i in range(1, 6)]
    assert "CFALLOW" not in fw.save(4)


def test_concurrent_iptables_appends_wait_for_the_lock(fw: Fw) -> None:
    """``iptables -A`` in a loop while cfallow syncs: every one of its rules is there."""
    added: list[str] = []
    errors: list[str] = []

    def admin() -> None:
        for i in range(40):
            src = f"10.8.{i // 200}.{i % 200 + 1}/32"
            try:
                fw.ipt(4, "-A", "INPUT", "-s", src, "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
                added.append(src)
            except AssertionError as exc:
                errors.append(str(exc))

    thread = threading.Thread(target=admin)
    thread.start()
    for i in range(16):
        result = run_backend(fw.backend(), OLD if i % 2 else CURRENT, dry_run=False)
        assert result.error is None, result.error
    thread.join(60)
    assert not errors and len(added) == 40
    rules = fw.chain(4, "INPUT")
    assert rules[0] == JUMP
    assert rules[1:] == [f"-s {src} -p tcp -m tcp --dport 22 -j ACCEPT" for src in added]
    assert sorted(fw.chain(4)) == sorted(f"-s {n} -j ACCEPT" for n in as_strings(OLD) if "." in n)


def test_the_lock_is_waited_for_then_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "xtables.lock")
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(BackendError) as exc, xtables_lock(path, wait=0.3):
            pass
        assert time.monotonic() - started >= 0.3
        assert str(exc.value) == f"another program has held the xtables lock {path} for 0.3 s"
    finally:
        os.close(fd)
    with xtables_lock(path, wait=0.3):  # free again
        pass


def test_an_explicit_variant_the_host_does_not_use_is_warned(fw: Fw) -> None:
    """This host's ``iptables`` is nf_tables; ``variant = "legacy"`` is obeyed, and said so."""
    need_tool("iptables")
    inner = build("iptables", {"variant": "legacy"}, Context(runner=Runner()))
    backend = NetnsBackend(inner, fw.ns, {"XTABLES_LOCKFILE": fw.lock})
    result = run_backend(backend, CURRENT, dry_run=False)
    assert result.error is None and result.plan is not None
    (note,) = [n for n in result.plan.notes if n.startswith("variant")]
    assert note.startswith("variant = legacy, but this host's iptables is nft (iptables v")
    assert note.endswith(
        "(nf_tables)): rules in the legacy tables are neither listed nor enforced there"
    )
    assert fw.owned() == CURRENT  # read with iptables-legacy-save
