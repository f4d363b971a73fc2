"""Backend ``caddy`` against a real Caddy 2.6.2 (Debian's package) started by the test.

Caddy 2.6 applies ``trusted_proxies`` in ``reverse_proxy``: the application
behind it logs the first ``X-Forwarded-For`` entry, which is the client
Cloudflare reports only when the request came from a trusted proxy (Caddy
replaces anyone else's header with the peer's address).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cfdata import CURRENT, OLD
from support.realip.caddy import Caddy
from support.realip.lab import (
    CF_SRC,
    CF_SRC6,
    CLIENT,
    OUT_SRC,
    OUT_SRC6,
    WARP_SRC,
    ServerHarness,
    in_pair,
    running,
    sig,
    sync,
)

from cfallow.testing import BackendContract

pytestmark = pytest.mark.root


@pytest.fixture
def caddy(tmp_path: Path) -> Iterator[Caddy]:
    with running(Caddy(tmp_path / "caddy")) as srv:
        yield srv


@pytest.fixture
def paired(tmp_path: Path) -> Iterator[Caddy]:
    with (
        in_pair() as (srv_ns, cli_ns),
        running(Caddy(tmp_path / "caddy", ns=srv_ns, client_ns=cli_ns)) as srv,
    ):
        yield srv


class TestCaddyContract(BackendContract):
    @pytest.fixture
    def harness(self, caddy: Caddy) -> ServerHarness:
        return ServerHarness(caddy, caddy.root / "conf.d" / "admin.caddy", "header +X-Admin yes\n")


def test_real_ip_from_cloudflare_only_and_2021_change(paired: Caddy) -> None:
    srv = paired
    assert srv.seen_as(CF_SRC) == CF_SRC  # nothing trusted yet
    pid = srv.master_pid()
    first = sync(srv, CURRENT)
    assert first.error is None and first.applied
    assert srv.reloads() == 1 and srv.master_pid() == pid
    assert srv.list_path.read_text().count("/") == len(CURRENT)
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


def test_second_sync_writes_nothing_and_does_not_reload(caddy: Caddy) -> None:
    assert sync(caddy, CURRENT).applied
    before = (sig(caddy.list_path), caddy.master_pid(), caddy.reloads())
    again = sync(caddy, CURRENT)
    assert again.error is None and not again.changed and not again.applied
    assert (sig(caddy.list_path), caddy.master_pid(), caddy.reloads()) == before


def test_broken_admin_config_blocks_the_change(caddy: Caddy) -> None:
    assert sync(caddy, OLD).applied
    old, reloads = caddy.list_path.read_bytes(), caddy.reloads()
    (caddy.root / "conf.d" / "admin.caddy").write_text("bogus_directive on\n")
    result = sync(caddy, CURRENT)
    assert result.error is not None and "bogus_directive" in result.error
    assert "before cfallow changes anything" in result.error
    assert caddy.list_path.read_bytes() == old and caddy.reloads() == reloads
    assert caddy.get() == "ok\n"


def test_failed_reload_restores_the_old_bytes(caddy: Caddy) -> None:
    assert sync(caddy, OLD).applied
    old, reloads = caddy.list_path.read_bytes(), caddy.reloads()
    bad = ["caddy", "reload", "--config", str(caddy.conf), "--address", "unix//nonexistent.sock"]
    result = sync(caddy, CURRENT, reload_command=bad)
    assert result.error is not None and "Caddy reload failed" in result.error
    assert caddy.list_path.read_bytes() == old and caddy.reloads() == reloads
    assert caddy.get() == "ok\n"


def test_remove_checks_the_config_without_the_file(caddy: Caddy) -> None:
    assert sync(caddy, CURRENT).applied
    pinned = caddy.root / "conf.d" / "pinned.caddy"
    # The admin's own import naming the file itself: Caddy fails without it.
    pinned.write_text(f"reverse_proxy /pinned 127.0.0.1:9 {{\n\timport {caddy.list_path}\n}}\n")
    caddy.reload_by_hand()
    before = caddy.list_path.read_bytes()
    refused = sync(caddy, None)
    assert refused.error is not None, refused.plan
    assert "Caddy rejects" in refused.error and "cfallow-realip.caddy" in refused.error
    assert caddy.list_path.read_bytes() == before
    pinned.unlink()
    done = sync(caddy, None)
    assert done.error is None and done.applied and not caddy.list_path.exists()
    assert caddy.get() == "ok\n"


def test_snippet_caddy_never_imports_is_an_error(caddy: Caddy) -> None:
    other = caddy.root / "other.caddy"
    result = sync(caddy, CURRENT, path=str(other))
    assert result.error is not None and "Caddy does not use" in result.error
    assert not other.exists() and caddy.reloads() == 0
