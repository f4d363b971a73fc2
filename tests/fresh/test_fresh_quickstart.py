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
from support.fresh import CHECKOUT, FreshServer, readme_block

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
    assert "a real sync needs the iptables package" in out + proc.stderr, out
