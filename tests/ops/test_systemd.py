"""systemd/cfallow.service and cfallow.timer, checked by systemd's own tools.

``systemd-analyze verify`` needs the ``ExecStart=`` binary where the unit
says (/usr/local/bin/cfallow). If nothing is installed there, the test puts a
symlink to this checkout's console script there and removes it afterwards;
an existing install is used as it is and left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from support import need, need_root, need_tool

UNITS = Path(__file__).resolve().parents[2] / "systemd"
SERVICE = UNITS / "cfallow.service"
RESTORE = UNITS / "cfallow-restore.service"
TIMER = UNITS / "cfallow.timer"
EXEC = Path("/usr/local/bin/cfallow")
MAX_EXPOSURE = 2.5


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (keys may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def words(values: list[str]) -> list[str]:
    return [w for v in values for w in v.split()]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TZ": "UTC", "SYSTEMD_COLORS": "0"}
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, env=env)


@contextlib.contextmanager
def cfallow_installed() -> Iterator[None]:
    """/usr/local/bin/cfallow exists for the duration (see module docstring)."""
    if EXEC.exists():
        yield
        return
    need_root()
    ours = Path(sys.executable).parent / "cfallow"
    need(os.access(ours, os.X_OK), f"the cfallow console script at {ours}")
    EXEC.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(ours, EXEC)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            if EXEC.is_symlink() and os.readlink(EXEC) == str(ours):
                EXEC.unlink()


def test_units_pass_systemd_analyze_verify() -> None:
    need_tool("systemd-analyze")
    with cfallow_installed():
        proc = run("systemd-analyze", "verify", "--man=no", str(SERVICE), str(RESTORE), str(TIMER))
    # verify exits 0 on warnings such as an unknown key: any output is a finding.
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout + proc.stderr == ""


@pytest.mark.parametrize("path", [SERVICE, RESTORE], ids=lambda p: p.name)
def test_service_exposure_is_at_most_2_5(path: Path) -> None:
    need_tool("systemd-analyze")
    proc = run("systemd-analyze", "security", "--offline=true", "--no-pager", str(path))
    m = re.search(rf"Overall exposure level for {re.escape(path.name)}: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, proc.stdout
    # The privileges an allowlist change needs stay; the dangerous ones are gone.
    # cfallow.service keeps CAP_DAC_OVERRIDE for nginx -T (the logs are www-data's);
    # the restore unit runs no web server's test.
    gone = ["CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_PTRACE", "CAP_SET(UID|GID|PCAP)"]
    gone += ["CAP_(CHOWN|FSETID|SETFCAP)"]
    if path == RESTORE:
        gone.append("CAP_(DAC_*|FOWNER|IPC_OWNER)")
    for check in gone:
        assert re.search(rf"✓ CapabilityBoundingSet=~{re.escape(check)}\s", proc.stdout), check


def test_service_runs_sync_after_the_saved_rulesets_with_the_issue_hardening() -> None:
    svc = unit(SERVICE)
    u, s = svc["Unit"], svc["Service"]
    assert s["Type"] == ["oneshot"]
    assert s["ExecStart"] == [f"{EXEC} sync --scheduled"]
    assert "network-online.target" in words(u["Wants"])
    after = set(words(u["After"]))
    assert {"network-online.target", "nftables.service", "netfilter-persistent.service"} <= after
    assert "cfallow-restore.service" in after
    assert {"fail2ban.service", "docker.service"} <= after
    # nginx -T under a real nginx: its www-data logs, its ports (tests/ops/test_boot_realip.py)
    assert set(words(s["CapabilityBoundingSet"])) == {
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_DAC_OVERRIDE",
        "CAP_NET_BIND_SERVICE",
    }
    assert s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"]
    rw = set(words(s["ReadWritePaths"]))
    assert {"-/run/xtables.lock", "-/run/fail2ban", "-/etc/fail2ban/jail.d"} <= rw
    # cfallow's host-wide firewall lock: made outside the sandbox, writable inside
    assert "-/run/cfallow.lock" in rw
    assert "/run/cfallow.lock" in words(s["ExecStartPre"])
    assert s["StateDirectory"] == ["cfallow"]
    assert set(words(s["RestrictAddressFamilies"])) == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    }
    assert s["SystemCallFilter"][0] == "@system-service"


def test_restore_unit_runs_offline_after_the_loaders_and_before_network_pre() -> None:
    r = unit(RESTORE)
    u, s = r["Unit"], r["Service"]
    loaders = {
        "nftables.service",
        "netfilter-persistent.service",
        "firewalld.service",
        "ufw.service",
    }
    assert u["DefaultDependencies"] == ["no"]
    assert loaders <= set(words(u["After"]))
    assert "network-pre.target" in words(u["Before"]) and "network-pre.target" in words(u["Wants"])
    assert not {"network.target", "network-online.target"} & set(words(u.get("After", [])))
    assert loaders <= set(words(u["PartOf"]))
    assert {"nftables.service", "firewalld.service"} <= set(words(u["ReloadPropagatedFrom"]))
    assert s["ExecStart"] == s["ExecReload"] == [f"{EXEC} sync --offline"]
    assert s["RemainAfterExit"] == ["yes"]
    assert set(words(s["RestrictAddressFamilies"])) == {"AF_UNIX", "AF_NETLINK"}
    assert s["IPAddressDeny"] == ["any"]


def test_timer_repairs_drift_within_5_minutes_at_a_random_delay_each_run() -> None:
    need_tool("systemd-analyze")
    t = unit(TIMER)["Timer"]
    # Not derived from the machine-id: clones of one image would run in the same second.
    assert t["FixedRandomDelay"] == ["no"]
    assert unit(TIMER)["Install"]["WantedBy"] == ["timers.target"]
    spans = {}
    for key in ("OnBootSec", "RandomizedDelaySec", "AccuracySec"):
        proc = run("systemd-analyze", "timespan", t[key][0])
        assert proc.returncode == 0, proc.stderr
        spans[key] = int(re.search(r"μs: (\d+)", proc.stdout).group(1)) / 1e6  # type: ignore[union-attr]
    (calendar,) = t["OnCalendar"]
    # systemd's own reading of the expression: runs 4 minutes apart.
    proc = run("systemd-analyze", "calendar", "--iterations=5", calendar)
    assert proc.returncode == 0, proc.stderr
    stamps = re.findall(r"(?:Next elapse|Iter\. #\d+): \S+ (\S+ \S+) UTC", proc.stdout)
    times = [datetime.strptime(s, "%Y-%m-%d %H:%M:%S") for s in stamps]
    assert len(times) == 5, proc.stdout
    gaps = {(b - a).total_seconds() for a, b in zip(times, times[1:])}
    assert gaps == {240}, proc.stdout
    # One run on time, the next as late as the delay allows, plus accuracy: < 5 minutes.
    assert max(gaps) + spans["RandomizedDelaySec"] + spans["AccuracySec"] < 300
    assert spans["RandomizedDelaySec"] < 240 and spans["OnBootSec"] < 60


#: ``ReadWritePaths=`` no built-in backend names in ``write_paths()``, and why the units grant them.
NOT_A_BACKENDS = {
    Path("/run/cfallow.lock"): "cfallow's own host-wide firewall lock (cfallow.hostlock)",
    Path("/var/lib/prometheus/node-exporter"): "metrics_file's documented directory (Debian's)",
    Path("/var/log/nginx"): "the logs nginx opens while `nginx -T` tests its configuration",
}
#: The smallest section of a built-in backend that has a required key.
REQUIRED = {
    "aws": {"security_group_ids": ["sg-0123456789abcdef0"]},
    "modsecurity": {"server": "nginx"},
    "aws-nacl": {"network_acl_ids": ["acl-0123456789abcdef0"]},
    "aws-wafv2": {},
}


def _builtin_write_paths() -> dict[Path, str]:
    """Every built-in backend's ``write_paths()`` with its defaults (symlinks resolved, as
    systemd resolves ``ReadWritePaths=``), and the backend that names it."""
    from cfallow.backend import GROUP, Context, build
    from cfallow.plugins import entry_points

    ctx = Context(firewall_lock=Path("/run/cfallow.lock"))
    found: dict[Path, str] = {}
    for ep in entry_points(GROUP):
        if ep.value.startswith("cfallow.backends."):
            for p in build(ep.name, dict(REQUIRED.get(ep.name, {})), ctx).write_paths():
                found.setdefault(Path(os.path.realpath(p)), ep.name)
    return found


@pytest.mark.parametrize("path", [SERVICE, RESTORE], ids=lambda p: p.name)
def test_the_units_grant_what_the_built_in_backends_write_and_nothing_else(path: Path) -> None:
    """The unit's list is checked against the backends' own ``write_paths()``: a backend
    that writes somewhere new fails here until the units grant it; a grant no backend
    (nor the core) needs any more fails too."""
    grants = [Path(w.lstrip("-")) for w in words(unit(path)["Service"]["ReadWritePaths"])]
    wanted = _builtin_write_paths()
    assert "nftables" in wanted.values() and "fail2ban" in wanted.values()  # not vacuous
    missing = {p: b for p, b in wanted.items() if not any(g == p or g in p.parents for g in grants)}
    assert missing == {}, f"{path.name} does not grant: {missing}"
    stale = set(grants) - set(wanted) - set(NOT_A_BACKENDS)
    assert stale == set(), f"{path.name} grants what nothing writes: {sorted(stale)}"
