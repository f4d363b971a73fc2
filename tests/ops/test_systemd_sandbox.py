"""The service's hardening lets cfallow work: a real ``cfallow sync`` run
under the restrictions cfallow.service declares, emulated.

The iptables (nft and legacy), fail2ban and aws backends run under the real
unit, started by systemd 252 as PID 1, in tests/ops/test_boot.py; this module
keeps the emulation for the backends that test does not boot yet (the web
servers' real-IP lists) and the control run that shows the emulation holds.

systemd is not PID 1 here, so the unit cannot be started. Instead the run is
confined the way the unit's settings confine it, with the kernel features
systemd itself uses, each value read from the unit file:

* ``CapabilityBoundingSet``, ``NoNewPrivileges``: ``setpriv``;
* ``ProtectSystem=strict`` with ``ReadWritePaths`` (plus the state directory
  and a writable ``/tmp``, as ``StateDirectory``/``PrivateTmp`` give), and
  ``ProtectKernelTunables``: read-only bind remounts in a private mount namespace;
* ``MemoryDenyWriteExecute``: the kernel's ``PR_SET_MDWE``;
* ``SystemCallFilter`` and ``RestrictAddressFamilies``: every system call and
  socket family of the run and its children is recorded with ``strace`` and
  checked against the sets ``systemd-analyze syscall-filter`` gives.

All of it inside a test network namespace. This module is also the launcher
(``python test_systemd_sandbox.py SPEC -- ARGV``), run inside ``unshare -m``.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as the sandbox launcher: make tests/support importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest
from support import need, need_root, need_tool, ns_exec, sh
from support.cfdata import CURRENT
from test_systemd import SERVICE, unit, words

from cfallow.backend import load_class
from cfallow.model import as_strings

BIN = Path(sys.executable).parent
_API = ("/proc", "/sys", "/dev")
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def _mount_points() -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4].encode().decode("unicode_escape")
            if not any(point == a or point.startswith(a + "/") for a in _API):
                points.append(point)
    return sorted(set(points), key=len)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _launch(spec: dict[str, Any], argv: list[str]) -> None:
    """Confine this process as ``spec`` says, then exec ``argv`` (inside ``unshare -m``)."""
    for point in _mount_points():
        _mount("-o", "remount,bind,ro", point)
    for path in spec["rw"]:
        if os.path.exists(path):
            _mount("--bind", path, path)
            _mount("-o", "remount,bind,rw", path)
    _mount("--bind", "/proc/sys", "/proc/sys")
    _mount("-o", "remount,bind,ro", "/proc/sys")
    if spec["mdwe"]:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")
    os.umask(int(spec["umask"], 8))
    caps = ",".join(["-all", *(f"+{c.lower().removeprefix('cap_')}" for c in spec["caps"])])
    prefix = ["setpriv", "--bounding-set", caps, "--inh-caps", "-all"]
    if spec["no_new_privs"]:
        prefix.append("--no-new-privs")
    os.execvp("setpriv", [*prefix, "--", *argv])


class Sandbox:
    """What cfallow.service allows, read from the unit file."""

    def __init__(self) -> None:
        s = unit(SERVICE)["Service"]
        self.caps = words(s["CapabilityBoundingSet"])
        self.rw = [p.lstrip("-") for p in words(s["ReadWritePaths"])]
        self.families = set(words(s["RestrictAddressFamilies"]))
        assert s["ProtectSystem"] == ["strict"] and s["PrivateTmp"] == ["yes"]
        self.spec = {
            "caps": self.caps,
            "rw": [*self.rw, "/tmp"],
            "mdwe": s.get("MemoryDenyWriteExecute") == ["yes"],
            "no_new_privs": s.get("NoNewPrivileges") == ["yes"],
            "umask": s.get("UMask", ["0022"])[0],
        }
        self.allowed = _syscall_filter(s["SystemCallFilter"])

    def run(self, ns: str | None, argv: list[str], trace: Path) -> subprocess.CompletedProcess[str]:
        """``argv`` in namespace ``ns`` (None: this one) under the unit's restrictions,
        traced into ``trace``."""
        launcher = [sys.executable, __file__, json.dumps(self.spec), "--", *argv]
        inner = ["unshare", "--mount", "--propagation", "private", *launcher]
        if ns is not None:
            inner = ns_exec(ns, *inner)
        return subprocess.run(
            ["strace", "-f", "-qq", "-o", str(trace), *inner],
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


def need_sandbox_tools() -> None:
    need_root()
    need_tool("systemd-analyze", "strace", "setpriv", "unshare", "mount")
    need(hasattr(ctypes.CDLL(None), "prctl"), "prctl")


if __name__ == "__main__":
    sep = sys.argv.index("--")
    _launch(json.loads(sys.argv[1]), sys.argv[sep + 1 :])


# -- tests ---------------------------------------------------------------------

CFALLOW = str(BIN / "cfallow")


#: Denied with EPERM by the unit and harmless to the program that tries: Go's runtime (caddy)
#: raises RLIMIT_NOFILE at start-up and ignores a failure; the run's success is asserted.
TOLERATED = {"caddy": {"setrlimit"}}


def cfallow_sync(
    sandbox: Sandbox,
    ns: str | None,
    tmp: Path,
    config: str,
    tolerated: frozenset[str] = frozenset(),
) -> str:
    """``cfallow sync`` under the sandbox; asserts success and a clean trace; the log."""
    path = tmp / "config.toml"
    path.write_text(config)
    trace = tmp / "strace.out"
    argv = [CFALLOW, "--config", str(path), "--state-dir", str(tmp / "state"), "sync"]
    proc = sandbox.run(ns, [*argv, "--source", "bundled"], trace)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls, families = sandbox.violations(trace, CFALLOW)
    assert calls - tolerated == set(), f"system calls outside SystemCallFilter: {sorted(calls)}"
    assert families == set(), f"socket families outside RestrictAddressFamilies: {families}"
    return proc.stderr


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    need_sandbox_tools()
    return Sandbox()


def need_backend(name: str) -> None:
    try:
        load_class(name)
    except Exception as exc:
        need(False, f"the cfallow backend plugin {name!r} ({exc})")


def test_the_emulated_sandbox_is_in_force(sandbox: Sandbox, netns: str, tmp_path: Path) -> None:
    """The confinement is real: capabilities, no_new_privs, read-only system, MDWE,
    and the trace check sees a socket family the unit forbids."""
    need_tool("capsh")
    trace = tmp_path / "strace.out"
    status = sandbox.run(netns, ["cat", "/proc/self/status"], trace)
    fields = dict(ln.split(":", 1) for ln in status.stdout.splitlines() if ":" in ln)
    for key in ("CapBnd", "CapEff"):
        decoded = sh(["capsh", f"--decode={fields[key].strip()}"]).strip().split("=", 1)[1]
        assert set(decoded.split(",")) == {c.lower() for c in sandbox.caps}, key
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Umask"].strip() == sandbox.spec["umask"]

    touch = sandbox.run(netns, ["touch", "/etc/cfallow-sandbox-probe"], trace)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr

    python = os.path.realpath(sys._base_executable)  # type: ignore[attr-defined]
    probe = (
        "import mmap, socket\n"
        "try:\n    mmap.mmap(-1, 4096, prot=7)\n    print('wx mapped')\n"
        "except OSError:\n    print('wx refused')\n"
        "socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
    )
    proc = sandbox.run(netns, [python, "-c", probe], trace)
    assert proc.stdout.strip() == "wx refused", proc.stdout + proc.stderr
    _, families = sandbox.violations(trace, python)
    assert families == {"AF_PACKET"}


@pytest.mark.parametrize("server", ["nginx", "apache", "haproxy", "caddy"])
def test_realip_backends_work_under_the_unit_sandbox(
    sandbox: Sandbox, tmp_path: Path, server: str
) -> None:
    """Each web server's test, reload (or runtime socket) from inside the sandbox;
    the private server itself runs outside it, on 127.0.0.1."""
    from support.realip_apache import Apache
    from support.realip_caddy import Caddy
    from support.realip_haproxy import Haproxy
    from support.realip_lab import running, toml_section
    from support.realip_nginx import Nginx

    need_backend(server)
    kinds = {"nginx": Nginx, "apache": Apache, "haproxy": Haproxy, "caddy": Caddy}
    with running(kinds[server](tmp_path / server)) as srv:
        tolerated = frozenset(TOLERATED.get(server, ()))
        cfallow_sync(sandbox, None, tmp_path, toml_section(server, srv.section()), tolerated)
        text = srv.list_path.read_text()
        assert all(c in text for c in as_strings(CURRENT))
        assert srv.get() is not None
