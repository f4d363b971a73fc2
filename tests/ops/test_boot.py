"""The shipped units under real systemd 252 as PID 1, in two boots of one container.

Boot 1 (first boot, a Cloudflare stand-in answering on the container's
loopback): cfallow-restore.service applies the bundled snapshot (no
last-known-good list yet), the timer's first cfallow.service run fetches;
then cfallow.service is started once per backend (iptables legacy, fail2ban
with a real fail2ban.service, aws against moto_server), each under the unit's
own sandbox, and ``systemd-analyze security`` rates the loaded units.

Boot 2 (a reboot of the same upper dir: state kept, a fresh kernel ruleset,
the stand-in gone, so Cloudflare is unreachable): the chain is in place before
network-pre.target (journal order, and a probe unit ordered right after
network-pre.target), a client namespace the probe creates behind a veth pair
reaches 443 from a Cloudflare address and not from outside (lockdown);
``systemctl reload nftables`` and ``systemctl restart netfilter-persistent``
put the rules back within 10 s, while loading the same files by hand (not
through systemd) is shown to wipe them.

The probe (boot_probe.py) records into /opt/probe and powers the container off.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from support.cfdata import CURRENT
from support.nspawn import (
    PROBE_UNIT,
    SOURCE,
    UPSTREAM_UNIT,
    Machine,
    need_nspawn,
    probe_unit,
)

from cfallow.model import as_strings

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures" / "cloudflare"
SUPPORT = HERE.parent / "support"

CONFIG = (
    SOURCE
    + """
[backends.iptables]
variant = "nft"
mode = "lockdown"
ports = [443]
"""
)

UNITS = {
    PROBE_UNIT: probe_unit("Record what the boot did, then power off"),
    "cfallow-test-prenet.service": """\
[Unit]
Description=The ruleset when network-pre.target is reached
DefaultDependencies=no
After=network-pre.target
Before=network.target
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'iptables-save > /opt/probe/prenet.txt'
ExecStart=/bin/sh -c 'ip6tables-save >> /opt/probe/prenet.txt'
[Install]
WantedBy=multi-user.target
""",
}

# The admin's saved rulesets: Debian's default nftables.conf starts with
# "flush ruleset"; netfilter-persistent restores whole filter tables.
RULES_V4 = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n"
RULES_V6 = RULES_V4
JAIL = "[cftest]\nenabled = true\nfilter = sshd\nlogpath = /var/log/cftest.log\nbackend = polling\n"


def _prepare(m: Machine) -> None:
    m.install_cfallow()
    m.add_upstream()
    m.unpack("netfilter-persistent", "iptables-persistent")
    m.write("/etc/cfallow/config.toml", CONFIG)
    m.write("/opt/probe/probe.py", (HERE / "boot_probe.py").read_text())
    m.write("/opt/probe/moto_server.py", (SUPPORT / "aws" / "moto_server.py").read_text())
    m.write("/etc/iptables/rules.v4", RULES_V4)
    m.write("/etc/iptables/rules.v6", RULES_V6)
    m.write("/etc/fail2ban/jail.d/defaults-debian.conf", "[sshd]\nenabled = false\n")
    m.write("/etc/fail2ban/jail.d/cftest.conf", JAIL)
    m.write("/var/log/cftest.log", "")
    m.write(
        "/root/.aws/credentials", "[default]\naws_access_key_id = t\naws_secret_access_key = t\n"
    )
    for name, text in UNITS.items():
        m.write(f"/etc/systemd/system/{name}", text)
    m.systemctl("disable", "fail2ban.service")
    m.systemctl("enable", "nftables.service", "netfilter-persistent.service")
    m.systemctl("enable", "cfallow-restore.service", "cfallow.timer", *UNITS)


@pytest.fixture(scope="module")
def boots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    need_nspawn()
    m = Machine(tmp_path_factory.mktemp("nspawn"))
    out: dict[str, Any] = {}
    with m.mounted():
        _prepare(m)
        for stage in ("first", "second"):
            if stage == "second":  # Cloudflare unreachable from now on
                m.systemctl("disable", UPSTREAM_UNIT)
                out["lkg_kept"] = m.path("/var/lib/cfallow/last-known-good.json").exists()
            m.write("/opt/probe/stage", stage)
            out[stage] = m.boot_probe(stage)
    return out


def _clean_run(u: dict[str, str]) -> None:
    assert (u["Result"], u["ExecMainStatus"]) == ("success", "0"), u


CF_ALL = set(as_strings(CURRENT))


# -- boot 1 --------------------------------------------------------------------


def test_first_boot_timer_active_and_the_timer_run_fetched(boots: dict[str, Any]) -> None:
    first = boots["first"]
    assert first["timer_active"] == "active"
    _clean_run(first["timer_run"])
    assert first["lkg"]["etag"] == "38f79d050aa027e3be3865e495dcc9bc"
    assert set(first["owned_nft"]) == CF_ALL
    assert "source: live http://127.0.0.1:8080/client/v4/ips" in first["timer_run_log"]


def test_first_boot_restore_unit_used_the_bundled_snapshot(boots: dict[str, Any]) -> None:
    first = boots["first"]
    assert first["restore"]["ActiveState"] == "active", first["restore"]
    _clean_run(first["restore"])
    assert "no last-known-good list yet; using the bundled snapshot" in first["restore_log"]


@pytest.mark.parametrize("unit", ["cfallow.service", "cfallow-restore.service"])
def test_security_of_the_loaded_units_is_at_most_2_5(boots: dict[str, Any], unit: str) -> None:
    score = boots["first"][f"security {unit}"]
    assert isinstance(score, float) and score <= 2.5, score


def test_hardened_service_runs_iptables_legacy(boots: dict[str, Any]) -> None:
    legacy = boots["first"]["legacy"]
    assert legacy["rc"] == 0, legacy["log"]
    _clean_run(legacy["unit"])
    assert set(legacy["owned"]) == CF_ALL


def _cidr_lines(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if re.match(r"^ *[-+] [0-9a-f.:]+/[0-9]+$", ln)]


@pytest.mark.parametrize("run", ["restore", "legacy", "fail2ban"])
def test_a_changing_runs_journal_has_one_line_per_backend(boots: dict[str, Any], run: str) -> None:
    """The first boot's restore (the snapshot into an empty ruleset) and the service
    runs that write a new target each add 22 entries: the journal keeps the one summary
    line of the backend, not 22 ``+ CIDR`` lines (those need ``-v``)."""
    first = boots["first"]
    log = first["restore_log"] if run == "restore" else first[run]["log"]
    log = log.split("Starting cfallow.service")[-1]  # this run (a timer run may precede)
    name = "fail2ban" if run == "fail2ban" else "iptables"
    lines = [ln for ln in log.splitlines() if ln.startswith(f"{name}:")]
    assert lines == [f"{name}: +22 -0 =0 changed"], log
    assert _cidr_lines(log) == [], log


def test_hardened_service_runs_fail2ban(boots: dict[str, Any]) -> None:
    f2b = boots["first"]["fail2ban"]
    assert f2b["rc"] == 0, f2b["log"]
    _clean_run(f2b["unit"])
    assert "[cftest]" in f2b["dropin"]
    live = set(re.findall(r"[0-9a-f:.]+/\d+", f2b["live"]))
    assert live >= CF_ALL, f2b["live"]


def test_hardened_service_runs_aws_against_moto(boots: dict[str, Any]) -> None:
    aws = boots["first"]["aws"]
    assert aws["rc"] == 0, aws["log"]
    _clean_run(aws["unit"])
    assert set(aws["cidrs"]) == CF_ALL


# -- boot 2: the reboot, Cloudflare unreachable ----------------------------------


def _mono(line: str) -> float:
    return float(line.split("]", 1)[0].strip("[ "))


def test_reboot_keeps_state_and_applies_it_before_network_pre(boots: dict[str, Any]) -> None:
    second = boots["second"]
    assert boots["lkg_kept"]
    _clean_run(second["restore"])
    assert "no last-known-good" not in second["restore_log"]
    # systemd's own record of when each unit became active (CLOCK_MONOTONIC, µs).
    at = second["entered"]
    assert all(at.values()), at
    loaders = max(at["nftables.service"], at["netfilter-persistent.service"])
    assert loaders <= at["cfallow-restore.service"] <= at["network-pre.target"], at
    journal = second["journal"]
    done = [_mono(ln) for ln in journal if "Finished cfallow-restore.service" in ln]
    pre = [_mono(ln) for ln in journal if "Reached target network-pre.target" in ln]
    assert done and pre and done[0] <= pre[0], journal
    # What a packet meets once network-pre.target is reached: the whole allowlist.
    owned = set(re.findall(r"^-A CFALLOW -s (\S+)", second["prenet"], re.M))
    assert owned == CF_ALL, second["prenet"]


def test_reboot_lockdown_admits_cloudflare_and_refuses_the_rest(boots: dict[str, Any]) -> None:
    assert boots["second"]["traffic_boot"] == {
        "104.16.0.10": True,
        "2400:cb00::10": True,
        "198.51.100.7": False,
        "2001:db8:ff::7": False,
    }


def test_nftables_reload_puts_the_rules_back_within_10_s(boots: dict[str, Any]) -> None:
    second = boots["second"]
    assert second["after_nft_by_hand"] == []  # flush ruleset wipes them
    assert second["nftables_reload_back_s"] is not None
    assert second["traffic_nftables_reload"] == second["traffic_boot"]


def test_netfilter_persistent_restart_puts_the_rules_back_within_10_s(
    boots: dict[str, Any],
) -> None:
    second = boots["second"]
    assert second["after_persistent_by_hand"] == []
    assert second["persistent_restart_back_s"] is not None
    assert second["traffic_persistent_restart"] == second["traffic_boot"]


def test_timer_run_with_cloudflare_unreachable_reconciles_without_fetching(
    boots: dict[str, Any],
) -> None:
    second = boots["second"]
    _clean_run(second["timer_run"])
    assert "source: last-known-good" in second["timer_run_log"], second["timer_run_log"]
