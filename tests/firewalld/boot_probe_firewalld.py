"""Runs INSIDE the booted container (see test_boot_firewalld.py): records, powers off.

Stage ``first``: firewalld is the host firewall; the hardened cfallow.service
runs the firewalld backend once (first run: one reload), then
cfallow-restore.service (offline, no change); the units' security scores.
Stage ``second`` (a reboot, the stand-in gone, only cfallow-restore.service
enabled): when firewalld, cfallow-restore and network-pre.target became
active, the sets at network-pre, traffic from a namespace behind a veth pair;
then, cfallow-restore stopped (no cfallow run from there on), ``firewall-cmd
--reload`` and ``systemctl restart firewalld`` (seconds until the allowlist is
back).

Reuses boot_probe.py (copied next to this file) for the traffic and unit helpers.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, "/opt/probe")
import boot_probe as bp

OUT = Path("/opt/probe")
SETS = ("cloudflare-v4", "cloudflare-v6")


def kernel(name: str) -> list[str]:
    """The elements of ``inet firewalld NAME`` (empty: no such set)."""
    proc = bp.sh("nft", "-j", "list", "set", "inet", "firewalld", name)
    if proc.returncode != 0:
        return []
    out = []
    for item in json.loads(proc.stdout)["nftables"]:
        for elem in item.get("set", {}).get("elem", []):
            p = elem["prefix"] if isinstance(elem, dict) else None
            out.append(f"{p['addr']}/{p['len']}" if p else str(elem))
    return sorted(out)


def allowlist() -> list[str]:
    return sorted(kernel(SETS[0]) + kernel(SETS[1]))


def state() -> str:
    return bp.sh("firewall-cmd", "--state").stdout.strip() or "not running"


def first(res: dict[str, Any]) -> None:
    res["state_boot"] = state()
    res["service"] = bp.start_service(bp.CONFIG.read_text())
    res["ipsets"] = bp.sh("firewall-cmd", "--get-ipsets").stdout.split()
    res["active"] = bp.sh("firewall-cmd", "--get-active-zones").stdout
    res["allowlist"] = allowlist()
    res["files"] = sorted(str(p) for p in Path("/etc/firewalld").rglob("*.xml"))
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    time.sleep(1)
    proc = bp.sh("systemctl", "start", "cfallow-restore.service", timeout=180)
    log = bp.sh("journalctl", "-u", "cfallow-restore.service", "--since", since, "-o", "cat")
    res["restore"] = {"rc": proc.returncode, "unit": bp.unit("cfallow-restore.service")}
    res["restore"]["log"] = log.stdout
    for name in ("cfallow.service", "cfallow-restore.service"):
        res[f"security {name}"] = bp.exposure(name)
    res["state_end"] = state()


def back_after(action: tuple[str, ...], want: list[str]) -> dict[str, Any]:
    """Run ``action``; seconds from its start until the allowlist is whole again."""
    t0 = time.monotonic()
    rc = bp.sh(*action, timeout=120).returncode
    back = bp.wait_for(lambda: allowlist() == want, 10, 0.05)
    return {
        "rc": rc,
        "back_s": None if back is None else round(time.monotonic() - t0, 2),
        "state": state(),
        "traffic": bp.traffic(),
    }


def runs() -> dict[str, str]:
    """When each cfallow unit last started (µs, CLOCK_MONOTONIC; "0": never this boot)."""
    key = "ExecMainStartTimestampMonotonic"
    return {
        name: bp.sh("systemctl", "show", name, "-p", key).stdout.strip().split("=", 1)[-1]
        for name in ("cfallow.service", "cfallow-restore.service")
    }


def second(res: dict[str, Any]) -> None:
    res["entered"] = {
        name: bp.entered(name)
        for name in (
            "dbus.service",
            "firewalld.service",
            "cfallow-restore.service",
            "network-pre.target",
        )
    }
    res["prenet"] = json.loads((OUT / "prenet.json").read_text())
    res["restore"] = bp.unit("cfallow-restore.service")
    res["restore_log"] = bp.sh(
        "journalctl", "-b", "-u", "cfallow-restore.service", "-o", "cat"
    ).stdout
    res["state_boot"] = state()
    res["allowlist"] = want = allowlist()
    bp.listen()
    bp.client_namespace()
    res["traffic_boot"] = bp.traffic()
    # From here on no cfallow run at all: restart would propagate to it (PartOf=).
    bp.sh("systemctl", "stop", "cfallow-restore.service", check=True)
    res["runs_before"] = runs()
    res["reload"] = back_after(("firewall-cmd", "--reload"), want)
    res["restart"] = back_after(("systemctl", "restart", "firewalld.service"), want)
    res["runs_after"] = runs()


def main() -> None:
    stage = (OUT / "stage").read_text().strip()
    bp.record(stage, {"first": first, "second": second}[stage], {"stage": stage})


if __name__ == "__main__":
    main()
