"""The legacy writer under concurrency: the xtables lock, EAGAIN retries, no lost rule.

All of it runs inside a test namespace (the backend in a forked child that
entered it), with an xtables lock file private to the test. A racing write
lands between the restore's own read of the table and its commit: the restore
reads the table at ``*filter`` and commits at ``COMMIT``, so the test's runner
feeds it everything but ``COMMIT``, waits until it blocks reading stdin, lets
a writer that ignores the lock add a rule, then sends ``COMMIT``. The kernel
refuses that commit (EAGAIN) exactly as it would on a real race.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cfallow.backends.iptables.backend import IptablesBackend
from cfallow.backends.iptables.legacy import xtables_lock
from support import namespace, need_tool, ns_exec, sh
from support.cfdata import CURRENT, OLD
from support.iptables.helpers import JUMPS, Fw
from support.iptables.netns import Counted, NetnsBackend, in_netns

from cfallow.backend import Context, build
from cfallow.engine import run_backend
from cfallow.errors import BackendError, CommandFailed
from cfallow.model import as_strings
from cfallow.runner import Completed, Runner

pytestmark = pytest.mark.root


def _waiting_on_stdin(proc: subprocess.Popen[str]) -> bool:
    """Has ``proc`` read all its input so far and blocked in ``read(0, ...)``?"""
    assert proc.stdin is not None
    left = struct.unpack("i", fcntl.ioctl(proc.stdin, termios.FIONREAD, b"\0" * 4))[0]
    with open(f"/proc/{proc.pid}/syscall") as f:
        call = f.read().split()
    return left == 0 and call[:2] == ["0", "0x0"]  # x86-64 read(2) on fd 0


@dataclass
class RacingRunner(Runner):
    """The real runner, but a ``*-restore`` batch is held before ``COMMIT`` while ``race`` runs."""

    race: Callable[[], None] = lambda: None
    held: int = 0

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        if not argv[0].endswith("-restore") or not input or not input.endswith("COMMIT\n"):
            return super().run(argv, input=input, check=check, timeout=timeout, env=env)
        self.calls.append(tuple(argv))
        proc = subprocess.Popen(
            [*self.prefix, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "LC_ALL": "C", **(self.env or {}), **(env or {})},
        )
        assert proc.stdin is not None
        proc.stdin.write(input[: -len("COMMIT\n")])
        proc.stdin.flush()
        deadline = time.monotonic() + 10
        while not (
            _waiting_on_stdin(proc) and time.sleep(0.02) is None and _waiting_on_stdin(proc)
        ):
            assert time.monotonic() < deadline, "the restore never waited for COMMIT"
            time.sleep(0.005)
        self.held += 1
        self.race()
        out, err = proc.communicate("COMMIT\n", timeout=timeout)
        if check and proc.returncode != 0:
            raise CommandFailed(list(argv), proc.returncode, err or out)
        return Completed(tuple(argv), proc.returncode, out, err)


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
    runner = RacingRunner(env=fw.runner.env, race=racer(fw, rules))  # type: ignore[arg-type]
    inner = build("iptables", {}, Context(runner=runner, state_dir=fw.tmp))
    assert isinstance(inner, IptablesBackend)

    def child() -> tuple[str | None, int]:
        counted = Counted(inner)
        result = run_backend(inner, CURRENT, dry_run=False)
        return result.error, counted.retries

    return in_netns(fw.ns, child, {"XTABLES_LOCKFILE": fw.lock})


def test_a_racing_commit_is_retried_and_no_rule_is_lost(fw: Fw) -> None:
    error, retries = run_with_racer(fw, ["-s 10.9.0.1/32 -j ACCEPT"])
    assert error is None and retries == 1
    assert fw.save(4).splitlines()[5:9] == [
        *(f"-A INPUT {j}" for j in JUMPS),
        "-A INPUT -s 10.9.0.1/32 -j ACCEPT",
    ]
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
    assert tuple(rules[:3]) == JUMPS
    assert rules[3:] == [f"-s {src} -p tcp -m tcp --dport 22 -j ACCEPT" for src in added]
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
    inner = build("iptables", {"variant": "legacy"}, Context(runner=Runner(), state_dir=fw.tmp))
    backend = NetnsBackend(inner, fw.ns, {"XTABLES_LOCKFILE": fw.lock})
    result = run_backend(backend, CURRENT, dry_run=False)
    assert result.error is None and result.plan is not None
    (note,) = [n for n in result.plan.notes if n.startswith("variant")]
    assert note.startswith("variant = legacy, but this host's iptables is nft (iptables v")
    assert note.endswith(
        "(nf_tables)): rules in the legacy tables are enforced (their DROPs drop; their "
        "ACCEPTs cannot undo a DROP in the nft tables) but the admin's iptables command "
        "does not list them"
    )
    assert fw.owned() == CURRENT  # read with iptables-legacy-save
    # ... and the admin's usual command does not show them (that they are enforced:
    # test_iptables_traffic, with traffic).
    assert "CFALLOW" not in sh(ns_exec(fw.ns, "iptables-nft-save")) + sh(
        ns_exec(fw.ns, "ip6tables-nft-save")
    )
