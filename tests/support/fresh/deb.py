"""The Debian package for the fresh-server tests: built by scripts/build-deb, and a
setup layer (support.fresh.root) with what ``apt install`` of it needs in apt's cache."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import need_tool
from support.fresh.root import FreshServer, shared_layer

ROOT = Path(__file__).resolve().parents[3]
#: Downloaded next to the package into the layer's apt cache: the firewalls the
#: remove/purge test and the fresh-server tests' lockdowns ``apt install``.
EXTRA = ("nftables", "iptables")


def build_deb(out: Path, *, release: bool = False) -> Path:
    """``scripts/build-deb --out OUT`` (``CFALLOW_RELEASE=1`` with ``release``); the .deb."""
    need_tool("dpkg-deb")
    env = {**os.environ, **({"CFALLOW_RELEASE": "1"} if release else {})}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build-deb"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    deb = Path(proc.stdout.strip())
    assert deb.parent == out and re.fullmatch(r"cfallow_[^_]+_all\.deb", deb.name), deb
    return deb


def deb_layer(factory: pytest.TempPathFactory, deb: Path) -> Path:
    """A setup layer shared by the run's tests: apt's lists, and the packages that
    ``apt install`` of ``deb`` (and :data:`EXTRA`) would download, in apt's cache.

    The package's dependencies do not change with its version, so one layer
    serves every build.
    """

    def setup(server: FreshServer) -> None:
        server.allow_registries()
        server.fetch_debs()  # apt-get update
        server.path("/root/pkg").mkdir(parents=True, exist_ok=True)
        shutil.copy(deb, server.path(f"/root/pkg/{deb.name}"))
        server.run(
            ["apt-get", "install", "-y", "-qq", "--download-only", f"/root/pkg/{deb.name}", *EXTRA],
            network=True,
            env={"DEBIAN_FRONTEND": "noninteractive"},
            check=True,
        )
        shutil.rmtree(server.path("/root/pkg"))

    # Named by EXTRA: a layer of an earlier run with other packages is not taken for this one.
    return shared_layer(factory.getbasetemp().parent, "deb-deps-" + "-".join(EXTRA), setup)
