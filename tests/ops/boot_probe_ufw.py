"""Runs INSIDE the booted container (see test_boot_ufw.py): ufw's three reload paths.

ufw.service started at boot with the overlay's /etc/ufw (default deny incoming,
allow 22/tcp), cfallow-restore.service after it (iptables, variant nft). For
each phase (ufw's ``MANAGE_BUILTINS`` no/yes, cfallow's hook in
/etc/ufw/after.init off/on, cfallow's mode allow/lockdown) every action
(``ufw reload``, ``systemctl restart ufw``, ``ufw disable`` + ``ufw enable``)
is run and recorded: the INPUT chains right after it, the seconds until
cfallow's chain and its jump (first in INPUT, both families) are back, and
traffic from a client namespace behind a veth pair (boot_probe.py's).

Everything goes to /opt/probe/result-ufw.json; the probe always powers off.
"""

from __future__ import annotations

import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, "/opt/probe")
from boot_probe import CF, CONFIG, OUTSIDE, client_namespace, listen, reach, record, sh

OUT = Path("/opt/probe")
HOOK = Path("/etc/ufw/after.init")
DEFAULTS = Path("/etc/default/ufw")
BASE = """\
[backends.iptables]
variant = "nft"
mode = "{mode}"
ports = [443]
"""
ACTIONS = {
    "ufw reload": [("ufw", "reload")],
    "systemctl restart ufw": [("systemctl", "restart", "ufw.service")],
    "ufw disable; ufw enable": [("ufw", "disable"), ("ufw", "--force", "enable")],
}


def traffic() -> dict[str, bool]:
    """All four sources at once (a refused one costs its whole connect timeout)."""
    srcs = (*CF, *OUTSIDE)
    with ThreadPoolExecutor(len(srcs)) as pool:
        return dict(zip(srcs, pool.map(reach, srcs)))


def snapshot() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fam, save in (("4", "iptables-save"), ("6", "ip6tables-save")):
        text = sh(save, "-t", "filter").stdout
        out[f"owned{fam}"] = sorted(re.findall(r"^-A CFALLOW -s (\S+)", text, re.M))
        out[f"input{fam}"] = re.findall(r"^-A INPUT (.*)$", text, re.M)
        out[f"policy{fam}"] = (re.findall(r"^:INPUT (\S+)", text, re.M) or [""])[0]
    return out


def in_place(want: dict[str, Any]) -> bool:
    """cfallow's ranges as at the start, and its jump the first rule of INPUT."""
    now = snapshot()
    return all(
        now[f"owned{f}"] == want[f"owned{f}"]
        and bool(now[f"input{f}"])
        and now[f"input{f}"][0].endswith("-j CFALLOW")
        for f in ("4", "6")
    )


def back_within(want: dict[str, Any], t0: float, timeout: float = 10) -> float | None:
    """Seconds from ``t0`` until cfallow is in place again (None: not within ``timeout``)."""
    while time.monotonic() - t0 < timeout:
        if in_place(want):
            return round(time.monotonic() - t0, 2)
        time.sleep(0.1)
    return None


def act(name: str, want: dict[str, Any]) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    t0 = time.monotonic()
    for i, argv in enumerate(ACTIONS[name]):
        proc = sh(*argv)
        rec[f"rc{i}"] = proc.returncode
        if proc.returncode:
            rec[f"err{i}"] = proc.stdout + proc.stderr
        if i == 0 and len(ACTIONS[name]) > 1:  # ufw is off: what is left of cfallow
            rec["between"] = snapshot()
            rec["traffic_between"] = traffic()
    rec["returned_s"] = round(time.monotonic() - t0, 2)
    rec["after"] = snapshot()
    rec["back_s"] = back_within(want, t0)
    rec["traffic"] = traffic()
    return rec


def phase(builtins: str, hook: bool, mode: str, actions: list[str]) -> dict[str, Any]:
    text = DEFAULTS.read_text()
    DEFAULTS.write_text(re.sub(r"(?m)^MANAGE_BUILTINS=.*$", f"MANAGE_BUILTINS={builtins}", text))
    os.chmod(HOOK, 0o755 if hook else 0o644)
    CONFIG.write_text(BASE.format(mode=mode))
    sh("systemctl", "restart", "cfallow-restore.service", check=True)
    rec: dict[str, Any] = {"start": snapshot(), "traffic_start": traffic()}
    for name in actions:
        rec[name] = act(name, rec["start"])
        if rec[name]["back_s"] is None:  # put it back for the next action
            sh("systemctl", "restart", "cfallow-restore.service", check=True)
    return rec


def run(res: dict[str, Any]) -> None:
    res["ufw_status"] = sh("ufw", "status", "verbose").stdout
    res["ufw_unit"] = sh("systemctl", "show", "ufw.service", "-p", "ActiveState,Result").stdout
    res["restore_log"] = sh(
        "journalctl", "-b", "-u", "cfallow-restore.service", "-o", "cat", "--no-pager"
    ).stdout
    listen()
    client_namespace()
    everything = list(ACTIONS)
    res["default, no hook, allow"] = phase("no", False, "allow", everything)
    res["builtins, no hook, allow"] = phase("yes", False, "allow", everything[:2])
    res["builtins, hook, allow"] = phase("yes", True, "allow", everything)
    res["builtins, hook, lockdown"] = phase("yes", True, "lockdown", everything)
    res["hook_log"] = sh("journalctl", "-b", "-t", "cfallow-ufw", "-o", "cat", "--no-pager").stdout


def main() -> None:
    record("ufw", run, {})


if __name__ == "__main__":
    main()
