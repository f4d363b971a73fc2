"""docs/plugins.md's example plugin, as an outside distribution, passes cfallow's contract;
the same plugin with a clock in its plan's steps fails it, naming the steps.

The plugin's three files are the code blocks of docs/plugins.md, taken verbatim
(one source: the page cannot drift from what is tested). They are built and
installed with pip into a directory of the test's own, next to the installed
cfallow, and their contract test runs in a pytest of its own against a real nginx.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import need_root, need_tool
from support.fresh.root import REPO, readme_block

PLUGINS_MD = REPO / "docs" / "plugins.md"

pytestmark = [pytest.mark.root, pytest.mark.slow]

STAMPED = '''\
"""The example plugin with a clock in its plan's steps: the contract must refuse it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from cfallow.listfile import Write
from cfallow_geo import GeoBackend


@dataclass(frozen=True)
class StampedWrite(Write):
    at: float = field(default_factory=time.time)


class StampedGeoBackend(GeoBackend):
    name = "geo-stamped"

    def diff(self, observed, desired):  # type: ignore[no-untyped-def]
        plan = super().diff(observed, desired)
        steps = tuple(
            StampedWrite(s.path, s.old, s.new, s.keep_if_edited) if isinstance(s, Write) else s
            for s in plan.steps
        )
        return replace(plan, steps=steps)
'''

STAMPED_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "cfallow-geo-stamped"
version = "1.0.0"
dependencies = ["cfallow-geo"]

[project.entry-points."cfallow.backends"]
geo-stamped = "cfallow_geo_stamped:StampedGeoBackend"

[tool.setuptools]
py-modules = ["cfallow_geo_stamped"]
"""

STAMPED_TEST = """\
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import test_geo


class StampedHarness(test_geo.GeoHarness):
    name = "geo-stamped"


class TestStampedContract(test_geo.TestGeoContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Iterator[test_geo.GeoHarness]:
        harness = StampedHarness(tmp_path)
        harness.start()
        try:
            yield harness
        finally:
            harness.stop()
"""


def _install(source: Path, site: Path) -> None:
    """``pip install`` a distribution from its directory (offline: cfallow is there)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(source),
        ],
        check=True,
        capture_output=True,
    )


def _distribution(tmp: Path) -> tuple[Path, Path]:
    """The example from docs/plugins.md, installed into ``site``; its test in ``tests``."""
    dist, site, tests = tmp / "cfallow-geo", tmp / "site", tmp / "tests"
    for d in (dist, tests):
        d.mkdir()
    (dist / "pyproject.toml").write_text(readme_block("example-pyproject", PLUGINS_MD))
    (dist / "cfallow_geo.py").write_text(readme_block("example-module", PLUGINS_MD))
    (tests / "test_geo.py").write_text(readme_block("example-test", PLUGINS_MD))
    _install(dist, site)
    return site, tests


def _pytest(site: Path, tests: Path, name: str) -> subprocess.CompletedProcess[str]:
    """The plugin's own test run, as its author would: only ``site`` added to cfallow's."""
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{tests}")
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "--rootdir",
            str(tests),
            "-q",
            "-rf",
            name,
        ],
        cwd=tests,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_the_documented_plugin_passes_the_contract_as_an_outside_distribution(
    tmp_path: Path,
) -> None:
    need_root()
    need_tool("nginx")
    site, tests = _distribution(tmp_path)
    assert (site / "cfallow_geo-1.0.0.dist-info" / "entry_points.txt").read_text().count(
        "geo = cfallow_geo:GeoBackend"
    ) == 1
    done = _pytest(site, tests, "test_geo.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 passed" in done.stdout, done.stdout


def test_the_plugin_with_a_clock_in_its_steps_fails_the_contract_naming_the_steps(
    tmp_path: Path,
) -> None:
    need_root()
    need_tool("nginx")
    site, tests = _distribution(tmp_path)
    stamped = tmp_path / "cfallow-geo-stamped"
    stamped.mkdir()
    (stamped / "pyproject.toml").write_text(STAMPED_PYPROJECT)
    (stamped / "cfallow_geo_stamped.py").write_text(STAMPED)
    _install(stamped, site)
    (tests / "test_geo_stamped.py").write_text(STAMPED_TEST)
    done = _pytest(site, tests, "test_geo_stamped.py")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "1 failed, 5 passed" in done.stdout, out
    assert (
        "FAILED test_geo_stamped.py::TestStampedContract::test_read_writes_nothing_and_diff_is_pure"
        in out
    )
    assert "two diffs of one state give different steps" in out, out
