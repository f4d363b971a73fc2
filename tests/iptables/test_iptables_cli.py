"""The real ``cfallow`` CLI with the iptables backend, run inside a test namespace.

Also the one-line errors of ``check()``: a missing binary, missing privileges.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import namespace, need_tool, ns_exec
from support.cfdata import CURRENT
from support.cli_helpers import unwrapped
from support.iptables.helpers import VARIANTS, Fw, legacy_bin

from cfallow.backend import Context, build
from cfallow.engine import run_backend
from cfallow.model import as_strings
from cfallow.runner import Runner

pytestmark = pytest.mark.root


@pytest.fixture(params=VARIANTS)
def fw(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fw]:
    with namespace("ipx") as ns:
        yield Fw(ns, request.param, tmp_path)


def cli(
    fw: Fw, config: str, *args: str, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m cfallow --config C --state-dir S ARGS`` inside the namespace."""
    conf = fw.tmp / "config.toml"
    conf.write_text(config)
    full = {**os.environ, "XTABLES_LOCKFILE": fw.lock}
    if path is None:
        path = os.environ["PATH"]
        if fw.variant == "legacy":  # the host's iptables is the legacy one
            path = f"{legacy_bin(fw.tmp / 'legacy-bin')}:{path}"
    argv = ["/usr/bin/env", f"PATH={path}", sys.executable, "-m", "cfallow", "--config", str(conf)]
    argv += ["--state-dir", str(fw.tmp / "state"), *args]
    return subprocess.run(
        ns_exec(fw.ns, *argv), capture_output=True, text=True, env=full, timeout=120, check=False
    )


def test_sync_status_remove_leave_the_ruleset_exactly_as_before(fw: Fw) -> None:
    fw.add_admin()
    before = fw.both(counters=True)
    conf = "[backends.iptables]\n"
    first = cli(fw, conf, "sync", "--source", "bundled", "--json")
    assert first.returncode == 0, first.stderr
    (report,) = json.loads(first.stdout)["backends"]
    assert report["changed"] and report["add"] == as_strings(CURRENT) and not report["error"]
    assert fw.owned() == CURRENT and fw.other_variant() == ""
    second = cli(fw, conf, "sync", "--source", "bundled", "--json")
    assert second.returncode == 0 and not json.loads(second.stdout)["changed"]
    assert cli(fw, conf, "status", "--source", "bundled").returncode == 0
    removed = cli(fw, conf, "remove", "--backend", "iptables")
    assert removed.returncode == 0, removed.stderr
    assert fw.both(counters=True) == before


def test_a_hand_edit_is_drift_for_status_and_sync_repairs_it(fw: Fw) -> None:
    conf = '[backends.iptables]\nmode = "lockdown"\n'
    assert cli(fw, conf, "sync", "--source", "bundled").returncode == 0
    chain = fw.chain(4)
    fw.ipt(4, "-I", "CFALLOW", "1", "-s", "192.0.2.0/24", "-j", "ACCEPT")
    fw.ipt(4, "-D", "CFALLOW", "-j", "DROP")
    status = cli(fw, conf, "status", "--source", "bundled", "--json")
    assert status.returncode == 3
    (report,) = json.loads(status.stdout)["backends"]
    assert report["remove"] == ["192.0.2.0/24"]
    assert report["drift"] == ["IPv4: lockdown rules incomplete or out of order"]
    dry = cli(fw, conf, "sync", "--source", "bundled", "--dry-run")
    assert dry.returncode == 0 and fw.chain(4)[0] == "-s 192.0.2.0/24 -j ACCEPT"
    assert cli(fw, conf, "sync", "--source", "bundled").returncode == 0
    assert fw.chain(4) == chain


def test_missing_binary_is_one_line_exit_1_and_the_other_backend_still_runs(fw: Fw) -> None:
    empty = fw.tmp / "empty-bin"
    empty.mkdir()
    target = fw.tmp / "fake.json"
    conf = f'[backends.iptables]\n[backends.fake]\npath = "{target}"\n'
    proc = cli(fw, conf, "sync", "--source", "bundled", path=str(empty))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert errors == [
        "cfallow: error: iptables: no iptables command found (install the iptables package)"
    ]
    assert set(json.loads(target.read_text())["owned"]) == set(as_strings(CURRENT))
    assert "CFALLOW" not in fw.both()


def test_missing_save_tool(tmp_path: Path) -> None:
    need_tool("iptables")
    only = tmp_path / "bin"
    only.mkdir()
    (only / "iptables").symlink_to("/usr/sbin/iptables-nft")
    with namespace("ipm") as ns:
        runner = Runner(prefix=["/usr/sbin/ip", "netns", "exec", ns], env={"PATH": str(only)})
        backend = build("iptables", {"variant": "nft"}, Context(runner=runner, state_dir=tmp_path))
        result = run_backend(backend, CURRENT, dry_run=True)  # the read finds it missing
    assert result.error == "iptables-nft-save: command not found (install the iptables package)"


def test_missing_iptables_behind_a_wrapper(tmp_path: Path) -> None:
    """``ip netns exec`` reports a missing command itself: still the same one line."""
    with namespace("ipw") as ns:
        runner = Runner(prefix=["/usr/sbin/ip", "netns", "exec", ns], env={"PATH": str(tmp_path)})
        result = run_backend(
            build("iptables", {}, Context(runner=runner, state_dir=tmp_path)),
            CURRENT,
            dry_run=False,
        )
    assert result.error == "no iptables command found (install the iptables package)"


def test_without_iptables_a_dry_run_plans_and_names_the_package(fw: Fw) -> None:
    """A fresh server has no iptables: the dry run shows the whole plan (exit 0) and says
    what a real sync needs; the real sync fails on that one line and writes nothing."""
    empty = fw.tmp / "empty-bin"
    empty.mkdir()
    conf = "[backends.iptables]\n"
    dry = cli(fw, conf, "sync", "--source", "bundled", "--dry-run", "--json", path=str(empty))
    assert dry.returncode == 0, dry.stderr
    (report,) = json.loads(dry.stdout)["backends"]
    assert report["error"] is None
    assert set(report["add"]) == set(as_strings(CURRENT)) and report["current"] == []
    assert report["notes"] == [
        "no iptables command here: planned against an empty ruleset; "
        "a real sync needs the iptables package installed first"
    ]
    real = cli(fw, conf, "sync", "--source", "bundled", path=str(empty))
    assert real.returncode == 1
    assert "install the iptables package" in real.stderr
    assert "CFALLOW" not in fw.both()


@pytest.mark.parametrize("variant", VARIANTS)
def test_missing_privileges(variant: str, tmp_path: Path) -> None:
    need_tool("setpriv")
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]
    with namespace("ipp") as ns:
        runner = Runner(prefix=[*ns_exec(ns), *drop])
        backend = build(
            "iptables", {"variant": variant}, Context(runner=runner, state_dir=tmp_path)
        )
        result = run_backend(backend, CURRENT, dry_run=False)
    save = "iptables-nft-save" if variant == "nft" else "iptables-legacy-save"
    assert result.error == (
        f"{save}: permission denied (needs root, or CAP_NET_ADMIN and CAP_NET_RAW)"
    )


def test_remove_lists_what_it_deletes_not_drift(fw: Fw) -> None:
    conf = "[backends.iptables]\n"
    assert cli(fw, conf, "sync", "--source", "bundled").returncode == 0
    removed = cli(fw, conf, "remove")
    assert removed.returncode == 0, removed.stderr
    lines = removed.stdout.splitlines()
    # one summary line first (what it removed, in words), then what it deletes
    assert lines[0].startswith("iptables: +0 -22 =0 removed (IPv4: delete")
    assert "  x IPv4: delete 3 jump(s) and chain CFALLOW (15 rules)" in lines
    assert "drift" not in removed.stdout and "  ~ " not in removed.stdout


def test_a_jump_with_other_ports_names_the_wanted_ports(fw: Fw) -> None:
    assert (
        cli(fw, "[backends.iptables]\nports = [443]\n", "sync", "--source", "bundled").returncode
        == 0
    )
    status = cli(fw, "[backends.iptables]\nports = [80, 443]\n", "status", "--source", "bundled")
    assert status.returncode == 3
    # status is a table: the drift is in its note column, wrapped at 100 columns
    shown = unwrapped(status.stdout)
    line = shown[shown.index("drift: IPv4: jump differs") :]
    assert "is -p tcp -m multiport --dports 443 -m conntrack --ctstate UNTRACKED " in line
    assert "config wants -p tcp -m conntrack --ctorigdstport 80 " in line
    assert "-p tcp -m multiport --dports 80,443 -m conntrack --ctstate UNTRACKED " in line
