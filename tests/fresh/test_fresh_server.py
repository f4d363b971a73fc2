"""The README's server install on a fresh Debian 12 root, booted under systemd, rebooted.

Per install (the README's venv at /opt/cfallow; the Debian package) and per
firewall (nftables lockdown, iptables lockdown), the README's own blocks run
verbatim inside the booted container (a private network; pip and apt from a
prepared layer): install, the firewall package and config, ``cfallow check``
and the dry run, the units enabled as documented. The package's block
(``deb``: ``apt install ./cfallow_0.1.0-1_all.deb``, ``editor
/etc/cfallow/config.toml``, check and dry run, ``systemctl enable --now``)
runs line by line in /root/pkg, the release build there; its ``editor``
line is the admin's edit, done by the README's ``config-FIREWALL`` block
(``apt install`` of the firewall, the lockdown table). Then, in the same
boot: both units ran cleanly, Cloudflare addresses reach port 443 and an
outsider does not (traffic from a client namespace inside the container),
``cfallow verify`` and ``cfallow check`` pass with the installed package
and units. Boot 2 (a reboot): the restore
unit put the allowlist back before anything else, the timer's service runs
cleanly, same traffic. nftables only: the admin's own ruleset is
``/etc/nftables.conf`` with ``policy drop`` (nftables.service enabled); the
README's uninstall runs in boot 2, and boot 3 shows nftables.service active
with the admin's ruleset and nothing of cfallow's (the venv install; the
package's remove and purge: tests/ops/test_deb.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from support.fresh.deb import build_deb, deb_layer
from support.fresh.root import CHECKOUT, FreshServer, readme_block

pytestmark = [pytest.mark.root, pytest.mark.slow]

CF = ("104.16.0.10", "2400:cb00::10")
OUTSIDERS = ("198.51.100.7", "2001:db8:ff::7")

#: The admin's own ruleset on a native nftables host: policy drop, 22, 80 and 443 open,
#: cfallow's file included as the README recommends (a glob: loads with no file too).
ADMIN_NFT = """\
#!/usr/sbin/nft -f
flush ruleset
table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		iif lo accept
		ct state established,related accept
		meta l4proto ipv6-icmp accept
		tcp dport { 22, 80, 443 } accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
	}
}
include "/etc/nftables.d/*.nft"
"""
ADMIN_STEP = (
    f"cat > /etc/nftables.conf <<'EOF'\n{ADMIN_NFT}EOF\nsystemctl enable --now nftables.service\n"
)


#: Where the package's install runs: the directory holding the downloaded .deb.
PKG_DIR = "/root/pkg"
#: The steps' environment names the install (cfallow ignores it).
INSTALL = "CFALLOW_TEST_INSTALL"


def _sh(name: str, text: str, env: dict[str, str], stop: bool = False) -> dict[str, Any]:
    """A step in the user's directory: the clone, or where the .deb was downloaded."""
    cwd = PKG_DIR if env.get(INSTALL) == "deb" else CHECKOUT
    return {"name": name, "sh": text, "cwd": cwd, "env": env, "stop_on_failure": stop}


def _deb_block() -> list[str]:
    """The README's package block, one command a line (see the module doc)."""
    lines = readme_block("deb").splitlines()
    assert len(lines) == 4 and lines[1].startswith("editor /etc/cfallow/config.toml"), lines
    return lines


def _ruleset(firewall: str) -> str:
    if firewall == "nftables":
        return "nft list ruleset"
    return "iptables-save; ip6tables-save"


def _first(install: str, firewall: str, env: dict[str, str]) -> list[dict[str, Any]]:
    if install == "deb":
        setup, _editor, check, units = _deb_block()
    else:
        setup, check, units = readme_block("install"), readme_block("check"), readme_block("units")
    steps = [
        _sh("install", setup, env, stop=True),
        _sh("config", readme_block(f"config-{firewall}"), env, stop=True),
    ]
    if firewall == "nftables":
        steps.append(_sh("admin", ADMIN_STEP, env, stop=True))
    return [
        *steps,
        _sh("check", check, env),
        _sh("units", units, env, stop=True),
        {"name": "restore", "unit": "cfallow-restore.service"},
        {"name": "timer", "unit": "cfallow.timer"},
        _sh("start", "systemctl start cfallow.service", env),
        {"name": "service", "unit": "cfallow.service"},
        {"name": "traffic", "traffic": True},
        _sh("verify", "cfallow verify", env),
        _sh("check_installed", "cfallow check", env),
        _sh("ruleset", _ruleset(firewall), env),
    ]


def _second(install: str, firewall: str, env: dict[str, str]) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = [
        {"name": "restore", "unit": "cfallow-restore.service"},
        {"name": "timer", "unit": "cfallow.timer"},
        {"name": "nftables", "unit": "nftables.service"},
        {"name": "traffic", "traffic": True},
        _sh("start", "systemctl start cfallow.service", env),
        {"name": "service", "unit": "cfallow.service"},
        _sh("verify", "cfallow verify", env),
        _sh("check_installed", "cfallow check", env),
        _sh("ruleset", _ruleset(firewall), env),
    ]
    if install == "readme":
        steps.append(_sh("uninstall", readme_block("uninstall"), env))
        steps.append(_sh("after_uninstall", _ruleset(firewall), env))
    return steps


THIRD = [
    {"name": "nftables", "unit": "nftables.service"},
    {"name": "ruleset", "sh": "nft list ruleset"},
    {"name": "leftovers", "sh": "ls -d /opt/cfallow /etc/cfallow /var/lib/cfallow 2>&1 || true"},
]


def _variant(install: str, firewall: str) -> Any:
    group = "fresh" if install == "readme" else "fresh-deb"
    return pytest.param(
        (install, firewall),
        id=f"{install}-{firewall}",
        marks=pytest.mark.xdist_group(f"{group}-{firewall}"),
    )


#: The venv install first: test_uninstall... takes these by index (the same fixture instances).
README_VARIANTS = [_variant("readme", "nftables"), _variant("readme", "iptables")]
VARIANTS = [*README_VARIANTS, _variant("deb", "nftables"), _variant("deb", "iptables")]


def _server(
    request: pytest.FixtureRequest, install: str, base: Path
) -> tuple[FreshServer, Path | None]:
    """The venv install's server (the prepared layer), or the package's and its .deb
    (the release build; its dependencies, nftables and iptables in apt's cache)."""
    if install == "readme":
        return FreshServer(base, layers=[request.getfixturevalue("prepared")]), None
    factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
    deb = build_deb(factory.mktemp("deb"), release=True)
    assert _deb_block()[0].startswith(f"apt install ./{deb.name} "), deb.name
    return FreshServer(base, layers=[deb_layer(factory, deb)]), deb


@pytest.fixture(scope="module", params=VARIANTS)
def boots(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    offline: dict[str, str],
) -> dict[str, Any]:
    """The boots of one fresh server, ``(install, firewall)``: {"firewall", "first", ...}."""
    install, firewall = request.param
    server, deb = _server(request, install, tmp_path_factory.mktemp(f"fresh-{install}-{firewall}"))
    env = {**offline, INSTALL: install}
    out: dict[str, Any] = {"install": install, "firewall": firewall}
    with server.mounted():
        if deb is not None:  # the admin's download; apt answered yes as in the prepared layer
            server.path(PKG_DIR).mkdir(parents=True)
            shutil.copy(deb, server.path(f"{PKG_DIR}/{deb.name}"))
            server.write(offline["APT_CONFIG"], 'APT::Get::Assume-Yes "true";\n')
        out["first"] = server.boot_steps("first", _first(install, firewall, env))
        out["second"] = server.boot_steps("second", _second(install, firewall, env))
        if install == "readme" and firewall == "nftables":
            out["third"] = server.boot_steps("third", THIRD)
    return out


def _ok(res: dict[str, Any], step: str) -> dict[str, Any]:
    """A shell step that ran and exited 0 (its output otherwise)."""
    assert step in res["steps"], (step, res["steps"].keys(), res.get("failed_units"))
    got: dict[str, Any] = res["steps"][step]
    assert got["rc"] == 0, f"{step}: exit {got['rc']}\n{got['out'][-3000:]}\n{got['err'][-3000:]}"
    return got


def _clean(res: dict[str, Any], step: str) -> None:
    """A oneshot unit that ran and succeeded (its journal otherwise)."""
    got = res["steps"][step]
    show = got["show"]
    result = (show.get("Result"), show.get("ExecMainStatus"))
    assert result == ("success", "0"), f"{step}: {show}\n{got['log'][-3000:]}"


def test_readme_install_check_and_dry_run(boots: dict[str, Any]) -> None:
    first = boots["first"]
    for step in ("install", "config", "check"):
        _ok(first, step)
    assert "+ 173.245.48.0/20" in first["steps"]["check"]["out"]


def test_units_succeed_on_first_enable(boots: dict[str, Any]) -> None:
    first = boots["first"]
    _ok(first, "units")
    _clean(first, "restore")
    assert first["steps"]["restore"]["show"]["ActiveState"] == "active"
    assert first["steps"]["timer"]["show"]["ActiveState"] == "active"
    _ok(first, "start")
    _clean(first, "service")
    assert first["failed_units"].strip() == "", first["failed_units"]


def test_cloudflare_gets_in_and_an_outsider_does_not(boots: dict[str, Any]) -> None:
    want = {**dict.fromkeys(CF, True), **dict.fromkeys(OUTSIDERS, False)}
    assert boots["first"]["steps"]["traffic"] == want, boots["first"]["steps"].get("ruleset")
    assert boots["second"]["steps"]["traffic"] == want, boots["second"]["steps"].get("ruleset")


def test_verify_and_check_pass_from_the_installed_package(boots: dict[str, Any]) -> None:
    """On the first boot and after the reboot; check reads the units systemd runs."""
    # The package's units: /usr/lib/systemd/system on Debian 12 (merged /usr), /lib before.
    units = "/etc/systemd/system" if boots["install"] == "readme" else "/lib/systemd/system"
    for boot in ("first", "second"):
        _ok(boots[boot], "verify")
        out = _ok(boots[boot], "check_installed")["out"]
        for unit in ("cfallow.service", "cfallow-restore.service"):
            assert f"{units}/{unit}: ReadWritePaths cover every path" in out, out


def test_reboot_restores_the_allowlist_and_the_timer_service_runs(boots: dict[str, Any]) -> None:
    second = boots["second"]
    _clean(second, "restore")
    assert second["steps"]["timer"]["show"]["ActiveState"] == "active"
    _ok(second, "start")
    _clean(second, "service")
    if boots["firewall"] == "nftables":
        assert second["steps"]["nftables"]["show"]["ActiveState"] == "active"
        assert "table inet cfallow" in second["steps"]["ruleset"]["out"]
    else:
        assert "-A CFALLOW -s 173.245.48.0/20" in second["steps"]["ruleset"]["out"]


@pytest.mark.parametrize("boots", README_VARIANTS, indirect=True)
def test_uninstall_leaves_nothing_of_cfallows(boots: dict[str, Any]) -> None:
    """The README's uninstall; nftables: then a reboot with the admin's own ruleset."""
    _ok(boots["second"], "uninstall")
    after = _ok(boots["second"], "after_uninstall")["out"]
    assert "cfallow" not in after.lower(), after
    if boots["firewall"] == "iptables":
        return
    third = boots["third"]
    _clean(third, "nftables")
    assert third["steps"]["nftables"]["show"]["ActiveState"] == "active"
    ruleset = _ok(third, "ruleset")["out"]
    assert "table inet filter" in ruleset and "policy drop" in ruleset, ruleset
    assert "cfallow" not in ruleset, ruleset
    assert "No such file" in third["steps"]["leftovers"]["out"]
