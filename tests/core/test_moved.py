"""0.1's module paths keep importing for one release, with a warning naming the new path."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: old path, a name a plugin would take from it, the module that must hold it now, and the
#: module the warning names (None: the path did not move, no warning)
CASES = [
    ("cfallow.config", "Section", "cfallow.section", "cfallow.cli.config"),
    ("cfallow.config", "parse_ports", "cfallow.section", "cfallow.cli.config"),
    ("cfallow.hostfw", "read", "cfallow.netfilter.host", "cfallow.netfilter.host"),
    ("cfallow.sources", "parse_api", "cfallow.fetch.sources", "cfallow.fetch.sources"),
    ("cfallow.backends.realip", "RealIpBackend", "cfallow.backends.realip.base", None),
    (
        "cfallow.backends.realip_nginx",
        "NginxBackend",
        "cfallow.backends.realip.nginx",
        "cfallow.backends.realip.nginx",
    ),
    (
        "cfallow.backends.iptables_rules",
        "OwnRule",
        "cfallow.backends.iptables.rules",
        "cfallow.backends.iptables.rules",
    ),
    (
        "cfallow.backends.fail2ban_client",
        "Client",
        "cfallow.backends.fail2ban.client",
        "cfallow.backends.fail2ban.client",
    ),
]

PROBE = """
import importlib, sys, warnings
old, name, new = sys.argv[1:]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    module = importlib.import_module(old)
assert getattr(module, name) is getattr(importlib.import_module(new), name)
print("|".join(str(w.message) for w in caught if w.category is DeprecationWarning))
"""


@pytest.mark.parametrize(("old", "name", "new", "named"), CASES)
def test_an_old_path_still_imports_and_says_where_it_went(
    old: str, name: str, new: str, named: str | None
) -> None:
    # A fresh interpreter: this session has long imported the new modules.
    out = subprocess.run(
        [sys.executable, "-c", PROBE, old, name, new],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if named is None:
        assert out == ""  # the package itself did not move: no warning
    else:
        assert out == f"{old} is deprecated: import {named} instead"
