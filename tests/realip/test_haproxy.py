"""Backend ``haproxy`` against a real HAProxy 2.6 (master-worker) started by the test.

The list changes at runtime through the stats socket: no reload, the same
worker, its connections kept. Traffic over a veth pair as for the others;
HAProxy's log line (``%ci`` after ``http-request set-src``) says who it believed.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cfdata import CURRENT, OLD
from support.realip.haproxy import Haproxy, HaproxyHarness
from support.realip.lab import (
    CF_SRC,
    CF_SRC6,
    CLIENT,
    OUT_SRC,
    OUT_SRC6,
    WARP_SRC,
    in_pair,
    running,
    sig,
    sync,
)

from cfallow.engine import run_backend
from cfallow.testing import BackendContract, Harness

pytestmark = pytest.mark.root


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Haproxy]:
    with running(Haproxy(tmp_path / "haproxy")) as srv:
        yield srv


@pytest.fixture
def paired(tmp_path: Path) -> Iterator[Haproxy]:
    with (
        in_pair() as (srv_ns, cli_ns),
        running(Haproxy(tmp_path / "haproxy", ns=srv_ns, client_ns=cli_ns)) as srv,
    ):
        yield srv


def drop_acl_lines(srv: Haproxy) -> None:
    """What the admin does before ``cfallow remove``: stop using the file, reload once."""
    text = srv.conf.read_text()
    keep = [ln for ln in text.splitlines() if "from_cf" not in ln]
    srv.conf.write_text("\n".join(keep) + "\n")
    srv.reload_by_hand()


class TestHaproxyContract(BackendContract):
    @pytest.fixture
    def harness(self, haproxy: Haproxy) -> HaproxyHarness:
        return HaproxyHarness(haproxy, haproxy.admin_acl, "10.0.0.0/8\n")

    def test_unowned_entries_survive_and_removal_restores(self, harness: Harness) -> None:
        """The contract's test, with the admin's step HAProxy needs before ``remove``.

        HAProxy has no optional pattern file, so removal passes its test only once
        the admin's config no longer loads cfallow's file (docs/realip.md); until
        then it is refused with HAProxy's message.
        """
        assert isinstance(harness, HaproxyHarness)
        srv = harness.server
        harness.add_foreign()
        foreign = harness.foreign()
        for desired in (OLD, CURRENT, OLD, CURRENT):
            assert run_backend(harness.backend(), desired, dry_run=False).error is None
            assert harness.foreign() == foreign
        refused = run_backend(harness.backend(), None, dry_run=False)
        assert refused.error is not None and "failed to open pattern file" in refused.error
        assert harness.owned() == CURRENT
        drop_acl_lines(srv)
        removal = run_backend(harness.backend(), None, dry_run=False)
        assert removal.error is None, removal.error
        assert not srv.list_path.exists()
        assert srv.admin_acl.read_text() == "10.0.0.0/8\n"
        again = run_backend(harness.backend(), None, dry_run=True)
        assert again.error is None and not again.changed, "removal left something behind"


def test_real_ip_from_cloudflare_only_and_2021_change_without_reload(paired: Haproxy) -> None:
    srv = paired
    assert srv.seen_as(CF_SRC) == CF_SRC  # nothing trusted yet
    gen = srv.state()
    first = sync(srv, CURRENT)
    assert first.error is None and first.applied
    assert srv.live() == CURRENT
    assert srv.seen_as(CF_SRC) == CLIENT
    assert srv.seen_as(OUT_SRC) == OUT_SRC  # no spoofing from outside
    assert srv.seen_as(WARP_SRC) == WARP_SRC
    assert srv.seen_as(CF_SRC6) == CLIENT  # IPv6 ranges too
    assert srv.seen_as(OUT_SRC6) == OUT_SRC6
    assert sync(srv, OLD).error is None
    assert srv.seen_as(WARP_SRC) == CLIENT  # the old list trusted 104.16.0.0/12
    assert sync(srv, CURRENT).error is None
    assert srv.seen_as(WARP_SRC) == WARP_SRC  # 104.28.0.0/14 no longer trusted
    assert srv.seen_as(CF_SRC) == CLIENT
    assert srv.state() == gen and srv.reloads() == 0  # the same master and worker throughout


def test_second_sync_writes_nothing(haproxy: Haproxy) -> None:
    assert sync(haproxy, CURRENT).applied
    before = (sig(haproxy.list_path), haproxy.state(), haproxy.ask("show acl"))
    again = sync(haproxy, CURRENT)
    assert again.error is None and not again.changed and not again.applied
    assert (sig(haproxy.list_path), haproxy.state(), haproxy.ask("show acl")) == before


def test_continuous_client_during_50_alternating_syncs(haproxy: Haproxy) -> None:
    gen = haproxy.state()
    failures: list[str] = []
    ports: set[int] = set()
    done = threading.Event()
    count = [0]

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", haproxy.port, timeout=5)
        while not done.is_set():
            try:
                conn.request("GET", "/loop")
                resp = conn.getresponse()
                if resp.read() != b"ok\n" or resp.status != 200:
                    failures.append(f"status {resp.status}")
                ports.add(conn.sock.getsockname()[1])
                count[0] += 1
            except Exception as exc:
                failures.append(repr(exc))
                conn.close()

    thread = threading.Thread(target=client)
    thread.start()
    try:
        for i in range(50):
            desired = OLD if i % 2 == 0 else CURRENT
            result = sync(haproxy, desired)
            assert result.error is None and result.applied, result.error
            assert haproxy.live() == desired
    finally:
        done.set()
        thread.join(10)
    assert failures == []
    assert count[0] > 50
    assert len(ports) == 1, "the client's connection was dropped and made again"
    assert haproxy.state() == gen and haproxy.reloads() == 0


def test_rejected_config_leaves_file_and_runtime(haproxy: Haproxy) -> None:
    assert sync(haproxy, OLD).applied
    old, live = haproxy.list_path.read_bytes(), haproxy.live()
    text = haproxy.conf.read_text()
    haproxy.conf.write_text(text + "    bogus_keyword on\n")
    result = sync(haproxy, CURRENT)
    assert result.error is not None and "bogus_keyword" in result.error
    assert haproxy.list_path.read_bytes() == old and haproxy.live() == live == OLD
    haproxy.conf.write_text(text)
    assert haproxy.get() == "ok\n"


def test_file_the_running_haproxy_does_not_load_is_taken_back(haproxy: Haproxy) -> None:
    other = haproxy.root / "other.acl"
    result = sync(haproxy, CURRENT, path=str(other))
    assert result.error is not None and "no ACL loaded from" in result.error
    assert not other.exists()


def test_stopped_haproxy_gets_the_file_for_its_next_start(tmp_path: Path) -> None:
    srv = Haproxy(tmp_path / "haproxy")
    result = sync(srv, CURRENT)
    assert result.error is None and result.applied
    with running(srv):
        assert srv.live() == CURRENT
