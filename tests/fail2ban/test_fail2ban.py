"""The fail2ban backend against a private fail2ban-server (never the system's)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from netaddr import IPNetwork
from support import need_root, need_tool
from support.cfdata import ADDED_2021, CURRENT, OLD, REMOVED_2021
from support.fail2ban.harness import JAILS, F2bHarness, running_server
from support.fail2ban.server import BETA_IGNORE, DEFAULT_IGNORE, F2bServer, nets

from cfallow.engine import run_backend
from cfallow.testing import BackendContract

pytestmark = pytest.mark.root

BASE = {"alpha": nets(DEFAULT_IGNORE), "beta": nets(BETA_IGNORE)}
ADMIN_CF = {"alpha": frozenset(), "beta": CURRENT & BASE["beta"]}


@pytest.fixture(scope="module")
def f2b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[F2bServer]:
    need_root()
    need_tool("fail2ban-client", "fail2ban-server", "ip")
    with running_server(tmp_path_factory.mktemp("f2b")) as srv:
        yield srv


@pytest.fixture
def harness(f2b: F2bServer, tmp_path: Path) -> F2bHarness:
    f2b.reset()
    return F2bHarness(f2b, tmp_path)


def sync(h: F2bHarness, desired: frozenset[IPNetwork] | None = CURRENT) -> None:
    result = run_backend(h.backend(), desired, dry_run=False)
    assert result.error is None, result.error


class TestContract(BackendContract):
    """The shared backend contract on the private server."""


def test_live_lists_are_base_plus_cloudflare_and_survive_reload(harness: F2bHarness) -> None:
    srv = harness.srv
    assert srv.live("alpha") == BASE["alpha"] and srv.live("beta") == BASE["beta"]
    sync(harness)
    for _ in ("after sync", "after reload"):
        for jail in JAILS:
            assert srv.live(jail) == BASE[jail] | CURRENT
            assert BASE[jail] <= srv.live(jail), "an admin entry went missing"
        srv.reload()
    # The drop-in lists exactly what cfallow owns: not the admin's own Cloudflare range.
    assert srv.dropin_ranges() == {jail: CURRENT - ADMIN_CF[jail] for jail in JAILS}
    assert "[DEFAULT]" not in srv.dropin.read_text()


def test_cloudflare_addresses_are_not_banned_others_are(harness: F2bHarness) -> None:
    srv = harness.srv
    # Control: before the sync, the filter bans an address inside Cloudflare's ranges.
    srv.fail("alpha", "104.16.5.6")
    assert srv.wait_banned("alpha", "104.16.5.6"), "the test filter does not ban at all"
    srv.client("unban", "--all")
    sync(harness)
    inside = {"alpha": ["104.16.7.8", "2606:4700::1234"], "beta": ["104.24.1.2", "172.64.3.4"]}
    outside = {"alpha": "203.0.113.77", "beta": "2001:db8::77"}
    for jail in JAILS:
        for address in inside[jail]:
            srv.fail(jail, address, times=5)
        srv.fail(jail, outside[jail])
    for jail in JAILS:
        # Lines are read in order: once the outside address is banned, the inside ones were seen.
        assert srv.wait_banned(jail, outside[jail]), f"{jail}: {outside[jail]} not banned"
        assert not set(inside[jail]) & set(srv.banned(jail)), srv.banned(jail)


def test_2021_change_live_and_persisted(harness: F2bHarness) -> None:
    srv = harness.srv
    (removed,) = REMOVED_2021
    sync(harness, OLD)
    assert removed in srv.live("alpha") and removed in srv.dropin_ranges()["alpha"]
    assert removed not in srv.dropin_ranges()["beta"], "the admin's own range was taken over"
    sync(harness, CURRENT)
    for _ in ("after sync", "after reload"):
        assert removed not in srv.live("alpha")
        assert srv.live("alpha") >= ADDED_2021 and srv.live("beta") >= ADDED_2021
        # The admin lists 104.16.0.0/12 in beta themselves: it stays.
        assert removed in srv.live("beta")
        for jail in JAILS:
            assert srv.live(jail) == BASE[jail] | CURRENT
        srv.reload()
    assert all(removed not in r for r in srv.dropin_ranges().values())
    assert all(r >= ADDED_2021 for r in srv.dropin_ranges().values())


def test_second_sync_writes_nothing(harness: F2bHarness) -> None:
    sync(harness)
    before = harness.srv.dropin.stat().st_mtime_ns
    harness.clear()
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.error is None and not result.changed and not result.applied
    assert harness.live_writes() == []
    # No fail2ban-client process (the admin's tree is unchanged since the last -d); the
    # server is read over its socket.
    assert harness.runner.calls == []
    assert {c[0] for c in harness.sent()} == {"status", "get"}, harness.sent()
    assert len(harness.sent()) == 1 + len(JAILS)
    assert harness.srv.dropin.stat().st_mtime_ns == before


def test_removal_takes_only_what_cfallow_added(harness: F2bHarness) -> None:
    srv = harness.srv
    srv.client("set", "alpha", "addignoreip", "198.18.0.0/15")  # the admin's, at runtime
    sync(harness)
    result = run_backend(harness.backend(), None, dry_run=False)
    assert result.error is None, result.error
    assert result.plan is not None and result.plan.remove == CURRENT
    assert not srv.dropin.exists()
    assert srv.live("alpha") == BASE["alpha"] | {IPNetwork("198.18.0.0/15")}
    assert srv.live("beta") == BASE["beta"], "the admin's own Cloudflare ranges must stay"
    srv.reload()
    assert srv.live("alpha") == BASE["alpha"] and srv.live("beta") == BASE["beta"]


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        # -d skips a jail it cannot load; -t (with the candidate) rejects it.
        (
            "\n[gamma]\nenabled = true\nfilter = cfa-tset\nlogpath = {logs}/alpha.log\n",
            "Unable to read the filter 'cfa-tset'",
        ),
        ("\nthis line is not an option\n", "Source contains parsing errors"),
    ],
)
def test_rejected_configuration_changes_nothing(
    harness: F2bHarness, broken: str, message: str
) -> None:
    srv = harness.srv
    sync(harness, OLD)
    old = srv.dropin.read_bytes()
    live = {jail: srv.ignoreip(jail) for jail in JAILS}
    srv.write_jail_local(extra=broken.format(logs=srv.logs))
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.error is not None and message in result.error, result.error
    assert str(srv.conf) in result.error and "cfallow-f2b-" not in result.error
    assert srv.dropin.read_bytes() == old
    assert {jail: srv.ignoreip(jail) for jail in JAILS} == live
    assert [p.name for p in srv.dropin.parent.iterdir()] == [srv.dropin.name]
