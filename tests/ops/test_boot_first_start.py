"""First start of the shipped units on a host without ``/etc/nftables.d`` (a fresh Debian 12).

systemd drops a ``-`` ``ReadWritePaths=`` entry whose path does not exist and
``ProtectSystem=strict`` leaves it read-only: the nftables backend then
applied its table and failed to write its include file (``Read-only file
system``). Under real systemd 252 (this machine's root as an overlay, booted
with ``--private-network``, ``/etc/nftables.d`` removed in the overlay):
cfallow-restore.service at boot and cfallow.service started afterwards both
succeed with the nftables backend, and the include file is written.

Then the nftables lifecycle (two boots): the admin's ``policy drop`` conf
includes cfallow's file (a glob from the start, or by name after the first
sync), the admin uninstalls as the README says (units disabled, ``cfallow
remove``; by name: refused in one line, nothing removed, the include made a
glob, removed again), ``systemctl reload nftables`` works, and after a reboot
nftables.service is active with the admin's ruleset and nothing of cfallow's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from support.nspawn import PROBE_UNIT, SOURCE, Machine, need_nspawn, probe_unit

CONFIG = SOURCE + '\n[backends.nftables]\nmode = "lockdown"\nports = [443]\n'
PROBE = """\
import json, subprocess, traceback
from pathlib import Path

def sh(*argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=180)

def show(name):
    out = sh("systemctl", "show", name, "-p", "ActiveState,Result,ExecMainStatus").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

res = {}
try:
    res["system"] = sh("systemctl", "is-system-running", "--wait").stdout.strip()
    res["restore"] = show("cfallow-restore.service")
    res["restore_file"] = Path("/etc/nftables.d/cfallow.nft").is_file()
    Path("/etc/nftables.d/cfallow.nft").unlink(missing_ok=True)  # the next run writes it again
    res["start"] = sh("systemctl", "start", "cfallow.service").returncode
    res["service"] = show("cfallow.service")
    res["service_file"] = Path("/etc/nftables.d/cfallow.nft").is_file()
    res["table"] = sh("nft", "list", "table", "inet", "cfallow").returncode
    res["journal"] = sh("journalctl", "-b", "-u", "cfallow.service", "-u",
                        "cfallow-restore.service", "--no-pager", "-o", "cat").stdout[-3000:]
except BaseException:
    res["error"] = traceback.format_exc()
finally:
    Path("/opt/probe/result-first.json").write_text(json.dumps(res))
    sh("systemctl", "poweroff", "--no-block")
"""


@pytest.fixture(scope="module")
def boot(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    need_nspawn()
    m = Machine(tmp_path_factory.mktemp("nspawn-first"))
    with m.mounted():
        m.install_cfallow()
        m.add_upstream()
        shutil.rmtree(
            m.path("/etc/nftables.d"), ignore_errors=True
        )  # a whiteout if the host has it
        m.write("/etc/cfallow/config.toml", CONFIG)
        m.write("/opt/probe/probe.py", PROBE)
        m.write(f"/etc/systemd/system/{PROBE_UNIT}", probe_unit("First start, then power off"))
        m.systemctl("enable", "cfallow-restore.service", PROBE_UNIT)
        console = m.boot()
        result = m.path("/opt/probe/result-first.json")
        assert result.exists(), console[-3000:]
        res: dict[str, Any] = json.loads(result.read_text())
        made = m.path("/etc/nftables.d")
        res["dir_mode"] = oct(made.stat().st_mode & 0o777) if made.is_dir() else None
    assert "error" not in res, res["error"]
    return res


def test_both_units_succeed_on_first_start_and_write_the_include_file(
    boot: dict[str, Any],
) -> None:
    ok = {"ActiveState": "active", "Result": "success", "ExecMainStatus": "0"}
    assert boot["restore"] == ok, boot["journal"]
    assert boot["restore_file"], boot["journal"]
    assert boot["start"] == 0, boot["journal"]
    assert boot["service"] == {**ok, "ActiveState": "inactive"}, boot["journal"]
    assert boot["service_file"], boot["journal"]
    assert boot["table"] == 0
    assert "Read-only file system" not in boot["journal"]
    assert boot["dir_mode"] == "0o755"


def test_the_units_name_prepare() -> None:
    units = Path(__file__).resolve().parents[2] / "systemd"
    for name in ("cfallow.service", "cfallow-restore.service"):
        assert "ExecStartPre=+/usr/local/bin/cfallow prepare\n" in (units / name).read_text()


# -- the nftables lifecycle: sync, remove as the README says, reboot -------------------------

ADMIN_CONF = """#!/usr/sbin/nft -f
flush ruleset
table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		iif "lo" accept
		tcp dport 22 accept
	}
}
"""
GLOB = 'include "/etc/nftables.d/*.nft"\n'
LIFECYCLE = """\
import json, subprocess, traceback
from pathlib import Path

def sh(*argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=180)

stage = Path("/opt/probe/stage").read_text().strip()
res = {}
try:
    res["system"] = sh("systemctl", "is-system-running", "--wait").stdout.strip()
    res["nftables"] = sh("systemctl", "is-active", "nftables.service").stdout.strip()
    res["ruleset"] = sh("nft", "list", "ruleset").stdout
    if stage == "first":
        res["restore"] = sh("systemctl", "is-active", "cfallow-restore.service").stdout.strip()
        res["file"] = Path("/etc/nftables.d/cfallow.nft").is_file()
        conf = Path("/etc/nftables.conf")
        by_name = 'include "/etc/nftables.d/cfallow.nft"'
        if Path("/opt/probe/style").read_text().strip() == "name":
            # the admin includes the file by name after the first sync, as older docs said
            conf.write_text(conf.read_text() + by_name + "\\n")
            res["reload_name"] = sh("systemctl", "reload", "nftables.service").returncode
        res["disable"] = sh("systemctl", "disable", "--now", "cfallow.timer",
                            "cfallow-restore.service").returncode
        rm = sh("/usr/local/bin/cfallow", "remove")
        res["remove"] = [rm.returncode, rm.stdout, rm.stderr]
        if rm.returncode != 0:  # what the README's Uninstall says to do then
            res["refused_ruleset"] = sh("nft", "list", "ruleset").stdout
            conf.write_text(conf.read_text().replace(by_name, 'include "/etc/nftables.d/*.nft"'))
            sh("systemctl", "reload", "nftables.service")
            rm = sh("/usr/local/bin/cfallow", "remove")
            res["remove_again"] = [rm.returncode, rm.stdout, rm.stderr]
        res["check"] = sh("nft", "-c", "-f", "/etc/nftables.conf").returncode
        res["reload"] = sh("systemctl", "reload", "nftables.service").returncode
        res["after_reload"] = sh("nft", "list", "ruleset").stdout
except BaseException:
    res["error"] = traceback.format_exc()
finally:
    Path(f"/opt/probe/result-{stage}.json").write_text(json.dumps(res))
    sh("systemctl", "poweroff", "--no-block")
"""


@pytest.fixture(scope="module", params=["glob", "name"])
def lifecycle(tmp_path_factory: pytest.TempPathFactory, request: Any) -> dict[str, Any]:
    """Boot 1: the units apply, the admin includes cfallow's file (a glob from the start,
    or by name after the first sync), then uninstalls as the README says; boot 2."""
    need_nspawn()
    style: str = request.param
    m = Machine(tmp_path_factory.mktemp("nspawn-life"))
    out: dict[str, Any] = {}
    with m.mounted():
        m.install_cfallow()
        m.add_upstream()
        shutil.rmtree(m.path("/etc/nftables.d"), ignore_errors=True)
        m.write("/etc/cfallow/config.toml", CONFIG)
        m.write("/etc/nftables.conf", ADMIN_CONF + (GLOB if style == "glob" else ""), 0o755)
        m.write("/opt/probe/style", style)
        m.write("/opt/probe/probe.py", LIFECYCLE)
        m.write(f"/etc/systemd/system/{PROBE_UNIT}", probe_unit("nftables lifecycle"))
        m.systemctl("enable", "nftables.service", "cfallow-restore.service", "cfallow.timer")
        m.systemctl("enable", PROBE_UNIT)
        for stage in ("first", "second"):
            m.write("/opt/probe/stage", stage)
            m.boot_probe(stage)
            out[stage] = json.loads(m.path(f"/opt/probe/result-{stage}.json").read_text())
    out["style"] = style
    return out


def test_remove_then_reboot_keeps_the_admins_ruleset(lifecycle: dict[str, Any]) -> None:
    first, second = lifecycle["first"], lifecycle["second"]
    assert first["nftables"] == "active" and first["restore"] == "active", first
    assert first["file"] and "table inet cfallow" in first["ruleset"]
    assert first["disable"] == 0
    if lifecycle["style"] == "name":
        assert first["reload_name"] == 0
        rc, _, err = first["remove"]
        assert rc == 1, first["remove"]
        assert err.startswith(
            "cfallow: error: nftables: /etc/nftables.conf would not load without "
            "/etc/nftables.d/cfallow.nft"
        ), err
        assert 'include "/etc/nftables.d/cfallow.nft"' in err and "nothing removed" in err
        assert len(err.splitlines()) == 1, err
        assert "table inet cfallow" in first["refused_ruleset"]  # nothing removed
        assert first["remove_again"][0] == 0, first["remove_again"]
    else:
        assert first["remove"][0] == 0, first["remove"]
    assert (first["check"], first["reload"]) == (0, 0)
    assert "cfallow" not in first["after_reload"] and "policy drop" in first["after_reload"]
    # the reboot: nftables.service loads the admin's ruleset; cfallow is gone
    assert second["nftables"] == "active", second
    assert "policy drop" in second["ruleset"] and "tcp dport 22 accept" in second["ruleset"]
    assert "cfallow" not in second["ruleset"], second["ruleset"]
