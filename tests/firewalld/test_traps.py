"""firewalld's traps, checked on the real daemon, and how cfallow stays clear of them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cfallow.backends.firewalld.bus import Bus
from support import need_root
from support.cfdata import CURRENT, OLD
from support.firewalld.harness import FwHarness, Lab, file_set, kernel_set
from support.firewalld.harness import lab as make_lab
from support.iptables.traffic import CF, OUTSIDE

from cfallow.engine import run_backend
from cfallow.errors import BackendError, TargetMoved
from cfallow.model import family

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    need_root()
    with make_lab((("--zone=public", "--add-service=https"),)) as lb:
        yield lb


@pytest.fixture
def harness(clean: Lab) -> FwHarness:
    return FwHarness(clean.fw, clean.monitor, "zone")


def test_deleting_a_referenced_ipset_fails_the_next_reload_and_cfallow_refuses_then(
    harness: FwHarness, clean: Lab
) -> None:
    fw = clean.fw
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    # what a naive script does: accepted...
    fw.cmd("--permanent", "--delete-ipset=cloudflare-v4")
    assert fw.state() == "running"
    # ...and the next reload leaves firewalld FAILED
    fw.cmd("--reload", check=False)
    assert fw.state() == "failed"
    writes = clean.monitor.count()
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.error is not None and "FAILED" in result.error
    assert clean.monitor.count() == writes, "cfallow wrote to a failed firewalld"
    fw.reset()


def test_removal_and_mode_switch_take_references_out_first(harness: FwHarness, clean: Lab) -> None:
    fw = clean.fw
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    harness.mode = "restrict"  # the zone goes, the ipsets stay, rules reference them
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.error is None, result.error
    fw.cmd("--reload")
    assert fw.state() == "running"
    assert "cloudflare" not in fw.cmd("--permanent", "--get-zones").split()
    assert clean.net.can_connect(CF[0]) and not clean.net.can_connect(OUTSIDE[0])
    assert run_backend(harness.backend(), None, dry_run=False).error is None
    fw.cmd("--reload")
    assert fw.state() == "running" and fw.cmd("--get-ipsets") == ""


def test_a_wrong_family_entry(harness: FwHarness, clean: Lab) -> None:
    fw = clean.fw
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    with Bus(fw.address) as bus:
        path = bus.config_ipset_path("cloudflare-v4")
        assert path
        # firewalld 1.3.3 refuses a mixed list over D-Bus (older releases stored it)
        with pytest.raises(BackendError, match="not of the same version"):
            bus.config_ipset_set_entries(path, ["103.21.244.0/22", "2400:cb00::/32"])
    # a hand edit: this release ignores the entry on reload (with a warning) and keeps running
    xml = fw.etc / "ipsets" / "cloudflare-v4.xml"
    xml.write_text(xml.read_text().replace("</ipset>", "  <entry>2400:cb00::/32</entry>\n</ipset>"))
    fw.cmd("--reload")
    assert fw.state() == "running"
    assert kernel_set(fw, "cloudflare-v4") == family(CURRENT, 4)
    assert clean.net.can_connect(CF[0]) and clean.net.can_connect(CF[1])
    # cfallow never sends one (the diff splits by family); its next write drops the stray line
    assert run_backend(harness.backend(), OLD, dry_run=False).error is None
    assert file_set(fw, "cloudflare-v4") == family(OLD, 4) == kernel_set(fw, "cloudflare-v4")


def test_a_refused_creation_leaves_the_permanent_config_as_it_was(
    harness: FwHarness, clean: Lab
) -> None:
    fw = clean.fw
    files = fw.files()
    harness.extra = {"zone": "cloudflare-origins"}  # 18 characters: firewalld allows 17
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.error is not None and "INVALID_NAME" in result.error
    assert "\n" not in result.error
    assert fw.files() == files
    assert fw.state() == "running"


def test_firewalld_not_running_is_one_line(harness: FwHarness, clean: Lab) -> None:
    clean.fw.stop()
    try:
        result = run_backend(harness.backend(), CURRENT, dry_run=False)
        assert result.error == "firewalld is not running (nothing owns its D-Bus name)"
    finally:
        clean.fw.start()
    harness.extra = {"bus": "unix:path=/nonexistent/cfallow-test.sock"}
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.error is not None and result.error.startswith("firewalld: cannot reach")


def test_a_change_between_plan_and_apply_writes_nothing(harness: FwHarness, clean: Lab) -> None:
    assert run_backend(harness.backend(), OLD, dry_run=False).error is None
    plan = harness.backend().plan(CURRENT)
    clean.fw.cmd("--zone=public", "--add-port=8443/tcp")  # the admin, meanwhile
    writes = clean.monitor.count()
    with pytest.raises(TargetMoved):
        harness.backend().apply(plan)
    assert clean.monitor.count() == writes
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.error is None and harness.owned() == CURRENT


def test_ipv6_off_deletes_only_the_v6_set(harness: FwHarness, clean: Lab) -> None:
    fw = clean.fw
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    harness.extra = {"ipv6": False}
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    assert fw.cmd("--permanent", "--get-ipsets") == "cloudflare-v4"
    assert fw.cmd("--zone=cloudflare", "--list-sources") == "ipset:cloudflare-v4"
    assert kernel_set(fw, "cloudflare-v6") is None, "the deleted set is gone (one safe reload)"
    fw.cmd("--reload")
    assert fw.state() == "running" and harness.owned() == family(CURRENT, 4)
    check = run_backend(harness.backend(), CURRENT, dry_run=True)
    assert check.error is None and not check.changed


def test_a_bridge_left_by_a_stopped_run_is_taken_out(harness: FwHarness, clean: Lab) -> None:
    fw = clean.fw
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    fw.cmd("--zone=cloudflare", "--add-source=104.16.0.0/13")  # as if killed mid-swap
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.error is None and result.changed
    assert fw.cmd("--zone=cloudflare", "--list-sources").split() == [
        "ipset:cloudflare-v4",
        "ipset:cloudflare-v6",
    ]
    harness.mode = "restrict"
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    left = (
        'rule priority="-32768" family="ipv4" source address="104.16.0.0/13" '
        'port port="443" protocol="tcp" accept'
    )
    fw.cmd("--zone=public", "--add-rich-rule", left)
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    assert left not in fw.cmd("--zone=public", "--list-rich-rules")
    assert not clean.net.can_connect(OUTSIDE[0]) and clean.net.can_connect(CF[0])
