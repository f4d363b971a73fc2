"""The fetcher against a real HTTP server on 127.0.0.1 (pytest-httpserver)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest
from pytest_httpserver import HTTPServer
from support.cfdata import CURRENT
from support.cli_helpers import fixture_text
from werkzeug import Request, Response

from cfallow.cli.config import SourceConfig
from cfallow.errors import FetchError, ValidationError
from cfallow.fetch import http, sources

API = "/client/v4/ips"


def cfg(server: HTTPServer, **kw: object) -> SourceConfig:
    base = server.url_for("").rstrip("/")
    args: dict[str, object] = {
        "api_url": base + API,
        "text_urls": (base + "/ips-v4", base + "/ips-v6"),
        "timeout": 2.0,
        "attempts": 3,
        "backoff": 0.01,
    }
    args.update(kw)
    return SourceConfig(**args)  # type: ignore[arg-type]


def test_api(httpserver: HTTPServer) -> None:
    httpserver.expect_request(API).respond_with_data(
        fixture_text("api-ips.json"), content_type="application/json"
    )
    r = sources.fetch_live(cfg(httpserver))
    assert r.ipv4 | r.ipv6 == CURRENT
    assert (len(r.ipv4), len(r.ipv6)) == (15, 7)
    assert r.etag == "38f79d050aa027e3be3865e495dcc9bc"
    assert r.url is not None and r.url.endswith(API)


def test_text_fallback_when_api_fails(httpserver: HTTPServer) -> None:
    httpserver.expect_request(API).respond_with_data("gone", status=404)
    httpserver.expect_request("/ips-v4").respond_with_data(fixture_text("ips-v4.txt"))
    httpserver.expect_request("/ips-v6").respond_with_data(fixture_text("ips-v6.txt"))
    r = sources.fetch_live(cfg(httpserver))
    assert r.ipv4 | r.ipv6 == CURRENT
    assert r.url is not None and r.url.endswith("/ips-v4") and r.etag is None


def test_redirect_is_followed(httpserver: HTTPServer) -> None:
    httpserver.expect_request(API).respond_with_data(
        "", status=301, headers={"Location": "/moved/ips"}
    )
    httpserver.expect_request("/moved/ips").respond_with_data(fixture_text("api-ips.json"))
    r = sources.fetch_api(cfg(httpserver))
    assert r.ipv4 | r.ipv6 == CURRENT


def test_redirect_to_trailing_slash_with_empty_list_is_refused(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/ips-v4").respond_with_data(
        "", status=301, headers={"Location": "/ips-v4/"}
    )
    httpserver.expect_request("/ips-v4/").respond_with_data("")
    httpserver.expect_request("/ips-v6").respond_with_data(fixture_text("ips-v6.txt"))
    with pytest.raises(ValidationError, match="IPv4 list is empty"):
        sources.fetch_text(cfg(httpserver))


def test_redirect_loop_and_plain_http_are_refused(httpserver: HTTPServer) -> None:
    httpserver.expect_request(API).respond_with_data("", status=302, headers={"Location": API})
    with pytest.raises(FetchError, match="redirects"):
        sources.fetch_api(cfg(httpserver))
    with pytest.raises(FetchError, match="only https"):
        http.check_url("http://api.cloudflare.com/client/v4/ips")
    with pytest.raises(FetchError, match="only https"):
        http.check_url("ftp://127.0.0.1/x")
    http.check_url("http://[::1]:8080/x")
    http.check_url("https://api.cloudflare.com/client/v4/ips")


@pytest.mark.parametrize(("status", "text_lists"), [(503, 1), (502, 1), (429, 0), (403, 1)])
def test_an_answer_is_not_asked_again_in_the_same_run(
    httpserver: HTTPServer, status: int, text_lists: int
) -> None:
    """Whatever ``attempts`` says: the next try is the cadence's, across runs. After
    a 429 (slow down) the text lists are not asked either."""
    for path in (API, "/ips-v4", "/ips-v6"):
        httpserver.expect_request(path).respond_with_data("busy", status=status)
    with pytest.raises(FetchError, match=f"HTTP {status}"):
        sources.fetch_live(cfg(httpserver, attempts=3))
    asked = [req.path for req, _ in httpserver.log]
    assert asked == [API] + ["/ips-v4"] * text_lists


def test_no_answer_at_all_is_tried_again_up_to_attempts() -> None:
    """A connection closed before any answer is the one failure tried again in a run."""
    accepted = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                accepted.append(1)
                conn.close()

        threading.Thread(target=serve, daemon=True).start()
        base = f"http://127.0.0.1:{listener.getsockname()[1]}"
        source = SourceConfig(api_url=base + API, timeout=2.0, attempts=3, backoff=0.01)
        with pytest.raises(FetchError):
            sources.fetch_api(source)
        assert len(accepted) == 3


@pytest.fixture
def slow_server() -> Iterator[HTTPServer]:
    """A threaded server of its own: a handler that sleeps must not stall other tests."""
    server = HTTPServer(host="127.0.0.1", threaded=True)
    server.start()
    try:
        yield server
    finally:
        server.clear()
        server.stop()


def _held(release: threading.Event) -> object:
    """A handler that answers only once the test releases it (at most 60 s)."""

    def handler(_: Request) -> Response:
        release.wait(60)
        return Response(fixture_text("api-ips.json"))

    return handler


DEADLINE = r"no complete response within 0\.5 s"


def test_timeout_is_total_per_request(slow_server: HTTPServer) -> None:
    # The server answers only when released, after the fetch has returned: the fetch can
    # only have ended at its deadline, with the deadline's message, however loaded the
    # machine (no timing in the assertion).
    release = threading.Event()
    slow_server.expect_request(API).respond_with_handler(_held(release))  # type: ignore[arg-type]
    try:
        with pytest.raises(FetchError, match=DEADLINE):
            sources.fetch_api(cfg(slow_server, timeout=0.5, attempts=1))
        assert not release.is_set() and len(slow_server.log) == 0  # no answer was sent
    finally:
        release.set()


def test_a_dripping_server_cannot_stretch_the_deadline(slow_server: HTTPServer) -> None:
    release = threading.Event()

    def drip(_: Request) -> Response:
        def body() -> Iterator[bytes]:
            while not release.wait(0.05):  # a byte well within any read timeout, until released
                yield b" "

        return Response(body(), content_type="application/json")

    slow_server.expect_request(API).respond_with_handler(drip)
    try:
        with pytest.raises(FetchError, match=DEADLINE):
            sources.fetch_api(cfg(slow_server, timeout=0.5, attempts=1))
        assert not release.is_set()  # the body was still dripping when the fetch ended
    finally:
        release.set()


def test_the_deadline_message_is_the_same_at_connect() -> None:
    # A listener whose accept queue is full: the kernel drops the next SYN, so the
    # connection never completes and the deadline hits in connect.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        queued = []
        try:
            for _ in range(8):  # fill the queue (its length is not the backlog exactly)
                c = socket.socket()
                c.setblocking(False)
                c.connect_ex(("127.0.0.1", port))
                queued.append(c)
            c = SourceConfig(
                api_url=f"http://127.0.0.1:{port}/x",
                text_urls=(f"http://127.0.0.1:{port}/a", f"http://127.0.0.1:{port}/b"),
                timeout=0.5,
                attempts=1,
            )
            with pytest.raises(FetchError, match=DEADLINE):
                sources.fetch_api(c)
        finally:
            for q in queued:
                q.close()


def test_connection_refused_is_a_fetch_error() -> None:
    c = SourceConfig(
        api_url="http://127.0.0.1:9/x",
        text_urls=("http://127.0.0.1:9/a", "http://127.0.0.1:9/b"),
        attempts=2,
        backoff=0.01,
    )
    with pytest.raises(FetchError, match="connection refused"):
        sources.fetch_live(c)


def test_body_over_1_mib_is_refused_with_or_without_length(httpserver: HTTPServer) -> None:
    big = b"x" * (10 << 20)
    httpserver.expect_request(API).respond_with_data(big)
    with pytest.raises(FetchError, match="1 MiB"):
        sources.fetch_api(cfg(httpserver, attempts=1))

    def chunked(_: Request) -> Response:
        return Response((b"x" * 65536 for _ in range(160)), content_type="application/json")

    httpserver.clear()
    httpserver.expect_request(API).respond_with_handler(chunked)
    with pytest.raises(FetchError, match="1 MiB"):
        sources.fetch_api(cfg(httpserver, attempts=1))


def test_china_network_splits_jdcloud_by_family(httpserver: HTTPServer) -> None:
    # Made up for this test (no real copy is in the fixtures): one mixed list.
    doc = json.loads(fixture_text("api-ips.json"))
    doc["result"]["jdcloud_cidrs"] = ["116.196.64.0/19", "2402:db40:5100::/44"]
    httpserver.expect_request(API, query_string="networks=jdcloud").respond_with_json(doc)
    r = sources.fetch_api(cfg(httpserver, china_network=True))
    assert (len(r.ipv4), len(r.ipv6)) == (16, 8)
    assert "116.196.64.0/19" in {str(n) for n in r.ipv4}


def test_concurrent_fetches_do_not_share_state(httpserver: HTTPServer) -> None:
    httpserver.expect_request(API).respond_with_data(fixture_text("api-ips.json"))
    results: list[int] = []

    def go() -> None:
        results.append(len(sources.fetch_api(cfg(httpserver)).ipv4))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [15] * 4


def test_bundled_snapshot_is_the_current_list() -> None:
    r = sources.bundled()
    assert r.kind == "bundled" and r.ipv4 | r.ipv6 == CURRENT
    assert r.fetched_at is not None and r.fetched_at > 1.6e9
