"""firewalld as the host firewall under real systemd 252 as PID 1, two boots of one container.

Boot 1 (a Cloudflare stand-in on the container's loopback): firewalld.service
enabled, the shipped hardened cfallow.service runs the firewalld backend (zone
mode, 443) under its sandbox, then cfallow-restore.service (offline).
Boot 2 (the same upper dir, stand-in gone, of cfallow's units only
cfallow-restore.service enabled): the allowlist comes from firewalld's own
permanent config (cfallow-restore changes nothing; it holds network-pre.target
until firewalld has loaded, which firewalld.service alone does not: it is
active once it owns its bus name, and a first version of this test found the
sets still empty at network-pre.target), in the kernel when
network-pre.target is reached; Cloudflare's v4 and v6 sources reach 443 from a
namespace behind a veth pair, an outsider does not; after ``firewall-cmd
--reload`` and ``systemctl restart firewalld`` the allowlist is back with no
cfallow run. The probe (boot_probe_firewalld.py) records and powers off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.cfdata import CURRENT
from support.nspawn import PROBE_UNIT, SOURCE, UPSTREAM_UNIT, Machine, need_nspawn, probe_unit

from cfallow.model import as_strings

pytestmark = [pytest.mark.root, pytest.mark.xdist_group("boot-firewalld")]

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
CF_ALL = sorted(as_strings(CURRENT))

CONFIG = SOURCE + '\n[backends.firewalld]\nmode = "zone"\nports = [443]\n'

PRENET = """\
import json, sys, time
sys.path.insert(0, "/opt/probe")
import boot_probe_firewalld as p
out = {"allowlist": p.allowlist(), "at_us": time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6}
open("/opt/probe/prenet.json", "w").write(json.dumps(out))
"""

UNITS = {
    PROBE_UNIT: probe_unit(
        "Record what the boot did, then power off", "basic.target firewalld.service"
    ),
    "cfallow-test-prenet.service": """\
[Unit]
Description=The allowlist in the kernel when network-pre.target is reached
DefaultDependencies=no
After=network-pre.target
Before=network.target
[Service]
Type=oneshot
ExecStart=/opt/cfallow/bin/python /opt/probe/prenet.py
[Install]
WantedBy=multi-user.target
""",
}

#: What the host has enabled that these boots do not need (on top of nspawn.MASK).
LEAN = (
    "fail2ban.service",
    "machines.target",
    "remote-fs.target",
    "cron.service",
    "rsyslog.service",
    "ssh.service",
)


def _prepare(m: Machine) -> None:
    m.install_cfallow()
    m.add_upstream()
    m.systemctl("unmask", "firewalld.service")
    m.systemctl("mask", *LEAN)
    m.write("/etc/cfallow/config.toml", CONFIG)
    m.write("/opt/probe/probe.py", (HERE / "boot_probe_firewalld.py").read_text())
    m.write("/opt/probe/boot_probe_firewalld.py", (HERE / "boot_probe_firewalld.py").read_text())
    m.write("/opt/probe/boot_probe.py", (TESTS / "ops" / "boot_probe.py").read_text())
    m.write("/opt/probe/prenet.py", PRENET)
    for name, text in UNITS.items():
        m.write(f"/etc/systemd/system/{name}", text)
    m.systemctl("enable", "firewalld.service", *UNITS)
    m.systemctl("disable", "cfallow.timer", "cfallow-restore.service")


def _reboot(m: Machine) -> None:
    """Cloudflare unreachable; of cfallow's units only the boot-time restore is enabled."""
    m.systemctl("disable", UPSTREAM_UNIT)
    m.systemctl("enable", "cfallow-restore.service")


@pytest.fixture(scope="module")
def boots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    need_nspawn()
    m = Machine(tmp_path_factory.mktemp("nspawn-fwd"))
    out: dict[str, Any] = {}
    with m.mounted():
        _prepare(m)
        for stage in ("first", "second"):
            if stage == "second":
                _reboot(m)
            m.write("/opt/probe/stage", stage)
            out[stage] = m.boot_probe(stage)
    return out


def _clean_run(u: dict[str, str]) -> None:
    assert (u["Result"], u["ExecMainStatus"]) == ("success", "0"), u


def test_hardened_service_runs_the_firewalld_backend(boots: dict[str, Any]) -> None:
    first = boots["first"]
    svc = first["service"]
    assert svc["rc"] == 0, svc["log"]
    _clean_run(svc["unit"])
    assert "reloads once" in svc["log"], svc["log"]
    assert first["ipsets"] == ["cloudflare-v4", "cloudflare-v6"]
    assert "cloudflare\n  sources: ipset:cloudflare-v4 ipset:cloudflare-v6" in first["active"]
    assert first["allowlist"] == CF_ALL
    assert "/etc/firewalld/zones/cloudflare.xml" in first["files"]
    assert first["state_boot"] == first["state_end"] == "running"


def test_restore_unit_runs_the_firewalld_backend_offline(boots: dict[str, Any]) -> None:
    restore = boots["first"]["restore"]
    assert restore["rc"] == 0, restore["log"]
    _clean_run(restore["unit"])
    assert "firewalld: +0 -0 =22" in restore["log"], restore  # offline: nothing to change


@pytest.mark.parametrize("unit", ["cfallow.service", "cfallow-restore.service"])
def test_security_of_the_units_is_at_most_2_5(boots: dict[str, Any], unit: str) -> None:
    score = boots["first"][f"security {unit}"]
    assert isinstance(score, float) and score <= 2.5, score


def test_reboot_the_allowlist_is_in_the_kernel_before_network_pre(boots: dict[str, Any]) -> None:
    second = boots["second"]
    at = second["entered"]
    assert all(at.values()), at
    # firewalld.service (Type=dbus) is active once it owns its bus name, before it has
    # loaded its ruleset; cfallow-restore's first D-Bus call waits until it has.
    order = ("dbus.service", "firewalld.service", "cfallow-restore.service", "network-pre.target")
    assert [at[n] for n in order] == sorted(at[n] for n in order), at
    _clean_run(second["restore"])
    # the allowlist came from firewalld's own permanent config: cfallow changed nothing
    assert "firewalld: +0 -0 =22" in second["restore_log"], second["restore_log"]
    prenet = second["prenet"]
    assert prenet["allowlist"] == CF_ALL, prenet
    assert at["network-pre.target"] <= prenet["at_us"], (at, prenet)
    assert second["state_boot"] == "running"


def test_reboot_cloudflare_reaches_443_and_the_outsider_does_not(boots: dict[str, Any]) -> None:
    assert boots["second"]["traffic_boot"] == {
        "104.16.0.10": True,
        "2400:cb00::10": True,
        "198.51.100.7": False,
        "2001:db8:ff::7": False,
    }


@pytest.mark.parametrize("action", ["reload", "restart"])
def test_reload_and_restart_bring_the_allowlist_back_without_cfallow(
    boots: dict[str, Any], action: str
) -> None:
    second = boots["second"]
    got = second[action]
    assert got["rc"] == 0 and got["state"] == "running", got
    assert got["back_s"] is not None, got  # the probe waits 10 s at most
    assert got["traffic"] == second["traffic_boot"]
    assert second["runs_after"] == second["runs_before"], "cfallow ran"
    assert second["runs_before"]["cfallow.service"] == "0"
