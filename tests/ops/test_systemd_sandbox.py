"""What the real-IP runs try that cfallow.service would deny silently: an strace inventory.

Whether the backends work under the unit's sandbox is shown under real
systemd (tests/ops/test_boot_realip.py: nginx, Apache, HAProxy and Caddy as
their Debian services, cfallow.service started by systemd 252 as PID 1; the
iptables, fail2ban and aws backends in tests/ops/test_boot.py). That proof
is behaviour: the run succeeded and the server logs the right address. What
it cannot show is a call the unit denies with ``SystemCallErrorNumber=EPERM``
and the program then tolerates (Go's runtime in caddy raises RLIMIT_NOFILE
and ignores the refusal). This module keeps that inventory: ``cfallow sync``
for each server, with the server's own test and reload, under ``strace -f``,
every system call and socket family of the run and its children checked
against the sets ``systemd-analyze syscall-filter`` gives for the unit's
``SystemCallFilter=`` and ``RestrictAddressFamilies=`` (read from the unit
file). The run itself is not confined here (the earlier emulation of the
sandbox with setpriv and bind mounts is retired: systemd enforces the real one).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import need, need_root, need_tool
from support.cfdata import CURRENT
from test_systemd import SERVICE, unit, words

from cfallow.backend import load_class
from cfallow.model import as_strings

BIN = Path(sys.executable).parent


class Sandbox:
    """What cfallow.service allows, read from the unit file."""

    def __init__(self) -> None:
        s = unit(SERVICE)["Service"]
        self.families = set(words(s["RestrictAddressFamilies"]))
        self.allowed = _syscall_filter(s["SystemCallFilter"])

    def run(self, argv: list[str], trace: Path) -> subprocess.CompletedProcess[str]:
        """``argv`` traced into ``trace``."""
        return subprocess.run(
            ["strace", "-f", "-qq", "-o", str(trace), *argv],
            capture_output=True,
            text=True,
            check=False,
        )

    def violations(self, trace: Path, program: str) -> tuple[set[str], set[str]]:
        """System calls and socket families after ``program`` was exec'd that the unit forbids."""
        calls, families = _traced(trace.read_text(), program)
        return calls - self.allowed, families - self.families


def _groups() -> dict[str, list[str]]:
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def _expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= _expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def _syscall_filter(values: list[str]) -> set[str]:
    """systemd's reading of SystemCallFilter= lines: an allow list, then ``~`` removals."""
    groups = _groups()
    allowed: set[str] = set()
    for value in values:
        if value.startswith("~"):
            allowed -= _expand(value[1:].split(), groups)
        else:
            allowed |= _expand(value.split(), groups)
    return allowed


_LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]")


def _traced(text: str, program: str) -> tuple[set[str], set[str]]:
    """System calls and socket families from strace -f output, from ``program``'s exec on."""
    calls: set[str] = set()
    families: set[str] = set()
    started = False
    for line in text.splitlines():
        if not started:
            started = f'execve("{program}"' in line and "= 0" in line
            continue
        m = _LINE.match(line)
        if not m or m.group(2) in {"exit", "resumed"}:
            continue
        calls.add(m.group(2))
        fam = re.search(r"\bsocket\((AF_[A-Z0-9]+)", line)
        if fam:
            families.add(fam.group(1))
    assert started, f"{program} was never executed"
    return calls, families


def need_trace_tools() -> None:
    need_root()
    need_tool("systemd-analyze", "strace")


# -- tests ---------------------------------------------------------------------

CFALLOW = str(BIN / "cfallow")


#: Denied with EPERM by the unit and harmless to the program that tries: Go's runtime (caddy)
#: raises RLIMIT_NOFILE at start-up and ignores a failure (the real boot shows caddy's run
#: succeeding under the unit).
TOLERATED = {"caddy": {"setrlimit"}}


def cfallow_sync(
    sandbox: Sandbox, tmp: Path, config: str, tolerated: frozenset[str] = frozenset()
) -> str:
    """``cfallow sync`` traced; asserts success and a clean trace; the log."""
    path = tmp / "config.toml"
    path.write_text(config)
    trace = tmp / "strace.out"
    argv = [CFALLOW, "--config", str(path), "--state-dir", str(tmp / "state"), "sync"]
    proc = sandbox.run([*argv, "--source", "bundled"], trace)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls, families = sandbox.violations(trace, CFALLOW)
    assert calls - tolerated == set(), f"system calls outside SystemCallFilter: {sorted(calls)}"
    assert families == set(), f"socket families outside RestrictAddressFamilies: {families}"
    return proc.stderr


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    need_trace_tools()
    return Sandbox()


def need_backend(name: str) -> None:
    try:
        load_class(name)
    except Exception as exc:
        need(False, f"the cfallow backend plugin {name!r} ({exc})")


def test_the_trace_check_sees_what_the_unit_forbids(sandbox: Sandbox, tmp_path: Path) -> None:
    """The control: a socket family and a system call outside the unit's sets are found."""
    trace = tmp_path / "strace.out"
    probe = (
        "import os, socket\n"
        "try:\n    socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\nexcept OSError:\n    pass\n"
        "try:\n    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))\n"
        "except OSError:\n    pass\n"
    )
    python = str(Path(sys._base_executable).resolve())  # type: ignore[attr-defined]
    proc = sandbox.run([python, "-c", probe], trace)
    assert proc.returncode == 0, proc.stderr
    calls, families = sandbox.violations(trace, python)
    assert families == {"AF_PACKET"}
    assert "sched_setscheduler" in calls


@pytest.mark.parametrize("server", ["nginx", "apache", "haproxy", "caddy"])
def test_realip_runs_make_no_call_the_unit_denies(
    sandbox: Sandbox, tmp_path: Path, server: str
) -> None:
    """Each web server's test and reload (or runtime socket), traced; the private
    server itself runs untraced, on 127.0.0.1."""
    from support.realip.apache import Apache
    from support.realip.caddy import Caddy
    from support.realip.haproxy import Haproxy
    from support.realip.lab import running, toml_section
    from support.realip.nginx import Nginx

    need_backend(server)
    kinds = {"nginx": Nginx, "apache": Apache, "haproxy": Haproxy, "caddy": Caddy}
    with running(kinds[server](tmp_path / server)) as srv:
        tolerated = frozenset(TOLERATED.get(server, ()))
        cfallow_sync(sandbox, tmp_path, toml_section(server, srv.section()), tolerated)
        text = srv.list_path.read_text()
        assert all(c in text for c in as_strings(CURRENT))
        assert srv.get() is not None
