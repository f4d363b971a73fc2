"""Pre-seed ansible-test's pip bootstrap, which it fetches from a host this machine
cannot reach (only the package registries are reachable here).

ansible-test makes a virtualenv per sanity test and bootstraps pip in it with
a ``get-pip`` script cached at ``~/.ansible/test/cache/get_pip_X_Y.py``. The
seed put there is a few lines that run pip from the pip wheel of the very
version ansible-test asks for, downloaded from PyPI with this venv's pip; the
sanity requirements then install from PyPI as usual. ``HOME`` points into the
test's temp dir, so nothing lands in the real home directory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

SHIM = '''"""get-pip stand-in: pip {version} from its wheel (seeded by cfallow's tests)."""
import sys

sys.path.insert(0, {wheel!r})
from pip._internal.cli.main import main  # noqa: E402

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", "--upgrade", "--force-reinstall", *args]))
'''


def pip_version(python: str) -> str:
    """The pip version ansible-test bootstraps into its venvs for ``python`` (X.Y)."""
    from ansible_test._internal.python_requirements import get_venv_packages

    return get_venv_packages(SimpleNamespace(version=python))["pip"]  # type: ignore[arg-type]


def seed(home: Path, python: str) -> Path:
    """Write the seed under ``home``; returns its path."""
    version = pip_version(python)
    cache = home / ".ansible" / "test" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            f"pip=={version}",
            "-d",
            str(cache),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = cache.glob(f"pip-{version}-*.whl")
    target = cache / f"get_pip_{version.replace('.', '_')}.py"
    target.write_text(SHIM.format(version=version, wheel=str(wheel)))
    return target
