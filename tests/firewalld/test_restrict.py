"""Restrict mode on a real firewalld: the admin's zone opens https to all; cfallow narrows it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import need_root
from support.cfdata import CURRENT, OLD
from support.firewalld.harness import FwHarness, Lab, admin_runtime, file_set, kernel_set
from support.firewalld.harness import lab as make_lab
from support.iptables.traffic import CF, OLD_ONLY, OUTSIDE

from cfallow.engine import run_backend
from cfallow.model import family
from cfallow.testing import BackendContract

pytestmark = pytest.mark.root
ADMIN = (("--zone=public", "--add-service=https"),)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    need_root()
    with make_lab(ADMIN) as lb:
        yield lb


@pytest.fixture
def harness(clean: Lab) -> FwHarness:
    return FwHarness(clean.fw, clean.monitor, "restrict")


class TestRestrictContract(BackendContract):
    """The shared contract against the real daemon."""


def test_only_cloudflare_keeps_443_and_loopback_is_untouched(
    harness: FwHarness, clean: Lab
) -> None:
    net = clean.net
    assert net.can_connect(CF[0]) and net.can_connect(OUTSIDE[0]), "the admin opens 443 to all"
    result = run_backend(harness.backend(), OLD, dry_run=False)
    assert result.error is None, result.error
    assert net.can_connect(CF[0]) and net.can_connect(CF[1]) and net.can_connect(OLD_ONLY)
    assert not net.can_connect(OUTSIDE[0]) and not net.can_connect(OUTSIDE[1])
    assert clean.loopback("127.0.0.1") and clean.loopback("::1")
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    assert not net.can_connect(OLD_ONLY)
    assert net.can_connect(CF[0]) and net.can_connect(CF[1])
    assert clean.loopback("127.0.0.1") and clean.loopback("::1")
    rules = clean.fw.cmd("--zone=public", "--list-rich-rules").splitlines()
    assert sorted(rules) == sorted(
        f'rule family="ipv{v}" source NOT ipset="cloudflare-v{v}" port port="443" '
        'protocol="tcp" drop'
        for v in (4, 6)
    )
    assert "services: dhcpv6-client https ssh" in clean.fw.cmd("--info-zone=public")


def test_50_syncs_while_cloudflare_connects(harness: FwHarness, clean: Lab) -> None:
    assert run_backend(harness.backend(), OLD, dry_run=False).error is None
    with clean.net.connect_loop(CF[0]) as stats:
        for i in range(50):
            desired = CURRENT if i % 2 == 0 else OLD
            result = run_backend(harness.backend(), desired, dry_run=False)
            assert result.error is None, result.error
            assert kernel_set(clean.fw, "cloudflare-v4") == family(desired, 4)
            assert file_set(clean.fw, "cloudflare-v4") == family(desired, 4)
    assert stats["attempts"] > 500 and stats["failed"] == 0, stats
    assert not clean.net.can_connect(OUTSIDE[0])


def test_reload_and_restart_keep_the_restriction(harness: FwHarness, clean: Lab) -> None:
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    for again in (lambda: clean.fw.cmd("--reload"), clean.fw.restart):
        again()
        assert clean.fw.state() == "running"
        assert clean.net.can_connect(CF[0]) and clean.net.can_connect(CF[1])
        assert not clean.net.can_connect(OUTSIDE[0]) and not clean.net.can_connect(OUTSIDE[1])


def test_remove_restores_the_admins_zone_file_byte_for_byte(harness: FwHarness, clean: Lab) -> None:
    fw = clean.fw
    files, runtime = fw.files(), fw.cmd("--list-all-zones")
    xml = {k: v for k, v in files.items() if not k.endswith(".old")}
    for desired in (OLD, CURRENT):
        assert run_backend(harness.backend(), desired, dry_run=False).error is None
    assert run_backend(harness.backend(), None, dry_run=False).error is None
    assert fw.state() == "running"
    after = fw.files()
    assert {k: v for k, v in after.items() if not k.endswith(".old")} == xml
    assert fw.cmd("--list-all-zones") == runtime == admin_runtime(fw) + ""
    assert clean.net.can_connect(OUTSIDE[0]), "the admin's https is open to all again"
    fw.cmd("--reload")
    assert fw.cmd("--list-all-zones") == runtime and fw.state() == "running"


def test_services_instead_of_ports(harness: FwHarness, clean: Lab) -> None:
    harness.extra = {"services": ["https"]}
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    assert clean.net.can_connect(CF[0]) and not clean.net.can_connect(OUTSIDE[0])
    assert 'service name="https" drop' in clean.fw.cmd(
        "--permanent", "--zone=public", "--list-rich-rules"
    )
