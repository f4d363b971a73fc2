"""Zone mode on a real firewalld: cfallow's zone with its ipsets as sources."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import need_root, ns_exec, sh
from support.cfdata import ADDED_2021, CURRENT, OLD, REMOVED_2021
from support.cli_helpers import run_cli
from support.firewalld.harness import FwHarness, Lab, admin_runtime, file_set, kernel_set
from support.firewalld.harness import lab as make_lab
from support.iptables.traffic import CF, OLD_ONLY, OTHER, OUTSIDE

from cfallow.engine import run_backend
from cfallow.model import as_strings, family
from cfallow.testing import BackendContract

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    need_root()
    with make_lab() as lb:
        yield lb


@pytest.fixture
def harness(clean: Lab) -> FwHarness:
    return FwHarness(clean.fw, clean.monitor, "zone")


class TestZoneContract(BackendContract):
    """The shared contract against the real daemon."""


def test_cloudflare_reaches_443_and_the_outsider_does_not(harness: FwHarness, clean: Lab) -> None:
    net = clean.net
    assert not net.can_connect(CF[0]), "the default zone opens 443 already"
    result = run_backend(harness.backend(), OLD, dry_run=False)
    assert result.error is None, result.error
    assert result.plan is not None and any("reload" in n for n in result.plan.notes)
    assert net.can_connect(CF[0]) and net.can_connect(CF[1])
    assert net.can_connect(OLD_ONLY)
    assert not net.can_connect(OUTSIDE[0]) and not net.can_connect(OUTSIDE[1])
    assert not net.can_connect(CF[0], port=OTHER), "the zone opens only the configured ports"
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    assert not net.can_connect(OLD_ONLY), "the range removed in 2021 still gets in"
    assert net.can_connect(CF[0]) and net.can_connect(CF[1])
    assert "cloudflare\n  sources: ipset:cloudflare-v4 ipset:cloudflare-v6" in clean.fw.cmd(
        "--get-active-zones"
    )


def test_50_syncs_while_cloudflare_connects(harness: FwHarness, clean: Lab) -> None:
    assert run_backend(harness.backend(), OLD, dry_run=False).error is None
    with clean.net.connect_loop(CF[0]) as stats:
        for i in range(50):
            desired = CURRENT if i % 2 == 0 else OLD
            result = run_backend(harness.backend(), desired, dry_run=False)
            assert result.error is None, result.error
            assert result.plan is not None
            add, rem = (
                (ADDED_2021, REMOVED_2021) if desired is CURRENT else (REMOVED_2021, ADDED_2021)
            )
            assert (result.plan.add, result.plan.remove) == (add, rem)
            for v, name in ((4, "cloudflare-v4"), (6, "cloudflare-v6")):
                assert kernel_set(clean.fw, name) == family(desired, v)
                assert file_set(clean.fw, name) == family(desired, v)
    assert stats["attempts"] > 500, stats
    assert stats["failed"] == 0, stats
    assert clean.fw.state() == "running"


def test_reload_and_restart_bring_the_allowlist_back(harness: FwHarness, clean: Lab) -> None:
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None

    def boot() -> None:  # what a boot leaves: no ruleset in the kernel, only the files
        clean.fw.stop()
        sh(ns_exec(clean.fw.ns, "nft", "flush", "ruleset"))
        assert kernel_set(clean.fw, "cloudflare-v4") is None
        clean.fw.start()

    for again in (lambda: clean.fw.cmd("--reload"), clean.fw.restart, boot):
        again()
        assert clean.fw.state() == "running"
        assert harness.owned() == CURRENT
        assert clean.net.can_connect(CF[0]) and clean.net.can_connect(CF[1])
        assert not clean.net.can_connect(OUTSIDE[0]) and not clean.net.can_connect(OUTSIDE[1])
        check = run_backend(harness.backend(), CURRENT, dry_run=True)
        assert check.error is None and not check.changed


def test_remove_restores_files_byte_for_byte_and_the_runtime(
    harness: FwHarness, clean: Lab
) -> None:
    fw = clean.fw
    harness.add_foreign()
    files, runtime = fw.files(), fw.cmd("--list-all-zones")
    for desired in (OLD, CURRENT):
        assert run_backend(harness.backend(), desired, dry_run=False).error is None
    removal = run_backend(harness.backend(), None, dry_run=False)
    assert removal.error is None, removal.error
    assert fw.state() == "running"
    assert fw.files() == files
    assert admin_runtime(fw) == runtime
    assert not clean.net.can_connect(CF[0])
    # firewalld cannot delete a zone or ipset at runtime: remove's one reload (safe) did
    assert kernel_set(fw, "cloudflare-v4") is None is kernel_set(fw, "cloudflare-v6")
    assert fw.cmd("--list-all-zones") == runtime and fw.cmd("--get-ipsets") == ""
    assert fw.state() == "running"


def test_a_no_change_run_makes_no_write_call(harness: FwHarness, clean: Lab) -> None:
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    before = clean.monitor.count()
    for _ in range(3):
        result = run_backend(harness.backend(), CURRENT, dry_run=False)
        assert result.error is None and not result.changed
    assert clean.monitor.count() == before


def test_the_2021_change_writes_runtime_entries_and_permanent_once(
    harness: FwHarness, clean: Lab
) -> None:
    assert run_backend(harness.backend(), OLD, dry_run=False).error is None
    start = len(clean.monitor.writes)
    clean.monitor.count()
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    clean.monitor.count()
    calls = clean.monitor.writes[start:]
    # one permanent setEntries for the v4 set; the runtime swap entry by entry with a bridge
    assert calls.count("setEntries") == 1, calls
    swap = ["addSource", "addSource", "removeEntry", "addEntry", "addEntry"]
    assert sorted(calls) == sorted([*swap, "removeSource", "removeSource", "setEntries"]), calls
    assert "reload" not in calls


def test_ports_change_is_drift_and_applies(harness: FwHarness, clean: Lab) -> None:
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    harness.extra = {"ports": [443, 8080]}
    plan = harness.backend().plan(CURRENT)
    assert plan.changed and not plan.add and not plan.remove and plan.drift
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    assert clean.net.can_connect(CF[0], port=OTHER)
    assert not clean.net.can_connect(OUTSIDE[0], port=OTHER)
    harness.extra = {"services": ["https"]}
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    assert not clean.net.can_connect(CF[0], port=OTHER) and clean.net.can_connect(CF[0])
    assert "services: https" in clean.fw.cmd("--permanent", "--info-zone=cloudflare")


def test_entries_are_the_validated_strings(harness: FwHarness, clean: Lab) -> None:
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    got = clean.fw.cmd("--permanent", "--ipset=cloudflare-v4", "--get-entries").split()
    assert got == as_strings(family(CURRENT, 4))


def test_the_cli_end_to_end(
    harness: FwHarness, clean: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "cfallow.toml"
    config.write_text(
        f'[backends.firewalld]\nbus = "{clean.fw.address}"\nconfig_dir = "{clean.fw.etc}"\n'
        "ports = [443]\n"
    )
    common = ("--config", str(config), "--state-dir", str(tmp_path / "state"))
    dry = run_cli(capsys, *common, "sync", "--source", "bundled", "--dry-run")
    assert dry.rc == 0 and "reloads once" in dry.out, dry
    assert run_cli(capsys, *common, "status", "--source", "bundled").rc == 3
    assert run_cli(capsys, *common, "sync", "--source", "bundled").rc == 0
    assert clean.net.can_connect(CF[0]) and not clean.net.can_connect(OUTSIDE[0])
    assert run_cli(capsys, *common, "status", "--source", "bundled").rc == 0
    backends = run_cli(capsys, *common, "backends")
    assert "firewalld" in backends.out
    assert run_cli(capsys, *common, "remove").rc == 0
    assert not clean.net.can_connect(CF[0]) and harness.owned() == frozenset()
