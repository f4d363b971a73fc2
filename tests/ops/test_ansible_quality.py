"""The collection passes Ansible's own gates: ansible-test sanity, ansible-lint
(production profile) and galaxy-importer (what Galaxy runs on an upload).

Each runs on a copy laid out as ``ansible_collections/cfallow/cfallow`` with
``HOME`` in the test's temp dir. ansible-test's pip bootstrap comes from a
host this machine cannot reach: the suite pre-seeds its cache
(:mod:`support.ansible_seed`); the sanity requirements install from PyPI.
galaxy-importer runs offline (its defaults: ansible-lint offline, no
ansible-test container) on the tarball ``ansible-galaxy collection build`` makes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import need, need_tool
from support.ansible_seed import seed

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(the collection's copy, the environment to run the tools in)."""
    need_tool(str(BIN / "ansible-test"), str(BIN / "ansible-galaxy"))
    tmp = tmp_path_factory.mktemp("gates")
    home = tmp / "home"
    home.mkdir()
    coll = tmp / "ansible_collections" / "cfallow" / "cfallow"
    shutil.copytree(ROOT / "ansible", coll, symlinks=True)
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_COLLECTIONS_PATH": str(tmp),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "local-tmp"),
        "LC_ALL": "C.UTF-8",
        "NO_COLOR": "1",
    }
    return coll, env


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200, check=False
    )


def test_no_symlink_leaves_the_collection() -> None:
    for path in (ROOT / "ansible").rglob("*"):
        assert not path.is_symlink(), path
    for unit in ("cfallow.service", "cfallow.timer", "cfallow-restore.service"):
        role_copy = ROOT / "ansible" / "roles" / "cfallow" / "files" / unit
        assert role_copy.read_bytes() == (ROOT / "systemd" / unit).read_bytes(), unit
    dropin = ROOT / "ansible" / "roles" / "cfallow" / "files" / "docker-cfallow.conf"
    assert (
        dropin.read_bytes() == (ROOT / "systemd" / "docker.service.d" / "cfallow.conf").read_bytes()
    )
    hook = ROOT / "ansible" / "roles" / "cfallow" / "files" / "ufw-after.init"
    assert hook.read_bytes() == (ROOT / "contrib" / "ufw" / "after.init").read_bytes()


def test_ansible_test_sanity(layout: tuple[Path, dict[str, str]]) -> None:
    coll, env = layout
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    seed(Path(env["HOME"]), python)
    done = _run([str(BIN / "ansible-test"), "sanity", "--local", "--python", python], coll, env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    for test in ("validate-modules", "symlinks", "compile", "import", "pylint", "yamllint"):
        assert f'Running sanity test "{test}"' in out, test


def test_ansible_lint_production(layout: tuple[Path, dict[str, str]]) -> None:
    coll, env = layout
    lint = BIN / "ansible-lint"
    need(lint.exists(), "ansible-lint (the test extra)")
    done = _run([str(lint), "--profile", "production", "--offline", "--nocolor"], coll, env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert "Profile 'production' was required, and it passed" in out


def test_galaxy_importer(layout: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    coll, env = layout
    try:
        import galaxy_importer  # noqa: F401
    except ImportError:
        need(False, "galaxy-importer (the test extra)")
    dist = tmp_path / "dist"
    built = _run(
        [str(BIN / "ansible-galaxy"), "collection", "build", str(coll), "--output-path", str(dist)],
        tmp_path,
        env,
    )
    assert built.returncode == 0, built.stderr
    (tarball,) = dist.glob("cfallow-cfallow-*.tar.gz")
    cfg = tmp_path / "galaxy-importer.cfg"
    cfg.write_text(
        "[galaxy-importer]\nrun_ansible_test = False\nrun_ansible_lint = True\n"
        "offline_ansible_lint = True\ncheck_changelog = True\n"
        f"ansible_local_tmp = {tmp_path / 'importer-tmp'}\n"
    )
    done = _run(
        [sys.executable, "-m", "galaxy_importer.main", str(tarball)],
        tmp_path,
        {**env, "GALAXY_IMPORTER_CONFIG": str(cfg)},
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert "Importer processing completed successfully" in out
    assert "...ansible-lint run complete" in out
    problems = [
        ln
        for ln in out.splitlines()
        if ("WARNING" in ln or "ERROR" in ln) and "Ignore files skip ansible-test" not in ln
    ]
    assert problems == [], problems
