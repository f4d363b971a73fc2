"""Hostile sources: URL parser differences, downgrades, proxies and the CA bundle.

The real CLI (in-process, so the socket layer can be watched) fetches from
pytest-httpserver on 127.0.0.1 into the test-only fake backend. Every test runs
under :class:`LoopbackOnly`: a connection or name lookup aimed anywhere but
loopback is recorded and refused inside this process, never sent. The
assertions are on what the servers logged and what the process tried.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support.cfdata import CURRENT
from support.cli_helpers import Result, fixture_text, run_cli, run_proc, write_config
from support.loopback import LoopbackOnly, RecordingProxy, tls_server

from cfallow.errors import FetchError
from cfallow.fetch import http

API = "/client/v4/ips"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
ENV_VARS = (*PROXY_VARS, "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch) -> LoopbackOnly:
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    return LoopbackOnly(monkeypatch)


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    p = RecordingProxy()
    yield p
    p.close()


class Box:
    def __init__(self, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp, self.capsys = tmp, capsys
        self.target = tmp / "target.json"
        self.state = tmp / "state"

    def configure(self, base: str, **source: object) -> None:
        write_config(
            self.tmp / "config.toml",
            base,
            backends=f'[backends.fake]\npath = "{self.target}"\n',
            attempts=1,
            **source,
        )

    def cli(self, *args: str) -> Result:
        cfg = str(self.tmp / "config.toml")
        return run_cli(self.capsys, "--config", cfg, "--state-dir", str(self.state), *args)

    def owned(self) -> set[str]:
        return set(json.loads(self.target.read_text())["owned"])


@pytest.fixture
def box(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Box:
    return Box(tmp_path, capsys)


def _error_lines(r: Result) -> list[str]:
    assert "Traceback" not in r.err, r.err
    return [ln for ln in r.err.splitlines() if ln.startswith("cfallow: error:")]


def _serve_good_list(server: HTTPServer) -> None:
    server.expect_request(API).respond_with_data(
        fixture_text("api-ips.json"), content_type="application/json"
    )


def _hostile_list() -> str:
    doc = json.loads(fixture_text("api-ips.json"))
    doc["result"]["ipv4_cidrs"].append("45.0.0.0/8")
    return json.dumps(doc)


# Each of these reads as 127.0.0.1 to one parser and as somewhere else to another,
# or carries characters the parsers treat differently.
PARSER_TRICKS = {
    "backslash before @": "http://45.1.2.3:8081\\@127.0.0.1/client/v4/ips",
    "backslash as a slash": "http://127.0.0.1\\@45.1.2.3/client/v4/ips",
    "semicolon userinfo": "http://45.1.2.3;@127.0.0.1/client/v4/ips",
    "encoded slash userinfo": "http://127.0.0.1%2f@45.1.2.3/client/v4/ips",
    "credentials": "http://user:pw@127.0.0.1/client/v4/ips",
    "tab in the host": "http://45.1.2.3\t.127.0.0.1/client/v4/ips",
    "space": "http://127.0.0.1 @45.1.2.3/client/v4/ips",
}
# These a test server cannot even send as a Location (werkzeug refuses to build them).
UNSENDABLE = [
    "http://127.0.0.1:8081:80/client/v4/ips",  # two ports
    "http://127\u30020.0.1/x",  # IDNA would map the ideographic full stop to "."
    "http://127.0.0.1\x00.45.1.2.3/x",
]


@pytest.mark.parametrize("case", PARSER_TRICKS)
def test_a_redirect_the_parsers_read_differently_is_refused_before_connecting(
    box: Box, httpserver: HTTPServer, net: LoopbackOnly, case: str
) -> None:
    """The mirror redirects to a URL urlsplit reads as loopback; nothing else is contacted."""
    httpserver.expect_request(API).respond_with_data(
        "", status=302, headers={"Location": PARSER_TRICKS[case]}
    )
    httpserver.expect_request("/client/v4/evil").respond_with_data(_hostile_list())
    box.configure(httpserver.url_for("").rstrip("/"))
    first = box.cli("sync")  # no last-known-good yet: a refused source means the snapshot
    assert first.rc == 0 and "using the bundled snapshot" in first.err
    assert "refusing URL" in first.err
    # Only the mirror itself was asked, once for the API and once per text list.
    assert [req.path for req, _ in httpserver.log] == [API, "/ips-v4"]
    assert net.outside() == [], net.outside()
    assert box.owned() == {str(n) for n in CURRENT}


def test_the_reported_attack_urls_refused_with_nothing_fetched_anywhere(
    box: Box, httpserver: HTTPServer, net: LoopbackOnly
) -> None:
    """``http://45.1.2.3:8081\\@127.0.0.1/...`` as the configured source: exit 4, one line."""
    _serve_good_list(httpserver)
    box.configure(httpserver.url_for("").rstrip("/"))
    assert box.cli("sync").rc == 0  # a last-known-good list, so no snapshot fallback
    before = box.target.read_bytes()
    httpserver.clear_log()
    net.connects.clear()
    hostile = "http://45.1.2.3:8081\\@127.0.0.1"
    (box.tmp / "config.toml").write_text(
        f"[source]\napi_url = {json.dumps(hostile + API)}\nattempts = 1\ntimeout = 1\n"
        f"text_urls = {json.dumps([hostile + '/ips-v4', hostile + '/ips-v6'])}\n"
        f'[backends.fake]\npath = "{box.target}"\n'
    )
    r = box.cli("sync")
    assert r.rc == 4
    line, held = _error_lines(r)  # the backends are held at the last-known-good list
    assert "backends held at the last-known-good list of" in held
    assert "refusing URL 'http://45.1.2.3:8081\\\\@127.0.0.1/client/v4/ips'" in line
    assert "contains '\\\\'" in line
    assert net.connects == [] and net.outside() == []  # refused before any connection
    assert httpserver.log == []
    assert box.target.read_bytes() == before


def test_an_https_source_may_not_redirect_to_http_even_on_loopback(
    box: Box,
    httpserver: HTTPServer,
    net: LoopbackOnly,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _serve_good_list(httpserver)
    plain = httpserver.url_for(API)
    with tls_server(tmp_path) as (secure, ca_file):
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
        secure.expect_request(API).respond_with_data("", status=301, headers={"Location": plain})
        secure.expect_request("/ok").respond_with_data(fixture_text("api-ips.json"))
        base = secure.url_for("").rstrip("/")
        assert base.startswith("https://127.0.0.1:")
        with pytest.raises(FetchError, match="may not leave https://"):
            http.get(f"{base}{API}", timeout=2, attempts=1, backoff=0)
        assert [req.path for req, _ in secure.log] == [API]
        assert httpserver.log == []  # the cleartext mirror was never asked
        # The CA bundle from the environment is what verified the https hop:
        assert http.get(f"{base}/ok", timeout=2, attempts=1, backoff=0).status == 200
        box.configure(base)
        r = box.cli("ranges")
        assert r.rc == 4 and len(_error_lines(r)) == 1
    assert net.outside() == []


def test_a_loopback_source_never_goes_through_the_proxy(
    box: Box,
    httpserver: HTTPServer,
    net: LoopbackOnly,
    proxy: RecordingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(var, proxy.url)
    _serve_good_list(httpserver)
    box.configure(httpserver.url_for("").rstrip("/"))
    r = box.cli("sync")
    assert r.rc == 0, r.err
    assert "bundled snapshot" not in r.err
    assert [req.path for req, _ in httpserver.log] == [API]
    assert proxy.lines == []
    assert box.owned() == {str(n) for n in CURRENT}


def test_an_https_source_elsewhere_uses_the_environments_proxy(
    box: Box, net: LoopbackOnly, proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real Cloudflare URL goes to HTTPS_PROXY as a CONNECT tunnel (here: refused, 403)."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    (box.tmp / "config.toml").write_text("[source]\nattempts = 1\ntimeout = 2\n")
    r = box.cli("ranges")
    assert r.rc == 4
    (line,) = _error_lines(r)
    assert "api.cloudflare.com" in line
    assert [ln.rsplit(" ", 1)[0] for ln in proxy.lines] == [
        "CONNECT api.cloudflare.com:443",
        "CONNECT www.cloudflare.com:443",
    ]
    assert net.outside() == []  # no connection nor lookup but the proxy on 127.0.0.1
    monkeypatch.setenv("NO_PROXY", "cloudflare.com")
    proxy.lines.clear()
    r = box.cli("ranges")
    assert r.rc == 4 and proxy.lines == []
    assert "api.cloudflare.com" in net.outside()  # it tried DNS itself (and was stopped here)


def test_a_missing_ca_bundle_is_one_line_exit_2(tmp_path: Path) -> None:
    """A subprocess, so "no traceback" is real; the source is https on 127.0.0.1."""
    config = write_config(tmp_path / "config.toml", "https://127.0.0.1:9", attempts=1)
    r = run_proc(
        "--config",
        str(config),
        "--state-dir",
        str(tmp_path / "state"),
        "sync",
        "--backend",
        "fake",
        env={"REQUESTS_CA_BUNDLE": "/nonexistent"},
    )
    assert r.rc == 2, r.err
    assert r.err.splitlines() == [
        "cfallow: error: REQUESTS_CA_BUNDLE=/nonexistent: no such file or directory (a CA bundle)"
    ]
    assert not (tmp_path / "state" / "last-known-good.json").exists()


@pytest.mark.parametrize(
    "url",
    [
        "https://api.cloudflare.com/client/v4/ips",
        "http://127.0.0.1:8080/x",
        "http://[::1]:8080/x",
        "http://localhost/x",
        "HTTPS://API.CLOUDFLARE.COM/client/v4/ips",
    ],
)
def test_ordinary_urls_pass_the_check(url: str) -> None:
    target = http.check_url(url)
    assert target.scheme in ("http", "https")
    assert target.loopback == (target.host in ("127.0.0.1", "::1", "localhost"))


@pytest.mark.parametrize(
    "url",
    [
        *PARSER_TRICKS.values(),
        *UNSENDABLE,
        "ftp://127.0.0.1/x",
        "http://api.cloudflare.com/client/v4/ips",
        "http:///x",
    ],
)
def test_hostile_urls_fail_the_check(url: str) -> None:
    with pytest.raises(FetchError, match="refusing URL"):
        http.check_url(url)


def test_downgrade_rule_follows_each_hop() -> None:
    first = http.check_url("https://api.cloudflare.com/a")
    with pytest.raises(FetchError, match="may not leave https://"):
        http.check_url("http://127.0.0.1/b", previous=first)
    local = http.check_url("http://127.0.0.1/b")
    assert http.check_url("https://api.cloudflare.com/a", previous=local).scheme == "https"
