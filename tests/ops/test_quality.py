"""ruff and mypy are part of the suite: strict typing, also for RHEL 9's Python 3.9."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


PATHS = ("cfallow", "backends", "tests", "ansible", "bench")


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_check() -> None:
    r = _run(str(BIN / "ruff"), "check", *PATHS)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format() -> None:
    r = _run(str(BIN / "ruff"), "format", "--check", *PATHS)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("pyver", ["3.9", "3.11"])
def test_mypy(pyver: str) -> None:
    r = _run(str(BIN / "mypy"), "--python-version", pyver)
    assert r.returncode == 0, r.stdout + r.stderr
