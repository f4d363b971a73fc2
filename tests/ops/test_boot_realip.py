"""The real-IP backends under the shipped, hardened cfallow.service, systemd 252 as PID 1.

One boot (systemd-nspawn, overlay of /, --private-network). nginx, Apache,
HAProxy and Caddy each run as their own Debian service with their stock
configuration in /etc, plus what an admin adds once (docs/realip.md): Apache
``a2enmod remoteip`` and a ``%a`` log, HAProxy's frontend with the ``acl``
and ``set-src`` lines, Caddy's ``reverse_proxy`` importing cfallow's snippet
(an application behind it logs the forwarded client). One server at a time
(all on port 80), the probe (boot_probe_realip.py) starts it, then starts
cfallow.service with only that backend, under the unit's real sandbox
(``ProtectSystem=strict``, the system call filter, the capability bounding
set, ...): the unit exits 0, cfallow's file is in the server's real /etc
directory, the server took it (nginx and Apache: new workers, same master;
HAProxy: the runtime API, same process; Caddy: ``caddy reload`` to its admin
endpoint, same process), and requests from a client namespace behind a veth
pair claiming ``CF-Connecting-IP: 203.0.113.9`` are logged as 203.0.113.9
from a Cloudflare address and as their own address from outside, IPv4 and
IPv6.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.cfdata import CURRENT
from support.nspawn import PROBE_UNIT, Machine, need_nspawn, probe_unit

from cfallow.model import as_strings

HERE = Path(__file__).resolve().parent
SUPPORT = HERE.parent / "support"
pytestmark = [pytest.mark.xdist_group("boot-realip"), pytest.mark.root, pytest.mark.slow]

SERVERS = ("nginx", "apache", "haproxy", "caddy")
CF, OUTSIDE = ("104.16.0.10", "2400:cb00::10"), ("198.51.100.7", "2001:db8:ff::7")
CLAIM = "203.0.113.9"
UNITS = {
    PROBE_UNIT: probe_unit("Run the real-IP backends under cfallow.service, record, power off"),
    "cfallow-test-xff.service": """\
[Unit]
Description=The application behind Caddy: logs the first X-Forwarded-For entry
[Service]
ExecStart=/opt/cfallow/bin/python /opt/probe/xff_upstream.py 8081 /var/log/cftest-xff.log
[Install]
WantedBy=multi-user.target
""",
}
APACHE_LOG = 'LogFormat "%a %U" cftest\n'
HAPROXY_FRONTEND = """
frontend web
	bind :80
	bind :::80 v6only
	acl from_cf src -f /etc/haproxy/cfallow-realip.acl
	http-request set-src req.hdr(CF-Connecting-IP) if from_cf
	http-request return status 200 content-type text/plain string ok
"""
CADDYFILE = """\
:80 {
	reverse_proxy 127.0.0.1:8081 {
		import /etc/caddy/cfallow-realip*.caddy
	}
}
"""


def _prepare(m: Machine) -> None:
    m.install_cfallow()
    m.write("/etc/cfallow/config.toml", "")
    m.systemctl("unmask", "nginx.service", "apache2.service", "haproxy.service", "caddy.service")
    m.systemctl("disable", "fail2ban.service", "apache2.service", "haproxy.service")
    m.systemctl("disable", "caddy.service")
    # What the admin sets up once (docs/realip.md).
    link = m.path("/etc/apache2/mods-enabled/remoteip.load")
    if not link.exists():
        link.symlink_to("../mods-available/remoteip.load")
    m.write("/etc/apache2/conf-enabled/cftest-log.conf", APACHE_LOG)
    site = Path("/etc/apache2/sites-available/000-default.conf").read_text()
    site = site.replace("access.log combined", "cftest.log cftest")  # %a, not %h
    m.write("/etc/apache2/sites-available/000-default.conf", site)
    haproxy = Path("/etc/haproxy/haproxy.cfg").read_text()
    m.write("/etc/haproxy/haproxy.cfg", haproxy + HAPROXY_FRONTEND)
    m.write("/etc/haproxy/cfallow-realip.acl", "")  # HAProxy will not start without it
    m.write("/etc/caddy/Caddyfile", CADDYFILE)
    m.write("/opt/probe/boot_probe.py", (HERE / "boot_probe.py").read_text())
    m.write("/opt/probe/probe.py", (HERE / "boot_probe_realip.py").read_text())
    m.write("/opt/probe/xff_upstream.py", (SUPPORT / "realip" / "xff_upstream.py").read_text())
    for name, text in UNITS.items():
        m.write(f"/etc/systemd/system/{name}", text)
    m.systemctl("enable", "nginx.service", *UNITS)


@pytest.fixture(scope="module")
def realip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    need_nspawn()
    m = Machine(tmp_path_factory.mktemp("nspawn-realip"))
    with m.mounted():
        _prepare(m)
        return m.boot_probe("realip")


@pytest.mark.parametrize("server", SERVERS)
def test_hardened_unit_writes_the_trust_list_into_the_servers_etc(
    realip: dict[str, Any], server: str
) -> None:
    rec = realip[server]
    assert rec["server_start"][0] == 0, rec["server_start"]
    run = rec["run"]
    assert run["rc"] == 0, run["log"]
    u = run["unit"]
    assert (u["Result"], u["ExecMainStatus"]) == ("success", "0"), (u, run["log"])
    assert rec["list"] is not None
    assert all(c in rec["list"] for c in as_strings(CURRENT)), rec["list"]
    assert rec["server_unit"]["ActiveState"] == "active", rec["server_unit"]
    # nginx: the sandboxed unit saw the master start new workers (the reload is confirmed).
    assert "not confirmed" not in run["log"], run["log"]


@pytest.mark.parametrize("server", SERVERS)
def test_the_running_server_took_the_list_in_the_same_process(
    realip: dict[str, Any], server: str
) -> None:
    before, after = realip[server]["before"], realip[server]["after"]
    assert before["main"] == after["main"] != "0", (before, after)
    if server in ("nginx", "apache"):  # a graceful reload: new workers, same master
        assert set(after["pids"]) - set(before["pids"]), (before, after)
        assert not set(after["pids"]) & set(before["pids"]), (before, after)  # old ones ended


@pytest.mark.parametrize("server", SERVERS)
def test_server_logs_the_visitor_only_for_cloudflare_sources(
    realip: dict[str, Any], server: str
) -> None:
    expected = {**dict.fromkeys(CF, CLAIM), **{src: src for src in OUTSIDE}}
    assert realip[server]["seen"] == expected


def test_security_of_the_loaded_unit_is_at_most_2_5(realip: dict[str, Any]) -> None:
    assert isinstance(realip["security"], float) and realip["security"] <= 2.5, realip["security"]
