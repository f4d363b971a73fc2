"""First start of the shipped units on a host without ``/etc/nftables.d`` (a fresh Debian 12).

systemd drops a ``-`` ``ReadWritePaths=`` entry whose path does not exist and
``ProtectSystem=strict`` leaves it read-only: the nftables backend then
applied its table and failed to write its include file (``Read-only file
system``). Under real systemd 252 (this machine's root as an overlay, booted
with ``--private-network``, ``/etc/nftables.d`` removed in the overlay):
cfallow-restore.service at boot and cfallow.service started afterwards both
succeed with the nftables backend, and the include file is written.
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
