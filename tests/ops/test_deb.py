"""The Debian package on a fresh Debian 12: install, nothing enabled, remove, purge.

``scripts/build-deb`` builds the .deb from this checkout. A setup layer (shared
by the tests of one run) downloads what ``apt install ./cfallow_*.deb`` needs,
plus nftables, from Debian's registry into the root's apt cache; everything
after that runs with a private network: ``apt-get install`` finds the
packages in its cache, as on a host with a local mirror.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support import need_tool
from support.fresh.deb import build_deb, deb_layer
from support.fresh.root import FreshServer

UNITS = ("cfallow.service", "cfallow.timer", "cfallow-restore.service")
LOCKDOWN = '[backends.nftables]\nmode = "lockdown"\nports = [443]\n'
INCLUDE = 'include "/etc/nftables.d/*.nft"\n'


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_deb(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="module")
def deps_layer(tmp_path_factory: pytest.TempPathFactory, deb: Path) -> Path:
    return deb_layer(tmp_path_factory, deb)


def install(server: FreshServer, deb: Path, *extra: str) -> float:
    """``apt install ./cfallow_*.deb`` offline (the apt cache has everything); seconds taken."""
    server.path("/root/pkg").mkdir(parents=True, exist_ok=True)
    (server.path("/root/pkg") / deb.name).write_bytes(deb.read_bytes())
    start = time.monotonic()
    proc = server.run(
        ["apt-get", "install", "-y", "-q", f"/root/pkg/{deb.name}", *extra],
        cwd="/root/pkg",
        env={"DEBIAN_FRONTEND": "noninteractive"},
    )
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return took


def sh(name: str, text: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "sh": text, **kw}


def ok(res: dict[str, Any], step: str) -> str:
    r = res["steps"][step]
    assert r["rc"] == 0, f"{step}: rc={r['rc']} {r['out'][-2000:]} {r['err'][-2000:]}"
    return str(r["out"])


def test_deb_installs_on_a_fresh_debian_with_nothing_enabled(
    tmp_path: Path, deb: Path, deps_layer: Path
) -> None:
    server = FreshServer(tmp_path, layers=[deps_layer])
    with server.mounted():
        took = install(server, deb)
        print(f"apt install ./{deb.name} (offline, deps from the cache): {took:.1f} s")
        version = deb.name.split("_")[1].rsplit("-", 1)[0]
        assert not {u for u in server.enabled_units() if u.startswith("cfallow")}
        for unit in UNITS:
            text = server.path(f"/lib/systemd/system/{unit}").read_text()
            assert "/usr/local/bin" not in text
            assert unit.endswith(".timer") or "ExecStart=/usr/bin/cfallow" in text
        conf = server.path("/etc/cfallow/config.toml").read_text()
        assert all(not line.strip() or line.startswith("#") for line in conf.splitlines())
        assert (
            "/etc/cfallow/config.toml"
            in server.path("/var/lib/dpkg/info/cfallow.conffiles").read_text()
        )
        assert server.path("/usr/share/man/man1/cfallow.1.gz").is_file()
        assert server.path("/usr/share/bash-completion/completions/cfallow").is_file()
        assert server.path("/usr/share/cfallow/ufw/after.init").stat().st_mode & 0o111
        assert server.path("/usr/share/cfallow/docker.service.d/cfallow.conf").is_file()
        assert not server.path("/etc/ufw/after.init").exists()
        assert not server.path("/etc/systemd/system/docker.service.d").exists()
        server.write(
            "/root/lockdown.toml", '[backends.iptables]\nmode = "lockdown"\nports = [443]\n'
        )

        res = server.boot_steps(
            "installed",
            [
                sh("version", "cfallow --version"),
                sh("check_unconfigured", "cfallow check || echo rc=$?"),
                sh("check", "cfallow check --config /root/lockdown.toml"),
                sh("verify_help", "cfallow verify --help"),
                sh(
                    "dry_run",
                    "cfallow sync --dry-run --source bundled --config /root/lockdown.toml",
                ),
                sh("enabled", "systemctl is-enabled " + " ".join(UNITS) + " || true"),
                sh(
                    "complete",
                    "COMP_LINE='cfallow sy' COMP_POINT=10 _ARGCOMPLETE=1 "
                    "_ARGCOMPLETE_IFS=' ' cfallow 8>&1 9>/dev/null",
                ),
            ],
        )
    assert version in ok(res, "version")
    # The shipped conffile enables nothing: check says so (exit 2); a chosen backend passes.
    unconfigured = ok(res, "check_unconfigured")
    assert "no backend is enabled" in unconfigured + res["steps"]["check_unconfigured"]["err"]
    assert unconfigured.strip().endswith("rc=2")
    ok(res, "check")
    assert "usage: cfallow verify" in ok(res, "verify_help")
    plan = ok(res, "dry_run")
    assert "iptables: +22 -0 =0 would change (dry run)" in plan
    # cfallow.service has no [Install]: the timer and the restore unit start it.
    assert ok(res, "enabled").split() == ["static", "disabled", "disabled"]
    assert "sync" in ok(res, "complete").split()
    assert not res["failed_units"].strip(), res["failed_units"]


def test_deb_remove_and_purge_leave_no_broken_include_or_unit(
    tmp_path: Path, deb: Path, deps_layer: Path
) -> None:
    """The admin enabled the units and included cfallow's nftables file; then removes
    and purges the package. The live rules and the include file stay (README.Debian),
    nothing fails at the next boot, nftables.service still loads the admin's conf."""
    server = FreshServer(tmp_path, layers=[deps_layer])
    with server.mounted():
        install(server, deb, "nftables")
        server.write("/etc/cfallow/config.toml", LOCKDOWN)
        nft_conf = server.path("/etc/nftables.conf")
        nft_conf.write_text(nft_conf.read_text() + INCLUDE)
        server.path("/etc/nftables.d").mkdir(exist_ok=True)
        server.systemctl("enable", "nftables.service", "cfallow-restore.service", "cfallow.timer")
        dropin = "/etc/systemd/system/docker.service.d/cfallow.conf"  # as README.Debian says
        server.write(
            dropin, server.path("/usr/share/cfallow/docker.service.d/cfallow.conf").read_text()
        )
        has_table = "nft list table inet cfallow >/dev/null && echo present || echo absent"
        first = server.boot_steps(
            "admin",
            [
                sh("sync", "cfallow sync --source bundled"),
                sh("reload", f"systemctl reload nftables && {has_table}"),
                sh(
                    "remove",
                    "apt-get remove -y -q cfallow",
                    env={"DEBIAN_FRONTEND": "noninteractive"},
                ),
                sh(
                    "after_remove",
                    f"{has_table}; ls /etc/nftables.d; ls /etc/cfallow; find /etc/systemd -xtype l",
                ),
            ],
        )
        ok(first, "sync")
        assert ok(first, "reload").split() == ["present"]
        ok(first, "remove")
        kept = ok(first, "after_remove").split()
        assert kept == ["present", "cfallow.nft", "config.toml"], kept  # no dangling link
        assert not server.path("/usr/bin/cfallow").exists()
        assert not server.path(dropin).exists()  # it wanted a unit that is gone

        second = server.boot_steps(
            "removed",
            [
                {"name": "nftables", "unit": "nftables.service"},
                sh("table", has_table),
                sh(
                    "purge",
                    "apt-get purge -y -q cfallow",
                    env={"DEBIAN_FRONTEND": "noninteractive"},
                ),
                sh("after_purge", "ls -d /etc/cfallow /var/lib/cfallow 2>&1 || true"),
            ],
        )
        assert not second["failed_units"].strip(), second["failed_units"]
        assert second["steps"]["nftables"]["show"]["ActiveState"] == "active"
        assert ok(second, "table").split() == ["present"]  # loaded from the kept include file
        ok(second, "purge")
        assert ok(second, "after_purge").count("No such file or directory") == 2

        third = server.boot_steps(
            "purged", [{"name": "nftables", "unit": "nftables.service"}, sh("table", has_table)]
        )
        assert not third["failed_units"].strip(), third["failed_units"]
        assert third["steps"]["nftables"]["show"]["ActiveState"] == "active"
        assert ok(third, "table").split() == ["present"]
        assert not {u for u in server.enabled_units() if u.startswith("cfallow")}


def test_deb_is_lintian_clean(deb: Path) -> None:
    """Debian's package checker finds no error and no warning (overrides: see build-deb)."""
    need_tool("lintian")
    proc = subprocess.run(
        ["lintian", "--tag-display-limit", "0", str(deb)],
        capture_output=True,
        text=True,
        check=False,
    )
    tags = [ln for ln in proc.stdout.splitlines() if re.match(r"[EW]: ", ln)]
    assert proc.returncode == 0 and tags == [], proc.stdout + proc.stderr
