"""The fresh-server tier's shared setup: one prepared layer per test run.

The layer holds what the README's commands will install, downloaded through
the registries once (a setup run with this machine's network): this checkout
as the user's clone at /root/cfallow, the wheels ``pip install .`` needs, and
the .debs of ``apt install nftables`` / ``apt install iptables``. The tests
then run the README's text verbatim inside private networks, with pip and apt
pointed at those copies (:meth:`support.fresh.root.FreshServer.offline_env`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.fresh.root import CHECKOUT, FreshServer, shared_layer

#: Debian packages the README's install text names (``apt install ...``).
DEBS = ("nftables", "iptables")
#: ``apt install`` asks before installing dependencies; a user answers yes.
APT_YES = "/etc/apt/cfallow-test-yes.conf"


def _prepare(server: FreshServer) -> None:
    server.allow_registries()
    server.copy_checkout()
    server.fetch_wheels(CHECKOUT, "setuptools>=77", "wheel")
    server.fetch_debs(*DEBS)
    server.write(APT_YES, 'APT::Get::Assume-Yes "true";\n')


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prepared layer's upper dir (made once per run, shared by xdist workers)."""
    run_dir = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # basetemp/popen-gwN: the run's dir is above
        run_dir = run_dir.parent
    return shared_layer(run_dir, "readme", _prepare)


@pytest.fixture(scope="session")
def offline() -> dict[str, str]:
    """The environment of the README's commands: pip and apt from the prepared layer
    (no index, no network), ``apt install`` answered yes."""
    return {**FreshServer.offline_env(), "APT_CONFIG": APT_YES}
