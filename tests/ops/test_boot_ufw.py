"""ufw as the admin's firewall, cfallow's iptables backend beside it, under real systemd 252.

One boot (systemd-nspawn, overlay of /, --private-network): ufw.service
enabled with the overlay's /etc/ufw (default deny incoming, allow 22/tcp),
cfallow-restore.service after it (iptables, variant nft, port 443), and
cfallow's ufw hook (contrib/ufw/after.init) installed as /etc/ufw/after.init.
The probe (boot_probe_ufw.py) runs ``ufw reload``, ``systemctl restart ufw``
and ``ufw disable`` + ``ufw enable`` in five phases:

* ufw's defaults (``MANAGE_BUILTINS=no``), the hook switched off, allow
  mode: ufw only flushes and refills its own chains and appends its jumps
  once; cfallow's chain and its jump (first in INPUT) are never touched;
* ``MANAGE_BUILTINS=yes``, the hook off (the control): ``ufw reload`` flushes
  INPUT and deletes every chain, cfallow's stays gone; ``systemctl restart ufw``
  brings it back through ``PartOf=ufw.service`` alone;
* ``MANAGE_BUILTINS=yes``, the hook on, allow and lockdown: all three put
  cfallow back (the hook before the command returns).

After each action traffic from a client namespace behind a veth pair: a
Cloudflare source reaches 443 (in allow mode only through cfallow's accept,
ufw denies 443), an outside one does not; with ufw disabled, lockdown still
refuses the outsider. No cfallow.timer here: nothing else repairs the chain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.nspawn import PROBE_UNIT, REPO, Machine, need_nspawn, probe_unit

HERE = Path(__file__).resolve().parent
pytestmark = [pytest.mark.xdist_group("boot-ufw"), pytest.mark.root, pytest.mark.slow]

V4 = (
    "### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in\n"
    "-A ufw-user-input -p tcp --dport 22 -j ACCEPT\n"
)
V6 = "### tuple ### allow tcp 22 ::/0 any ::/0 in\n-A ufw6-user-input -p tcp --dport 22 -j ACCEPT\n"
ACTIONS = ("ufw reload", "systemctl restart ufw", "ufw disable; ufw enable")
CF, OUTSIDE = ("104.16.0.10", "2400:cb00::10"), ("198.51.100.7", "2001:db8:ff::7")
ALLOWED = {**dict.fromkeys(CF, True), **dict.fromkeys(OUTSIDE, False)}


def _prepare(m: Machine) -> None:
    m.install_cfallow()
    m.systemctl("unmask", "ufw.service")
    m.write("/etc/cfallow/config.toml", '[backends.iptables]\nvariant = "nft"\nports = [443]\n')
    m.write("/etc/ufw/ufw.conf", "ENABLED=yes\nLOGLEVEL=off\n")
    for name, rules in (("user.rules", V4), ("user6.rules", V6)):
        stock = Path("/usr/share/ufw", name).read_text()
        m.write(f"/etc/ufw/{name}", stock.replace("### RULES ###\n", "### RULES ###\n" + rules))
    m.write("/etc/ufw/after.init", (REPO / "contrib/ufw/after.init").read_text(), 0o644)
    m.write("/opt/probe/boot_probe.py", (HERE / "boot_probe.py").read_text())
    m.write("/opt/probe/probe.py", (HERE / "boot_probe_ufw.py").read_text())
    probe = probe_unit("Run ufw's reload paths, record, power off")
    m.write(f"/etc/systemd/system/{PROBE_UNIT}", probe)
    m.systemctl("disable", "fail2ban.service")
    m.systemctl("enable", "ufw.service", "cfallow-restore.service", PROBE_UNIT)


@pytest.fixture(scope="module")
def ufw(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    need_nspawn()
    m = Machine(tmp_path_factory.mktemp("nspawn-ufw"))
    with m.mounted():
        _prepare(m)
        return m.boot_probe("ufw")


def _first_is_cfallow(snap: dict[str, Any]) -> bool:
    return all(snap[f"input{f}"][:1] and snap[f"input{f}"][0].endswith("-j CFALLOW") for f in "46")


def _ufw_jumps(snap: dict[str, Any], fam: str) -> list[str]:
    return [r for r in snap[f"input{fam}"] if "-j ufw" in r]


def test_ufw_runs_the_admins_rules_and_cfallow_goes_first(ufw: dict[str, Any]) -> None:
    assert "ActiveState=active" in ufw["ufw_unit"], ufw["ufw_unit"]
    assert "Default: deny (incoming)" in ufw["ufw_status"], ufw["ufw_status"]
    assert "22/tcp" in ufw["ufw_status"]
    start = ufw["default, no hook, allow"]["start"]
    assert _first_is_cfallow(start), start
    assert _ufw_jumps(start, "4") and _ufw_jumps(start, "6"), start
    assert (start["policy4"], start["policy6"]) == ("DROP", "DROP")
    assert ufw["default, no hook, allow"]["traffic_start"] == ALLOWED


@pytest.mark.parametrize("action", ACTIONS)
def test_default_ufw_leaves_cfallow_alone(ufw: dict[str, Any], action: str) -> None:
    """MANAGE_BUILTINS=no (ufw's default), no hook: nothing to put back, traffic unchanged."""
    ph = ufw["default, no hook, allow"]
    rec = ph[action]
    assert rec["after"]["owned4"] == ph["start"]["owned4"] != []
    assert rec["after"]["owned6"] == ph["start"]["owned6"] != []
    assert _first_is_cfallow(rec["after"]), rec["after"]
    assert rec["after"]["input4"] == ph["start"]["input4"]
    assert rec["traffic"] == ALLOWED


def test_disabled_ufw_lockdown_still_refuses_outsiders(ufw: dict[str, Any]) -> None:
    """Between ``ufw disable`` and ``ufw enable`` INPUT's policy is ACCEPT: allow mode
    restricts nothing (ufw is off), lockdown still admits only Cloudflare."""
    for phase in ("default, no hook, allow", "builtins, hook, allow"):
        allow = ufw[phase]["ufw disable; ufw enable"]
        assert allow["between"]["policy4"] == "ACCEPT"
        assert allow["traffic_between"] == dict.fromkeys(ALLOWED, True)
    lockdown = ufw["builtins, hook, lockdown"]["ufw disable; ufw enable"]
    assert lockdown["between"]["policy4"] == "ACCEPT"
    assert lockdown["traffic_between"] == ALLOWED


def test_manage_builtins_reload_wipes_cfallow_without_the_hook(ufw: dict[str, Any]) -> None:
    """The control: ufw's command line is invisible to systemd; with MANAGE_BUILTINS=yes
    ``ufw reload`` deletes cfallow's chain and nothing brings it back within 10 s."""
    rec = ufw["builtins, no hook, allow"]["ufw reload"]
    assert rec["after"]["owned4"] == [] and rec["after"]["owned6"] == []
    assert not any("CFALLOW" in r for r in rec["after"]["input4"] + rec["after"]["input6"])
    assert rec["back_s"] is None
    assert rec["traffic"] == dict.fromkeys(ALLOWED, False)  # ufw denies 443 to everyone


def test_manage_builtins_systemctl_restart_comes_back_through_partof(ufw: dict[str, Any]) -> None:
    rec = ufw["builtins, no hook, allow"]["systemctl restart ufw"]
    assert rec["rc0"] == 0
    assert rec["back_s"] is not None
    assert rec["traffic"] == ALLOWED


@pytest.mark.parametrize("mode", ["allow", "lockdown"])
@pytest.mark.parametrize("action", ACTIONS)
def test_manage_builtins_with_the_hook_every_path_comes_back_within_10_s(
    ufw: dict[str, Any], mode: str, action: str
) -> None:
    rec = ufw[f"builtins, hook, {mode}"][action]
    assert all(rec[k] == 0 for k in rec if k.startswith("rc")), rec
    assert rec["back_s"] is not None, rec["after"]
    assert _ufw_jumps(rec["after"], "4") and _ufw_jumps(rec["after"], "6")
    assert rec["traffic"] == ALLOWED


def test_the_hook_logs_to_the_journal(ufw: dict[str, Any]) -> None:
    assert "iptables:" in ufw["hook_log"], ufw["hook_log"]
