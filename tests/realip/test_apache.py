"""Backend ``apache`` against a real Apache (Debian's apache2, mod_remoteip) started by the test.

Same traffic as the nginx tests: a veth pair, sources inside a Cloudflare
range, outside, and in 104.28.0.0/14, each claiming ``CF-Connecting-IP:
203.0.113.9``; Apache's access log (``%a``) says who it believed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support.cfdata import CURRENT, OLD
from support.cli_helpers import fixture_text, run_cli
from support.realip.apache import Apache
from support.realip.lab import (
    CF_SRC,
    CF_SRC6,
    CLIENT,
    OUT_SRC,
    OUT_SRC6,
    WARP_SRC,
    ServerHarness,
    cli_config,
    in_pair,
    running,
    sig,
    sync,
)

from cfallow.testing import BackendContract

pytestmark = pytest.mark.root
ADMIN = "RemoteIPInternalProxy 10.0.0.0/8\n"


@pytest.fixture
def apache(tmp_path: Path) -> Iterator[Apache]:
    with running(Apache(tmp_path / "apache")) as srv:
        yield srv


@pytest.fixture
def paired(tmp_path: Path) -> Iterator[Apache]:
    with (
        in_pair() as (srv_ns, cli_ns),
        running(Apache(tmp_path / "apache", ns=srv_ns, client_ns=cli_ns)) as srv,
    ):
        yield srv


class TestApacheContract(BackendContract):
    @pytest.fixture
    def harness(self, apache: Apache) -> ServerHarness:
        return ServerHarness(apache, apache.root / "conf.d" / "admin.conf", ADMIN)


def test_real_ip_from_cloudflare_only_and_2021_change(paired: Apache) -> None:
    srv = paired
    assert srv.seen_as(CF_SRC) == CF_SRC  # nothing trusted yet
    gen = srv.state()
    first = sync(srv, CURRENT)
    assert first.error is None and first.applied
    srv.reloaded(gen)
    assert srv.state()[0] == gen[0] and srv.reloads() == 1
    assert srv.list_path.read_text().count("/") == len(CURRENT)
    assert "RemoteIPHeader CF-Connecting-IP" in srv.header_path.read_text()
    assert srv.seen_as(CF_SRC) == CLIENT
    assert srv.seen_as(OUT_SRC) == OUT_SRC  # no spoofing from outside
    assert srv.seen_as(WARP_SRC) == WARP_SRC
    assert srv.seen_as(CF_SRC6) == CLIENT  # IPv6 ranges too
    assert srv.seen_as(OUT_SRC6) == OUT_SRC6

    gen = srv.state()
    assert sync(srv, OLD).error is None
    srv.reloaded(gen)
    assert srv.seen_as(WARP_SRC) == CLIENT  # the old list trusted 104.16.0.0/12
    gen = srv.state()
    assert sync(srv, CURRENT).error is None
    srv.reloaded(gen)
    assert srv.seen_as(WARP_SRC) == WARP_SRC  # 104.28.0.0/14 no longer trusted
    assert srv.seen_as(CF_SRC) == CLIENT


def test_second_sync_writes_nothing_and_does_not_reload(apache: Apache) -> None:
    gen = apache.state()
    assert sync(apache, CURRENT).applied
    apache.reloaded(gen)
    before = (sig(apache.list_path), sig(apache.header_path), apache.state(), apache.reloads())
    again = sync(apache, CURRENT)
    assert again.error is None and not again.changed and not again.applied
    after = (sig(apache.list_path), sig(apache.header_path), apache.state(), apache.reloads())
    assert after == before


def test_broken_admin_config_blocks_the_change(
    apache: Apache, tmp_path: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = cli_config(tmp_path, httpserver.url_for("").rstrip("/"), apache)
    common = ("--config", str(config), "--state-dir", str(tmp_path / "state"))
    httpserver.expect_request("/client/v4/ips").respond_with_data(
        fixture_text("api-ips-2021-03.json"), content_type="application/json"
    )
    gen = apache.state()
    assert run_cli(capsys, *common, "sync").rc == 0
    apache.reloaded(gen)
    old = apache.list_path.read_bytes()
    (apache.root / "conf.d" / "admin.conf").write_text("BogusDirective on\n")
    state, reloads = apache.state(), apache.reloads()
    httpserver.clear()
    httpserver.expect_request("/client/v4/ips").respond_with_data(
        fixture_text("api-ips.json"), content_type="application/json"
    )
    result = run_cli(capsys, *common, "sync")
    assert result.rc == 1
    assert "Invalid command 'BogusDirective'" in result.err
    assert apache.list_path.read_bytes() == old
    assert (apache.state(), apache.reloads()) == (state, reloads)
    assert apache.get() is not None


def test_without_mod_remoteip_the_files_are_taken_back(apache: Apache) -> None:
    apache.conf.write_text(apache.conf.read_text().replace("LoadModule remoteip_module", "#"))
    result = sync(apache, CURRENT)
    assert result.error is not None and "Invalid command 'RemoteIPHeader'" in result.error
    assert not apache.list_path.exists() and not apache.header_path.exists()
    assert apache.reloads() == 0
    assert apache.get() is not None


def test_failed_reload_restores_the_old_bytes(apache: Apache) -> None:
    gen = apache.state()
    assert sync(apache, OLD).applied
    apache.reloaded(gen)
    old, state = apache.list_path.read_bytes(), apache.state()
    bad = ["apache2", "-f", str(apache.root / "missing.conf"), "-k", "graceful"]
    result = sync(apache, CURRENT, reload_command=bad)
    assert result.error is not None and "Apache reload failed" in result.error
    assert "missing.conf" in result.error
    assert apache.list_path.read_bytes() == old
    assert apache.state() == state


def test_remove_checks_the_config_without_the_files(apache: Apache) -> None:
    gen = apache.state()
    assert sync(apache, CURRENT).applied
    apache.reloaded(gen)
    pinned = apache.root / "conf.d" / "pinned.conf"
    pinned.write_text(f"RemoteIPTrustedProxyList {apache.list_path}\n")
    before = apache.list_path.read_bytes()
    refused = sync(apache, None)
    assert refused.error is not None and "Could not open file" in refused.error
    assert apache.list_path.read_bytes() == before and apache.header_path.exists()
    pinned.unlink()
    done = sync(apache, None)
    assert done.error is None and done.applied
    assert not apache.list_path.exists() and not apache.header_path.exists()


def test_list_apache_never_reads_is_an_error(apache: Apache) -> None:
    result = sync(apache, CURRENT, header_file="")
    assert result.error is not None and "Apache does not read" in result.error
    assert not apache.list_path.exists()
    (apache.root / "conf.d" / "own.conf").write_text(
        f"RemoteIPHeader CF-Connecting-IP\nRemoteIPTrustedProxyList {apache.list_path}\n"
    )
    ok = sync(apache, CURRENT, header_file="")  # the admin's own lines name the list
    assert ok.error is None and ok.applied and not apache.header_path.exists()
