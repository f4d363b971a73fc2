"""``cfallow`` end to end (subprocess) with the fail2ban backend on a private server.

The ranges come from a real HTTP server on 127.0.0.1 serving Cloudflare's
2021-03 answer, then today's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support import need_root, need_tool
from support.cfdata import CURRENT, OLD
from support.cli_helpers import fixture_text, run_proc, write_config
from support.fail2ban.harness import JAILS, running_server
from support.fail2ban.server import BETA_IGNORE, DEFAULT_IGNORE, F2bServer, nets

from cfallow.model import as_strings

pytestmark = pytest.mark.root

BASE = {"alpha": nets(DEFAULT_IGNORE), "beta": nets(BETA_IGNORE)}


@pytest.fixture
def f2b(tmp_path: Path) -> Iterator[F2bServer]:
    need_root()
    need_tool("fail2ban-client", "fail2ban-server", "ip")
    with running_server(tmp_path / "f2b", "f2bcli") as srv:
        yield srv


def test_sync_status_remove(f2b: F2bServer, tmp_path: Path, httpserver: HTTPServer) -> None:
    config = write_config(
        tmp_path / "config.toml",
        httpserver.url_for("").rstrip("/"),
        backends=(
            f'[backends.fail2ban]\nsocket = "{f2b.socket}"\nconfig_dir = "{f2b.conf}"\njails = []\n'
        ),
    )
    common = ("--config", str(config), "--state-dir", str(tmp_path / "state"))

    def serve(name: str) -> None:
        httpserver.clear()
        httpserver.expect_request("/client/v4/ips").respond_with_data(
            fixture_text(name), content_type="application/json"
        )

    serve("api-ips-2021-03.json")
    r = run_proc(*common, "sync", "--json")
    assert r.rc == 0, r.err
    (entry,) = r.json()["backends"]
    assert entry["name"] == "fail2ban" and entry["error"] is None
    assert entry["add"] == as_strings(OLD)
    for jail in JAILS:
        assert f2b.live(jail) == BASE[jail] | OLD

    serve("api-ips.json")
    r = run_proc(*common, "status", "--json")
    assert r.rc == 3, r.err  # the 2021 change is pending
    r = run_proc(*common, "sync", "--json")
    assert r.rc == 0, r.err
    (entry,) = r.json()["backends"]
    assert entry["add"] == ["104.16.0.0/13", "104.24.0.0/14"]
    assert entry["remove"] == ["104.16.0.0/12"]
    f2b.reload()
    for jail in JAILS:
        assert f2b.live(jail) == BASE[jail] | CURRENT

    mtime = f2b.dropin.stat().st_mtime_ns
    r = run_proc(*common, "sync", "--json")
    assert r.rc == 0 and r.json()["changed"] is False, r.out
    assert f2b.dropin.stat().st_mtime_ns == mtime

    r = run_proc(*common, "remove", "--backend", "fail2ban")
    assert r.rc == 0, r.err
    assert "fail2ban: +0 -22" in r.out + r.err
    assert not f2b.dropin.exists()
    for jail in JAILS:
        assert f2b.live(jail) == BASE[jail]


def test_an_admin_config_that_fails_on_its_own_is_blamed_not_the_dropin(
    f2b: F2bServer, tmp_path: Path, httpserver: HTTPServer
) -> None:
    """Debian's stock case: an enabled jail whose log file does not exist fails ``-t``
    without cfallow's drop-in; the dry run says so as the real run does, nothing written."""
    config = write_config(
        tmp_path / "config.toml",
        httpserver.url_for("").rstrip("/"),
        backends=(
            f'[backends.fail2ban]\nsocket = "{f2b.socket}"\nconfig_dir = "{f2b.conf}"\n'
            'jails = ["alpha"]\n'
        ),
    )
    httpserver.expect_request("/client/v4/ips").respond_with_data(
        fixture_text("api-ips.json"), content_type="application/json"
    )
    f2b.write_jail_local(
        extra=f"\n[sshd-stock]\nenabled = true\nfilter = cfa-test\nlogpath = {tmp_path}/gone.log\n"
    )
    common = ("--config", str(config), "--state-dir", str(tmp_path / "state"))
    for verb in (("sync", "--dry-run"), ("sync",)):
        r = run_proc(*common, *verb)
        assert r.rc == 1, (verb, r.out, r.err)
        errors = [ln for ln in r.err.splitlines() if "error" in ln]
        assert len(errors) == 1, r.err
        assert (
            "fails fail2ban-client -t on its own, without cfallow's zz-cfallow.local" in errors[0]
        )
        assert "Traceback" not in r.err
        assert not f2b.dropin.exists()
    assert f2b.live("alpha") == BASE["alpha"]
