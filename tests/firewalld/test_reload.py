"""Reloads that lose nothing, and remove ending with firewalld as it was before cfallow.

On a real firewalld whose zones are the untouched built-in ones (no file under
zones/): the first run's reload is refused while the runtime holds something
the permanent config lacks (or the other way round); remove reloads only when
that loses nothing, else leaves the inert objects and says so; restrict mode's
remove puts an untouched built-in zone back (its /etc copy gone again).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import need_root, ns_exec, sh
from support.cfdata import CURRENT, OLD
from support.cli_helpers import run_cli
from support.firewalld.harness import FwHarness, Lab, kernel_set
from support.firewalld.harness import lab as make_lab
from support.iptables.traffic import CF

from cfallow.engine import run_backend

pytestmark = pytest.mark.root
PORT = ("--zone=public", "--add-port=8443/tcp")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    need_root()
    with make_lab() as lb:
        yield lb


def runtime_view(clean: Lab) -> dict[str, str]:
    """What the runtime holds, as firewall-cmd and the kernel show it."""
    fw = clean.fw
    return {
        "zones": fw.cmd("--get-zones"),
        "ipsets": fw.cmd("--get-ipsets"),
        "all": fw.cmd("--list-all-zones"),
        "nft": sh(ns_exec(fw.ns, "nft", "list", "table", "inet", "firewalld")),
    }


def test_the_first_run_refuses_a_reload_that_drops_runtime_only_changes(
    clean: Lab, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fw = clean.fw
    fw.cmd("--permanent", "--new-ipset=admins", "--type=hash:ip")
    fw.cmd("--reload")
    fw.cmd(*PORT)  # the admin's runtime-only changes: a port, an ipset entry
    fw.cmd("--ipset=admins", "--add-entry=192.0.2.9")
    files, before, writes = fw.files(), runtime_view(clean), clean.monitor.count()
    config = tmp_path / "cfallow.toml"
    config.write_text(
        f'[backends.firewalld]\nbus = "{fw.address}"\nconfig_dir = "{fw.etc}"\nports = [443]\n'
    )
    common = ("--config", str(config), "--state-dir", str(tmp_path / "state"))
    out = run_cli(capsys, *common, "sync", "--source", "bundled")
    assert out.rc == 1, out
    (line,) = [ln for ln in (out.out + out.err).splitlines() if "reload" in ln]
    assert "runtime-only ipset admins entry 192.0.2.9, zone public ports 8443/tcp" in line
    assert "firewall-cmd --runtime-to-permanent" in line and "firewall-cmd --reload" in line
    assert clean.monitor.count() == writes, "cfallow wrote although it refused"
    assert fw.files() == files and runtime_view(clean) == before
    fw.cmd("--runtime-to-permanent")  # what the line says to do
    assert run_cli(capsys, *common, "sync", "--source", "bundled").rc == 0
    assert "8443/tcp" in fw.cmd("--zone=public", "--list-ports")
    assert "192.0.2.9" in fw.cmd("--ipset=admins", "--get-entries")
    assert clean.net.can_connect(CF[0])


def test_the_first_run_refuses_a_reload_that_applies_pending_permanent_changes(
    clean: Lab,
) -> None:
    fw = clean.fw
    fw.cmd("--permanent", *PORT)  # not in force yet: a reload would open it
    writes = clean.monitor.count()
    result = run_backend(FwHarness(fw, clean.monitor).backend(), CURRENT, dry_run=False)
    assert (
        result.error is not None and "apply permanent-only zone public ports 8443" in result.error
    )
    assert clean.monitor.count() == writes
    assert "8443" not in fw.cmd("--zone=public", "--list-ports")


def test_remove_reloads_and_the_runtime_is_as_before_cfallow(clean: Lab) -> None:
    fw, h = clean.fw, FwHarness(clean.fw, clean.monitor)
    files, before = fw.files(), runtime_view(clean)
    for desired in (OLD, CURRENT):
        assert run_backend(h.backend(), desired, dry_run=False).error is None
    removal = run_backend(h.backend(), None, dry_run=False)
    assert removal.error is None, removal.error
    assert removal.plan is not None and any("drop the emptied" in n for n in removal.plan.notes)
    assert fw.state() == "running"
    assert runtime_view(clean) == before
    assert fw.files() == files


def test_remove_without_a_safe_reload_keeps_the_admins_runtime_change(clean: Lab) -> None:
    fw, h = clean.fw, FwHarness(clean.fw, clean.monitor)
    files = fw.files()
    assert run_backend(h.backend(), CURRENT, dry_run=False).error is None
    fw.cmd(*PORT)  # runtime only, after cfallow's first run
    removal = run_backend(h.backend(), None, dry_run=False)
    assert removal.error is None, removal.error
    assert removal.plan is not None
    (note,) = [n for n in removal.plan.notes if "not reloading" in n]
    assert (
        "runtime-only zone public ports 8443/tcp" in note and "next firewall-cmd --reload" in note
    )
    assert "8443/tcp" in fw.cmd("--zone=public", "--list-ports"), "the admin's change was lost"
    assert kernel_set(fw, "cloudflare-v4") == frozenset(), "emptied, left until a reload"
    assert "cloudflare" not in fw.cmd("--get-active-zones")
    assert fw.files() == files and fw.state() == "running"


def test_restrict_remove_puts_an_untouched_builtin_zone_back(clean: Lab) -> None:
    fw, h = clean.fw, FwHarness(clean.fw, clean.monitor, "restrict")
    assert not (fw.etc / "zones" / "public.xml").exists(), "public is the built-in zone"
    files, before = fw.files(), runtime_view(clean)
    for desired in (OLD, CURRENT):
        assert run_backend(h.backend(), desired, dry_run=False).error is None
    assert (fw.etc / "zones" / "public.xml").exists(), "firewalld copied the zone to change it"
    assert run_backend(h.backend(), None, dry_run=False).error is None
    assert fw.files() == files, "not restored byte for byte"
    assert runtime_view(clean) == before and fw.state() == "running"


def test_restrict_remove_keeps_an_admins_change_to_the_builtin_zone(clean: Lab) -> None:
    fw, h = clean.fw, FwHarness(clean.fw, clean.monitor, "restrict")
    assert run_backend(h.backend(), CURRENT, dry_run=False).error is None
    for layer in (("--permanent",), ()):
        fw.cmd(*layer, *PORT)  # the admin's, while cfallow's rules are in the zone
    before = fw.cmd("--list-all-zones")
    assert run_backend(h.backend(), None, dry_run=False).error is None
    text = (fw.etc / "zones" / "public.xml").read_text()
    assert 'port port="8443" protocol="tcp"' in text and "cloudflare" not in text
    assert "8443" in fw.cmd("--permanent", "--zone=public", "--list-ports")
    assert fw.cmd("--list-all-zones") == "\n".join(
        ln for ln in before.splitlines() if "cloudflare" not in ln
    )
    assert fw.state() == "running"
