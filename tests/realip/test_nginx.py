"""Backend ``nginx`` against a real nginx (Debian's package) started by the test.

Traffic goes over a veth pair between two namespaces: the client sends from a
Cloudflare address, from an outside address and from a WARP address
(104.28.0.0/14, trusted only by the pre-2021 list), all with
``CF-Connecting-IP: 203.0.113.9``; nginx's access log says who it believed.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support.cfdata import CURRENT, OLD
from support.cli_helpers import fixture_text, run_cli
from support.realip.lab import (
    CF_SRC,
    CF_SRC6,
    CLIENT,
    OUT_SRC,
    OUT_SRC6,
    WARP_SRC,
    ServerHarness,
    check_sync_returns_with_new_workers,
    cli_config,
    in_pair,
    opened_during,
    port_in_use,
    running,
    sig,
    sync,
    synced_to_old,
    wait_for,
)
from support.realip.nginx import Nginx

from cfallow.backend import Context, build
from cfallow.errors import TargetMoved
from cfallow.model import Desired
from cfallow.testing import BackendContract

pytestmark = pytest.mark.root
ADMIN = "set_real_ip_from 10.0.0.0/8;\n"


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    with running(Nginx(tmp_path / "nginx")) as srv:
        yield srv


@pytest.fixture
def paired(tmp_path: Path) -> Iterator[Nginx]:
    with (
        in_pair() as (srv_ns, cli_ns),
        running(Nginx(tmp_path / "nginx", ns=srv_ns, client_ns=cli_ns)) as srv,
    ):
        yield srv


class TestNginxContract(BackendContract):
    @pytest.fixture
    def harness(self, nginx: Nginx) -> ServerHarness:
        return ServerHarness(nginx, nginx.root / "conf.d" / "admin.conf", ADMIN)


def test_real_ip_from_cloudflare_only_and_2021_change(paired: Nginx) -> None:
    srv = paired
    assert srv.seen_as(CF_SRC) == CF_SRC  # nothing trusted yet
    gen0 = srv.state()
    first = sync(srv, CURRENT)
    assert first.error is None and first.applied
    srv.reloaded(gen0)
    assert srv.state()[0] == gen0[0]
    assert srv.list_path.read_text().count("set_real_ip_from") == len(CURRENT)
    assert "# source etag: test-etag" in srv.list_path.read_text()
    assert "real_ip_header CF-Connecting-IP;" in srv.header_path.read_text()
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


def test_second_sync_writes_nothing_and_does_not_reload(nginx: Nginx) -> None:
    gen = nginx.state()
    assert sync(nginx, CURRENT).applied
    nginx.reloaded(gen)
    before = (sig(nginx.list_path), sig(nginx.header_path), nginx.state(), nginx.reloads())
    again = sync(nginx, CURRENT)
    assert again.error is None and not again.changed and not again.applied
    after = (sig(nginx.list_path), sig(nginx.header_path), nginx.state(), nginx.reloads())
    assert after == before
    result, opened = opened_during(lambda: sync(nginx, CURRENT))
    assert not result.changed
    assert [p for p in opened if p.startswith(str(nginx.root))] == [str(nginx.list_path)]


def test_files_that_moved_between_plan_and_apply_are_targetmoved_with_nothing_written(
    nginx: Nginx,
) -> None:
    """Every file of a plan is checked before any is written; the engine then re-plans."""
    first = build("nginx", nginx.section(), Context()).plan(Desired(OLD, "e1"))
    nginx.header_path.write_text("real_ip_header X-Forwarded-For;\n")  # the admin, meanwhile
    reloads = nginx.reloads()
    with pytest.raises(TargetMoved, match="changed since it was read"):
        build("nginx", nginx.section(), Context()).apply(first)
    assert not nginx.list_path.exists()  # the list's step came first, and was not written
    assert nginx.reloads() == reloads
    assert sync(nginx, OLD).applied
    plan = build("nginx", nginx.section(), Context()).plan(Desired(CURRENT, "e2"))
    edited = nginx.list_path.read_bytes() + b"set_real_ip_from 192.0.2.0/24;\n"
    nginx.list_path.write_bytes(edited)
    reloads = nginx.reloads()
    with pytest.raises(TargetMoved):
        build("nginx", nginx.section(), Context()).apply(plan)
    assert nginx.list_path.read_bytes() == edited and nginx.reloads() == reloads
    assert not nginx.list_path.with_name(f".{nginx.list_path.name}.cfallow-reload").exists()
    done = sync(nginx, CURRENT)  # the engine reads again and re-plans
    assert done.error is None and done.applied
    assert b"192.0.2.0/24" not in nginx.list_path.read_bytes()
    assert nginx.header_path.read_text() == "real_ip_header X-Forwarded-For;\n"


def test_edited_header_file_is_kept_on_remove(nginx: Nginx) -> None:
    assert sync(nginx, CURRENT).applied
    nginx.header_path.write_text("real_ip_header X-Forwarded-For;\n")
    again = sync(nginx, CURRENT)
    assert again.error is None and not again.changed  # written once, never rewritten
    done = sync(nginx, None)
    assert done.error is None and done.applied
    assert not nginx.list_path.exists()
    assert nginx.header_path.read_text() == "real_ip_header X-Forwarded-For;\n"


def test_broken_admin_config_blocks_the_change(
    nginx: Nginx, tmp_path: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The admin's config fails nginx -t once the list changes: nothing written, no reload."""
    config = cli_config(tmp_path, httpserver.url_for("").rstrip("/"), nginx)
    common = ("--config", str(config), "--state-dir", str(tmp_path / "state"))
    httpserver.expect_request("/client/v4/ips").respond_with_data(
        fixture_text("api-ips-2021-03.json"), content_type="application/json"
    )
    gen = nginx.state()
    assert run_cli(capsys, *common, "sync").rc == 0
    nginx.reloaded(gen)
    old = nginx.list_path.read_bytes()
    (nginx.root / "conf.d" / "admin.conf").write_text("bogus_directive on;\n")
    state, reloads = nginx.state(), nginx.reloads()

    httpserver.clear()
    httpserver.expect_request("/client/v4/ips").respond_with_data(
        fixture_text("api-ips.json"), content_type="application/json"
    )
    result = run_cli(capsys, *common, "sync")
    assert result.rc == 1
    assert 'unknown directive "bogus_directive"' in result.err
    assert "before cfallow changes anything" in result.err
    assert nginx.list_path.read_bytes() == old
    assert (nginx.state(), nginx.reloads()) == (state, reloads)
    assert nginx.get() == "ok\n"


def test_rejected_candidate_is_taken_back(nginx: Nginx) -> None:
    """nginx rejects cfallow's header next to the admin's own: both files go, no reload."""
    (nginx.root / "conf.d" / "admin.conf").write_text("real_ip_recursive off;\n")
    reloads = nginx.reloads()
    result = sync(nginx, CURRENT)
    assert result.error is not None and not result.applied
    assert '"real_ip_recursive" directive is duplicate' in result.error
    assert not nginx.list_path.exists() and not nginx.header_path.exists()
    assert nginx.reloads() == reloads
    assert nginx.get() == "ok\n"
    ok = sync(nginx, CURRENT, header_file="")  # the admin sets the header themselves
    assert ok.error is None and ok.applied and not nginx.header_path.exists()


def test_failed_reload_restores_the_old_bytes(nginx: Nginx) -> None:
    gen = nginx.state()
    assert sync(nginx, OLD).applied
    nginx.reloaded(gen)
    old, state = nginx.list_path.read_bytes(), nginx.state()
    bad_reload = ["nginx", *nginx.options(), "-g", "pid /nonexistent/x.pid;", "-s", "reload"]
    result = sync(nginx, CURRENT, reload_command=bad_reload)
    assert result.error is not None and "nginx reload failed" in result.error
    assert '"pid" directive is duplicate' in result.error
    assert nginx.list_path.read_bytes() == old
    assert nginx.state() == state
    assert nginx.get() == "ok\n"


def test_list_nginx_never_reads_is_an_error(nginx: Nginx) -> None:
    result = sync(nginx, CURRENT, path=str(nginx.root / "elsewhere.conf"))
    assert result.error is not None and "nginx does not read" in result.error
    assert not (nginx.root / "elsewhere.conf").exists()


def test_remove_checks_the_config_without_the_files(nginx: Nginx) -> None:
    gen = nginx.state()
    assert sync(nginx, CURRENT).applied
    nginx.reloaded(gen)
    # An include naming the file itself: nginx fails without it, so removal is refused.
    pinned = nginx.root / "pinned.conf"
    pinned.write_text(f"include {nginx.list_path};\n")
    text = nginx.conf.read_text()
    nginx.conf.write_text(text.replace("http {\n", f"http {{\n    include {pinned};\n", 1))
    before = nginx.list_path.read_bytes()
    refused = sync(nginx, None)
    assert refused.error is not None and "open()" in refused.error
    assert nginx.list_path.read_bytes() == before and nginx.header_path.exists()
    nginx.conf.write_text(text)
    done = sync(nginx, None)
    assert done.error is None and done.applied
    assert not nginx.list_path.exists() and not nginx.header_path.exists()
    assert nginx.get() == "ok\n"


def test_challenge_page_never_reaches_the_file(
    nginx: Nginx, tmp_path: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The HTML challenge page as the source: exit 4, the list file byte for byte, no reload."""
    config = cli_config(tmp_path, httpserver.url_for("").rstrip("/"), nginx)
    common = ("--config", str(config), "--state-dir", str(tmp_path / "state"))
    httpserver.expect_request("/client/v4/ips").respond_with_data(
        fixture_text("api-ips.json"), content_type="application/json"
    )
    gen = nginx.state()
    assert run_cli(capsys, *common, "sync").rc == 0
    assert "# source etag: 38f79d050aa027e3be3865e495dcc9bc" in nginx.list_path.read_text()
    nginx.reloaded(gen)
    before, reloads = nginx.list_path.read_bytes(), nginx.reloads()
    page = "<!DOCTYPE html><html><head><title>Just a moment...</title></head></html>\n"
    httpserver.clear()
    for path in ("/client/v4/ips", "/ips-v4", "/ips-v6"):
        httpserver.expect_request(path).respond_with_data(page, content_type="text/html")
    result = run_cli(capsys, *common, "sync")
    assert result.rc == 4, result.err
    assert nginx.list_path.read_bytes() == before
    assert nginx.reloads() == reloads


def test_sync_returns_once_the_new_workers_run(nginx: Nginx) -> None:
    check_sync_returns_with_new_workers(nginx)


def test_the_first_request_after_a_sync_is_judged_by_the_new_list(paired: Nginx) -> None:
    """Once a sync returns, no worker of the old configuration takes a connection: a
    request right after each of 8 syncs alternating the lists (no waiting for the server)
    is judged by the list just written. nginx's old workers take connections for about
    0.1 s after the new ones start, until the parent tells them to finish."""
    for i in range(8):
        old = i % 2 == 0
        assert sync(paired, OLD if old else CURRENT).applied, i
        # 104.28.0.5 is in the pre-2021 list only: believed exactly when that list is loaded
        assert paired.seen_as(WARP_SRC) == (CLIENT if old else WARP_SRC), f"sync {i}"


def test_reload_the_master_refuses_is_an_error_and_the_old_list_stays(nginx: Nginx) -> None:
    # nginx -T tolerates "address in use"; the master's reload does not: it logs
    # the bind error, keeps its old workers, and `nginx -s reload` still exits 0.
    old, state = synced_to_old(nginx)
    with port_in_use() as port:
        admin = nginx.root / "conf.d" / "admin.conf"
        admin.write_text(f"server {{ listen 127.0.0.1:{port}; return 204; }}\n")
        result = sync(nginx, CURRENT, reload_wait=1.0)
    assert result.error is not None, result
    assert "did not take the new configuration" in result.error
    assert f"parent process (pid {state[0]}) started no new worker within 1 s" in result.error
    assert "Address already in use" in (nginx.root / "error.log").read_text()
    assert nginx.list_path.read_bytes() == old
    assert nginx.state() == state
    assert nginx.seen_as("127.0.0.1") == "127.0.0.1"


def test_master_started_with_another_config_is_refused_before_any_reload(
    nginx: Nginx,
) -> None:
    # Same pid file, but the running master reads a file without conf.d: a
    # reload would load that, and cfallow's list would never be in effect.
    other = nginx.root / "other.conf"
    other.write_text(nginx.conf.read_text().replace(f"include {nginx.root}/conf.d/*.conf;", ""))
    nginx.stop()
    argv = ["nginx", "-p", str(nginx.root), "-c", str(other), "-e", str(nginx.root / "error.log")]
    subprocess.run(argv, check=True, capture_output=True)
    wait_for(nginx.ready, "nginx on other.conf")
    state, reloads = nginx.state(), nginx.reloads()
    result = sync(nginx, CURRENT)
    assert result.error is not None, result
    assert f"the running nginx (pid {state[0]}) reads {other}, but cfallow tests" in result.error
    assert f'options = ["-c", "{other}"]' in result.error
    assert not nginx.list_path.exists() and not nginx.header_path.exists()
    assert (nginx.state(), nginx.reloads()) == (state, reloads)


def test_reload_nobody_can_confirm_warns_and_succeeds(
    nginx: Nginx, caplog: pytest.LogCaptureFixture
) -> None:
    # nginx elsewhere (a container, say): a custom reload command, no pid file here.
    pid_file = nginx.root / "nginx.pid"
    pid = nginx.master_pid()
    hidden = pid_file.with_name("nginx.pid.moved")
    pid_file.rename(hidden)
    try:
        reload = ["/bin/kill", "-HUP", str(pid)]
        result = sync(nginx, CURRENT, reload_command=reload, log=logging.getLogger("test.realip"))
    finally:
        hidden.rename(pid_file)
    assert result.error is None and result.applied
    said = "reload sent, not confirmed: cannot see nginx's parent process and its workers"
    assert f"{said} (no pid in {pid_file})" in caplog.text
