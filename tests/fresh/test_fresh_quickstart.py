"""The README's quick start on a fresh Debian 12 server: the first command, verbatim.

It must install cfallow alone, print a plan and exit 0, with Cloudflare
unreachable (a private network: the bundled snapshot, with a warning) and no
iptables on the host, and leave the server as it was: no package installed,
no unit enabled, nothing under /etc.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.cfdata import CURRENT
from support.cli_helpers import unwrapped
from support.fresh.root import CHECKOUT, FreshServer, readme_block

from cfallow.model import as_strings

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.xdist_group("fresh-quickstart")]


def _etc(server: FreshServer) -> dict[str, float]:
    etc = server.path("/etc")
    return {str(p.relative_to(etc)): p.lstat().st_mtime for p in sorted(etc.rglob("*"))}


def test_quick_start_first_command_plans_and_changes_nothing_else(
    tmp_path: Path, prepared: Path, offline: dict[str, str]
) -> None:
    command = readme_block("quick-start")
    server = FreshServer(tmp_path, layers=[prepared])
    with server.mounted():
        units, etc = server.enabled_units(), _etc(server)
        dpkg = server.path("/var/lib/dpkg/status").read_text()
        proc = server.run(command, cwd=CHECKOUT, env=offline)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert server.enabled_units() == units
        assert server.path("/var/lib/dpkg/status").read_text() == dpkg
        assert _etc(server) == etc
    out = proc.stdout
    assert "source: bundled snapshot" in out, out
    assert "using the bundled snapshot" in proc.stderr, proc.stderr
    added = set(re.findall(r"^\s*\+ (\S+)$", out, re.M))
    assert added == set(as_strings(CURRENT)), out
    assert re.search(r"^iptables: \+22 -0 =0", out, re.M), out
    assert "a real sync needs the iptables package" in unwrapped(out + proc.stderr), out


def test_quick_start_second_command_installs_the_test_stack_and_leaves_the_boot_as_it_was(
    tmp_path: Path, prepared: Path
) -> None:
    """The README's second command, verbatim, on a fresh root: ``scripts/bootstrap`` installs
    every package of the test stack (its packages' scripts enable nine daemons) and the
    test dependencies, then pytest runs. Here pytest is pointed at two test files through
    ``PYTEST_ADDOPTS`` (the whole suite runs in CI on this machine); the install is whole.

    A setup run with this machine's network (apt and pip reach the registries): the
    command runs no firewall command and starts no service (policy-rc.d), and the tests
    it runs here are pure.
    """
    command = readme_block("run-tests")
    server = FreshServer(tmp_path, layers=[prepared])
    with server.mounted():
        units = server.enabled_units()
        env = {
            "CI": "true",
            "DEBIAN_FRONTEND": "noninteractive",
            "PYTEST_ADDOPTS": "-p no:cacheprovider tests/core/test_model.py "
            "tests/core/test_validate.py",
        }
        proc = server.run(command, network=True, cwd=CHECKOUT, env=env, timeout=1500)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert server.enabled_units() == units, proc.stdout[-2000:]
        assert (
            server.path("/usr/sbin/nginx").exists() and server.path("/usr/sbin/firewalld").exists()
        )
    assert "bootstrap: disabling what the packages enabled:" in proc.stdout, proc.stdout[-2000:]
    assert re.search(r"^=+ \d+ passed in ", proc.stdout, re.M), proc.stdout[-2000:]
    assert " failed" not in proc.stdout.splitlines()[-1]
