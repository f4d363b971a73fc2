"""Runs INSIDE the booted container (see test_boot.py): records what it sees, powers off.

Stage ``first`` (/opt/probe/stage): the first boot (upstream reachable): the timer's run,
    then cfallow.service started once per backend (iptables legacy, fail2ban,
    aws against moto_server on the container's loopback), the security score.
Stage ``second``: the reboot (upstream unreachable): the journal's
    ordering, traffic from a namespace the probe creates, reloads.

Everything goes to /opt/probe/result-STAGE.json; the probe always powers off.
Standard library only, plus boto3 (the cfallow virtualenv's) for the aws step.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

OUT = Path("/opt/probe")
CONFIG = Path("/etc/cfallow/config.toml")
CF = ("104.16.0.10", "2400:cb00::10")
OUTSIDE = ("198.51.100.7", "2001:db8:ff::7")
SERVER = ("192.0.2.1", "2001:db8::1")
CONNECT = (
    "import socket,sys;s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] "
    "else socket.AF_INET);s.settimeout(1);s.bind((sys.argv[1],0));"
    "sys.exit(s.connect_ex((sys.argv[2],443)))"
)
MOTO_PORT = 5055


def sh(*argv: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        why = f"{argv}: {proc.returncode} {proc.stderr}"
        if argv[0] == "systemctl":  # what systemd saw, for a failure that shows only under load
            log = ["journalctl", "-b", "-n", "80", "-o", "short-monotonic", "--no-pager"]
            why += "\n" + subprocess.run(log, capture_output=True, text=True, check=False).stdout
        raise RuntimeError(why)
    return proc


def exposure(name: str) -> float | str:
    """``systemd-analyze security`` of the loaded unit: its score, or the output's tail."""
    out = sh("systemd-analyze", "security", "--no-pager", name).stdout
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
    return float(m.group(1)) if m else out[-500:]


def record(name: str, run: Callable[[dict[str, Any]], None], res: dict[str, Any]) -> None:
    """Once the system is up, ``run(res)``; write /opt/probe/result-NAME.json, power off.

    Whatever ``run`` raises is recorded as ``res["error"]``; the container always powers off.
    """
    try:
        res["system"] = sh("systemctl", "is-system-running", "--wait", timeout=180).stdout.strip()
        run(res)
    except BaseException:
        res["error"] = traceback.format_exc()
    finally:
        res["failed_units"] = sh("systemctl", "--failed", "--no-legend", "--plain").stdout
        (OUT / f"result-{name}.json").write_text(json.dumps(res, indent=1, default=str))
        sh("systemctl", "poweroff", "--no-block")


def unit(name: str) -> dict[str, str]:
    keys = "ActiveState,Result,ExecMainStatus,ExecMainExitTimestampMonotonic,NRestarts"
    out = sh("systemctl", "show", name, "-p", keys).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def owned(save: str = "iptables-save") -> list[str]:
    text = sh(save).stdout
    return sorted(re.findall(r"^-A CFALLOW -s (\S+)", text, re.M))


def wait_for(pred: Any, timeout: float, step: float = 0.1) -> float | None:
    """Seconds until ``pred()`` held, or None."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return round(time.monotonic() - start, 2)
        time.sleep(step)
    return None


def wait_run(name: str, after: float, timeout: float) -> dict[str, str]:
    """Wait until ``name`` (oneshot) has finished a run that started after ``after`` (µs)."""

    def done() -> bool:
        u = unit(name)
        return int(u.get("ExecMainExitTimestampMonotonic") or 0) > after

    wait_for(done, timeout, 0.5)
    return unit(name)


def monotonic_us() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6


def start_service(config: str) -> dict[str, Any]:
    """Run the hardened cfallow.service once with ``config``; its result and log."""
    CONFIG.write_text(config)
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    time.sleep(1)
    proc = sh("systemctl", "start", "cfallow.service", timeout=180)
    log = sh("journalctl", "-u", "cfallow.service", "--since", since, "-o", "cat", "--no-pager")
    return {"rc": proc.returncode, "unit": unit("cfallow.service"), "log": log.stdout}


# -- traffic -------------------------------------------------------------------


def listen() -> None:
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", 443))
    s.listen(64)

    def loop() -> None:
        while True:
            s.accept()[0].close()

    threading.Thread(target=loop, daemon=True).start()


def client_namespace() -> None:
    """Namespace ``cfc`` behind veth ``cfv0``/``cfv1``: Cloudflare and outside sources."""
    for argv in (
        ("ip", "netns", "add", "cfc"),
        ("ip", "link", "add", "cfv0", "type", "veth", "peer", "name", "cfv1", "netns", "cfc"),
        ("ip", "link", "set", "cfv0", "up"),
        ("ip", "addr", "add", f"{SERVER[0]}/32", "dev", "cfv0"),
        ("ip", "addr", "add", f"{SERVER[1]}/128", "dev", "cfv0", "nodad"),
        ("ip", "netns", "exec", "cfc", "ip", "link", "set", "cfv1", "up"),
        ("ip", "netns", "exec", "cfc", "ip", "link", "set", "lo", "up"),
    ):
        sh(*argv, check=True)
    for addr in (*CF, *OUTSIDE):
        six = ":" in addr
        plen = "128" if six else "32"
        extra = ("nodad",) if six else ()
        sh(
            "ip",
            "netns",
            "exec",
            "cfc",
            "ip",
            "addr",
            "add",
            f"{addr}/{plen}",
            "dev",
            "cfv1",
            *extra,
            check=True,
        )
        sh("ip", "route", "add", f"{addr}/{plen}", "dev", "cfv0", check=True)
    for dst in SERVER:
        plen = "128" if ":" in dst else "32"
        sh(
            "ip",
            "netns",
            "exec",
            "cfc",
            "ip",
            "route",
            "add",
            f"{dst}/{plen}",
            "dev",
            "cfv1",
            check=True,
        )
    time.sleep(1)


def reach(src: str) -> bool:
    dst = SERVER[1] if ":" in src else SERVER[0]
    argv = ("ip", "netns", "exec", "cfc", sys.executable, "-c", CONNECT, src, dst)
    return sh(*argv, timeout=20).returncode == 0


def traffic() -> dict[str, bool]:
    return {src: reach(src) for src in (*CF, *OUTSIDE)}


# -- stages --------------------------------------------------------------------


def first(res: dict[str, Any]) -> None:
    res["timer_active"] = sh("systemctl", "is-active", "cfallow.timer").stdout.strip()
    res["timer_next"] = sh(
        "systemctl", "show", "cfallow.timer", "-p", "NextElapseUSecRealtime"
    ).stdout.strip()
    res["timer_run"] = wait_run("cfallow.service", 0, 120)
    res["timer_run_at_s"] = int(res["timer_run"].get("ExecMainExitTimestampMonotonic", 0)) / 1e6
    res["timer_run_log"] = sh(
        "journalctl", "-u", "cfallow.service", "-o", "cat", "--no-pager"
    ).stdout
    res["restore"] = unit("cfallow-restore.service")
    res["restore_log"] = sh(
        "journalctl", "-b", "-u", "cfallow-restore.service", "-o", "cat", "--no-pager"
    ).stdout
    res["lkg"] = json.loads(Path("/var/lib/cfallow/last-known-good.json").read_text())
    res["owned_nft"] = owned() + owned("ip6tables-save")
    for name in ("cfallow.service", "cfallow-restore.service"):
        res[f"security {name}"] = exposure(name)
    base = CONFIG.read_text()

    res["legacy"] = start_service(base.replace('variant = "nft"', 'variant = "legacy"'))
    res["legacy"]["owned"] = owned("iptables-legacy-save") + owned("ip6tables-legacy-save")

    sh("systemctl", "start", "fail2ban.service", check=True)
    wait_for(lambda: sh("fail2ban-client", "ping").returncode == 0, 30, 0.5)
    res["fail2ban"] = start_service(
        base.split("[backends.iptables]")[0] + '[backends.fail2ban]\njails = ["cftest"]\n'
    )
    res["fail2ban"]["dropin"] = Path("/etc/fail2ban/jail.d/zz-cfallow.local").read_text()
    res["fail2ban"]["live"] = sh("fail2ban-client", "get", "cftest", "ignoreip").stdout
    sh("systemctl", "stop", "fail2ban.service")

    res["aws"] = aws(base)
    CONFIG.write_text(base)


def aws(base: str) -> dict[str, Any]:
    moto = subprocess.Popen(
        [sys.executable, "/opt/probe/moto_server.py", "-H", "127.0.0.1", "-p", str(MOTO_PORT)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import boto3

        url = f"http://127.0.0.1:{MOTO_PORT}"

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", MOTO_PORT), 1).close()
                return True
            except OSError:
                return False

        wait_for(up, 60, 0.2)
        ec2 = boto3.client("ec2", region_name="eu-west-1", endpoint_url=url)
        vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
        group = ec2.create_security_group(GroupName="web", Description="web", VpcId=vpc)["GroupId"]
        config = base.split("[backends.iptables]", maxsplit=1)[0] + (
            f'[backends.aws]\nregion = "eu-west-1"\nsecurity_group_ids = ["{group}"]\n'
            f'ports = [443]\nendpoint_url = "{url}"\n'
        )
        out = start_service(config)
        rules = ec2.describe_security_group_rules(
            Filters=[{"Name": "group-id", "Values": [group]}]
        )["SecurityGroupRules"]
        out["cidrs"] = sorted(
            r.get("CidrIpv4") or r.get("CidrIpv6") for r in rules if not r["IsEgress"]
        )
        return out
    finally:
        moto.terminate()
        moto.wait(10)


def journal_order() -> list[str]:
    out = sh("journalctl", "-b", "-o", "short-monotonic", "--no-pager").stdout
    keep = ("cfallow", "network-pre.target", "nftables", "netfilter-persistent", "Startup")
    return [line for line in out.splitlines() if any(k in line for k in keep)]


def entered(name: str) -> int:
    """When ``name`` became active (µs, CLOCK_MONOTONIC), as systemd recorded it."""
    out = sh("systemctl", "show", name, "-p", "ActiveEnterTimestampMonotonic").stdout
    return int(out.strip().split("=", 1)[1] or 0)


def second(res: dict[str, Any]) -> None:
    res["journal"] = journal_order()
    res["entered"] = {
        name: entered(name)
        for name in (
            "nftables.service",
            "netfilter-persistent.service",
            "cfallow-restore.service",
            "network-pre.target",
        )
    }
    res["restore"] = unit("cfallow-restore.service")
    res["restore_log"] = sh(
        "journalctl", "-b", "-u", "cfallow-restore.service", "-o", "cat", "--no-pager"
    ).stdout
    res["prenet"] = Path("/opt/probe/prenet.txt").read_text()
    # The timer (OnBootSec=10s) must not repair the chain while the reloads below are
    # measured, or "back within 10 s" could be its work: stop it, let a run in flight end.
    sh("systemctl", "stop", "cfallow.timer", check=True)
    wait_for(lambda: unit("cfallow.service")["ActiveState"] != "activating", 120, 0.2)
    listen()
    client_namespace()
    res["traffic_boot"] = traffic()

    # Control: the admin's file loaded by hand (not through systemd) wipes the chain.
    sh("nft", "-f", "/etc/nftables.conf", check=True)
    res["after_nft_by_hand"] = owned()
    sh("systemctl", "reload", "nftables.service", check=True)
    res["nftables_reload_back_s"] = wait_for(lambda: len(owned()) == 15, 10)
    res["traffic_nftables_reload"] = traffic()

    sh("netfilter-persistent", "start", check=True)
    res["after_persistent_by_hand"] = owned()
    sh("systemctl", "restart", "netfilter-persistent.service", check=True)
    res["persistent_restart_back_s"] = wait_for(lambda: len(owned()) == 15, 10)
    res["traffic_persistent_restart"] = traffic()

    # What the timer starts, with Cloudflare unreachable: the list is fresh, no fetch.
    # (Started here rather than waited for: boot 1 waits for a real timer run.)
    run = start_service(CONFIG.read_text())
    res["timer_run"], res["timer_run_log"] = run["unit"], run["log"]


def main() -> None:
    stage = (OUT / "stage").read_text().strip()
    record(stage, {"first": first, "second": second}[stage], {"stage": stage})


if __name__ == "__main__":
    main()
