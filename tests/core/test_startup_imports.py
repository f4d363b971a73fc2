"""What an offline no-change run imports: only what that path uses.

A timer run that finds everything in step is most runs on most hosts; its start-up
is mostly imports. The HTTP stack, AWS, python-iptables, the host-firewall analysis,
metrics, notification and verify are each imported only where they run, and the
deprecated-path aliases cost nothing until an old path is imported. ``subprocess``
only where a process is started (the runner imports it when it runs one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support import namespace, need_tool, ns_exec
from support.cli_helpers import plant_lkg

#: Never imported by an offline sync that changes nothing (the fake backend, no metrics
#: file, no notify_url).
UNUSED = (
    "requests",
    "urllib3",
    "tenacity",
    "boto3",
    "iptc",
    "importlib.abc",
    "cfallow.fetch.http",
    "cfallow.netfilter.host",
    "cfallow.netfilter.nat",
    "cfallow.netfilter.evaluate",
    "cfallow.report.metrics",
    "cfallow.report.notify",
    "cfallow.verify",
    "cfallow.cli.check",
    "subprocess",
)

PROBE = (
    "import json, sys; from cfallow.cli.commands import main; rc = main(sys.argv[1:]); "
    "print(json.dumps(sorted(sys.modules))); sys.exit(rc)"
)


def offline(tmp: Path, section: str = "", prefix: tuple[str, ...] = ()) -> tuple[set[str], str]:
    """One ``sync --offline`` in a fresh interpreter: the modules it imported, its stdout."""
    conf = tmp / "config.toml"
    conf.write_text(
        '[source]\napi_url = "https://192.0.2.1/client/v4/ips"\n\n'
        + (section or f'[backends.fake]\npath = "{tmp / "target.json"}"\n')
    )
    argv = [sys.executable, "-c", PROBE, "--config", str(conf), "--state-dir", str(tmp / "state")]
    env = dict(os.environ, XTABLES_LOCKFILE=str(tmp / "xtables.lock"))
    r = subprocess.run(
        [*prefix, *argv, "-q", "sync", "--offline"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    *out, modules = r.stdout.strip().splitlines()
    return set(json.loads(modules)), "\n".join(out)


def test_an_offline_run_that_changes_nothing_imports_only_what_it_uses(tmp_path: Path) -> None:
    plant_lkg(tmp_path / "state")
    first, _ = offline(tmp_path)
    assert "cfallow.engine" in first and "cfallow_fake" in first  # the probe sees imports
    modules, out = offline(tmp_path)
    assert out == "fake: +0 -0 =22 in sync"
    assert sorted(set(UNUSED) & modules) == []


def test_an_offline_iptables_run_in_step_starts_nothing_and_imports_only_what_it_uses(
    tmp_path: Path,
) -> None:
    """The iptables backend (nf_tables) in step, in a namespace: no process is started
    (the ruleset's generation held), so ``subprocess`` is not even imported."""
    need_tool("iptables-nft", "ip6tables-nft")
    plant_lkg(tmp_path / "state")
    section = '[backends.iptables]\nvariant = "nft"\n'
    with namespace("imp") as ns:
        offline(tmp_path, section, tuple(ns_exec(ns)))  # writes cfallow's rules
        offline(tmp_path, section, tuple(ns_exec(ns)))  # reads its own commit once
        modules, out = offline(tmp_path, section, tuple(ns_exec(ns)))
    assert out == "iptables: +0 -0 =22 in sync"
    assert "cfallow.backends.iptables.backend" in modules
    assert sorted(set(UNUSED) & modules) == []


def test_importing_cfallow_installs_the_old_paths_without_importlib_abc() -> None:
    probe = (
        "import sys, warnings; import cfallow; assert 'importlib.abc' not in sys.modules\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from cfallow.config import Section\n"
        "from cfallow.section import Section as New\n"
        "assert Section is New\n"
        "print([str(w.message) for w in caught if w.category is DeprecationWarning])\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (
        "['cfallow.config is deprecated: import cfallow.cli.config instead']"
    )
