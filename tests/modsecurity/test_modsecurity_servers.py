"""Backend ``modsecurity`` against real Apache + mod_security2 + CRS and nginx + libmodsecurity 3
+ CRS, each started by the test from a temp dir, in a namespace pair.

The client sends from a Cloudflare edge (IPv4 and IPv6), from WARP's
104.28.0.5 (Cloudflare's only before 2021) and from outside, with
``CF-Connecting-IP`` naming a visitor. The admin's rules (support.modsecurity.lab)
answer 403 for the visitor they block and 429 for a request ModSecurity judges
as coming from an address in cfallow's list: the status says what ModSecurity
judged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from support.cfdata import CURRENT, OLD
from support.cli_helpers import fixture_text, run_cli
from support.modsecurity.lab import BLOCKED, ModsecApache, ModsecLab, ModsecNginx
from support.realip.lab import (
    CF_SRC,
    CF_SRC6,
    CLIENT,
    OUT_SRC,
    WARP_SRC,
    ServerHarness,
    cli_config,
    in_pair,
    running,
    sig,
    sync,
)

from cfallow.backend import Context, build
from cfallow.errors import ConfigError
from cfallow.testing import BackendContract

pytestmark = pytest.mark.root
LABS: dict[str, type[ModsecLab]] = {"nginx": ModsecNginx, "apache": ModsecApache}
EDGE_JUDGED = "ModSecurity's per-address rules will judge Cloudflare's edges, not visitors"
#: A foreign rule of the admin's, in the server's own syntax (conf.d/admin.conf).
FOREIGN = {
    "nginx": 'modsecurity_rules \'SecRule REMOTE_ADDR "@ipMatch 10.0.0.0/8" '
    '"id:20001,phase:1,deny,status:403"\';\n',
    "apache": 'SecRule REMOTE_ADDR "@ipMatch 10.0.0.0/8" "id:20001,phase:1,deny,status:403"\n',
}


def started(request: pytest.FixtureRequest, tmp_path: Path, *, realip: bool) -> Iterator[Any]:
    cls = LABS[request.param]
    with (
        in_pair() as (srv_ns, cli_ns),
        running(cls(tmp_path / request.param, ns=srv_ns, client_ns=cli_ns, realip=realip)) as srv,
    ):
        if realip:
            srv.sync_realip()
        srv.use_list()
        yield srv


@pytest.fixture(params=sorted(LABS))
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """The chain right: the real-IP backend's list and header, then the admin's rule."""
    yield from started(request, tmp_path, realip=True)


@pytest.fixture(params=sorted(LABS))
def no_chain(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """No real-IP module: ModSecurity sees the connection's address."""
    yield from started(request, tmp_path, realip=False)


@pytest.fixture(params=sorted(LABS))
def local(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """On 127.0.0.1, no rule naming the list (the contract removes it)."""
    with running(LABS[request.param](tmp_path / request.param)) as srv:
        yield srv


class TestModsecurityContract(BackendContract):
    @pytest.fixture
    def harness(self, local: Any) -> ServerHarness:
        return ServerHarness(local, local.root / "conf.d" / "admin.conf", FOREIGN[local.kind])


def synced(srv: Any, desired: Any) -> Any:
    gen = srv.state()
    result = sync(srv, desired)
    assert result.error is None, result.error
    srv.reloaded(gen)  # old workers gone: every answer below is the new generation's
    return result


def test_visitor_is_judged_not_the_edge_and_the_2021_change(lab: Any) -> None:
    srv = lab
    first = synced(srv, OLD)
    assert first.applied
    notes = first.plan.notes
    assert not any(EDGE_JUDGED in n for n in notes), notes
    assert srv.status("/a", src=CF_SRC, header=CLIENT) == 200  # the edge is never judged
    assert srv.status("/b", src=CF_SRC, header=BLOCKED) == 403  # blocked as the visitor
    assert srv.status("/c", src=CF_SRC6, header=CLIENT) == 200
    assert srv.status("/d", src=CF_SRC6, header=BLOCKED) == 403
    assert srv.status("/e", src=OUT_SRC, header=BLOCKED) == 200  # no spoofing from outside
    assert srv.status("/f", src=WARP_SRC) == 429  # the pre-2021 list holds 104.16.0.0/12
    assert "104.16.0.0/12" in srv.list_path.read_text()

    gen = srv.state()
    again = sync(srv, CURRENT)
    assert again.error is None and again.applied
    text = srv.list_path.read_text()
    assert "104.16.0.0/12" not in text and "104.24.0.0/14" in text
    srv.reloaded(gen)  # the sync confirmed the reload; old workers may finish a request
    assert srv.status("/g", src=WARP_SRC) == 200  # the server holds the new list
    assert srv.status("/h", src=CF_SRC, header=CLIENT) == 200
    plan = build("modsecurity", srv.section(), Context()).plan(CURRENT)
    assert not plan.changed and any(n.startswith("chain: ") for n in plan.notes), plan.notes


def test_without_the_chain_the_plan_says_so_and_the_edges_are_judged(
    no_chain: Any, caplog: pytest.LogCaptureFixture
) -> None:
    srv = no_chain
    gen = srv.state()
    first = sync(srv, OLD, log=logging.getLogger("test.modsecurity"))
    assert first.error is None and first.applied
    # Its plan could not see the chain (the rules name a file not yet there); the apply says it.
    assert sum(EDGE_JUDGED in r.getMessage() for r in caplog.records) == 1, caplog.text
    srv.reloaded(gen)
    result = synced(srv, CURRENT)
    notes = result.plan.notes
    assert sum(EDGE_JUDGED in n for n in notes) == 1, notes
    # What the note warns of: every proxied visitor is judged as the edge.
    assert srv.status("/a", src=CF_SRC, header=CLIENT) == 429
    assert srv.status("/b", src=CF_SRC, header=BLOCKED) == 429  # never seen as itself
    assert srv.status("/c", src=OUT_SRC) == 200


def test_status_states_the_chain(
    lab: Any, tmp_path: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = cli_config(tmp_path, httpserver.url_for("").rstrip("/"), lab)
    common = ("--config", str(config), "--state-dir", str(tmp_path / "state"))
    httpserver.expect_request("/client/v4/ips").respond_with_data(
        fixture_text("api-ips.json"), content_type="application/json"
    )
    assert run_cli(capsys, *common, "sync").rc == 0
    out = run_cli(capsys, *common, "status")
    assert out.rc == 0, out.err
    said = [ln for ln in out.out.splitlines() if "note: chain: " in ln]
    assert len(said) == 1 and "kept by cfallow" in said[0], out.out


def generation(srv: Any) -> object:
    """What a reload changes: nginx's workers; Apache's AH00489 notices (its event MPM
    spawns children on its own, so its children say nothing)."""
    if srv.kind == "nginx":
        return srv.state()
    return srv.master_pid(), (srv.root / "error.log").read_text().count("AH00489")


def test_second_sync_writes_nothing_and_reloads_nothing(lab: Any) -> None:
    synced(lab, CURRENT)
    before = (sig(lab.list_path), generation(lab), lab.reloads())
    again = sync(lab, CURRENT)
    assert again.error is None and not again.changed and not again.applied
    assert (sig(lab.list_path), generation(lab), lab.reloads()) == before


def test_html_or_empty_list_never_reaches_the_file(
    lab: Any, tmp_path: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = cli_config(tmp_path, httpserver.url_for("").rstrip("/"), lab)
    common = ("--config", str(config), "--state-dir", str(tmp_path / "state"))
    httpserver.expect_request("/client/v4/ips").respond_with_data(
        fixture_text("api-ips.json"), content_type="application/json"
    )
    gen = lab.state()
    assert run_cli(capsys, *common, "sync").rc == 0
    lab.reloaded(gen)
    before, reloads = lab.list_path.read_bytes(), lab.reloads()
    page = "<!DOCTYPE html><html><head><title>Just a moment...</title></head></html>\n"
    empty = '{"result": {"ipv4_cidrs": [], "ipv6_cidrs": [], "etag": "e"}, "success": true}'
    for body, kind in ((page, "text/html"), (empty, "application/json")):
        httpserver.clear()
        httpserver.expect_request("/client/v4/ips").respond_with_data(body, content_type=kind)
        for path in ("/ips-v4", "/ips-v6"):
            httpserver.expect_request(path).respond_with_data("" if "{" in body else body)
        result = run_cli(capsys, *common, "sync")
        assert result.rc == 4, result.err
        assert lab.list_path.read_bytes() == before
        assert lab.reloads() == reloads
    assert lab.status("/a", src=CF_SRC, header=BLOCKED) == 403


def test_candidate_the_engine_refuses_leaves_the_live_file(
    lab: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A candidate line ModSecurity refuses (v2 and v3 both refuse a hex-only word)."""
    synced(lab, OLD)
    before, state, reloads = lab.list_path.read_bytes(), generation(lab), lab.reloads()
    from cfallow.backends.modsecurity.backend import ModsecurityBackend

    real = ModsecurityBackend.render_body
    monkeypatch.setattr(ModsecurityBackend, "render_body", lambda s, c: real(s, c) + "bad0ff\n")
    result = sync(lab, CURRENT)
    assert result.error is not None and "rejects the configuration" in result.error
    assert lab.list_path.read_bytes() == before
    assert (generation(lab), lab.reloads()) == (state, reloads)
    assert lab.status("/a", src=CF_SRC, header=CLIENT) == 200
    assert lab.status("/b", src=WARP_SRC) == 429  # still the old list


def test_an_exempting_rule_is_refused(lab: Any) -> None:
    synced(lab, OLD)
    before, reloads = lab.list_path.read_bytes(), lab.reloads()
    lab.admin_rules.write_text(
        lab.admin_rules.read_text() + f'SecRule REMOTE_ADDR "@ipMatchFromFile {lab.list_path}" \\\n'
        '    "id:10003,phase:1,pass,nolog,ctl:ruleEngine=Off"\n'
    )
    result = sync(lab, CURRENT)
    assert result.error is not None and "exempts the addresses" in result.error
    assert "admin.rules:" in result.error
    assert lab.list_path.read_bytes() == before and lab.reloads() == reloads


def test_a_config_asking_for_an_exemption_is_refused() -> None:
    for key, value in (("exempt", True), ("rule_engine", "Off")):
        with pytest.raises(ConfigError, match="does not exempt Cloudflare's ranges"):
            build("modsecurity", {"server": "nginx", key: value}, Context())
    with pytest.raises(ConfigError, match='say which server runs ModSecurity: "apache" or'):
        build("modsecurity", {}, Context())


@pytest.fixture
def nginx_lab(tmp_path: Path) -> Iterator[Any]:
    with (
        in_pair() as (srv_ns, cli_ns),
        running(ModsecNginx(tmp_path / "nginx", ns=srv_ns, client_ns=cli_ns)) as srv,
    ):
        srv.sync_realip()
        srv.use_list()
        yield srv


def test_nginx_real_ip_header_in_a_location_is_a_broken_chain(nginx_lab: Any) -> None:
    """realip set in a location acts after the connector handed the request to ModSecurity."""
    srv = nginx_lab
    synced(srv, OLD)
    header = srv.root / "conf.d" / "cfallow-realip-header.conf"
    header.write_text("# the admin moved it into the location\n")  # theirs to edit
    srv.conf.write_text(
        srv.conf.read_text().replace(
            "location / {", "location / { real_ip_header CF-Connecting-IP; real_ip_recursive on;"
        )
    )
    srv.reload_by_hand()
    plan = build("modsecurity", srv.section(), Context()).plan(CURRENT)
    said = [n for n in plan.notes if EDGE_JUDGED in n]
    assert len(said) == 1 and "real_ip_header is set in a location block" in said[0], plan.notes
    assert srv.status("/a", src=CF_SRC, header=CLIENT) == 429  # the edge was judged
    assert srv.status("/b", src=CF_SRC, header=BLOCKED) == 429
