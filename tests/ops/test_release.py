"""Release basics, and the first hour of a newcomer, from a wheel built as a user builds it.

The build runs ``python -m build`` (sdist, then the wheel from the sdist) on a
copy of this tree, offline (``--no-isolation``: the test venv has the build
backend pyproject asks for). The newcomer installs that wheel into a fresh
virtualenv with nothing but an offline wheelhouse of its dependencies, then
runs what the README says, firewall commands inside a test namespace only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import namespace, need, need_root, need_tool, ns_exec, sh
from support.wheels import dependencies

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SKIP = shutil.ignore_patterns(
    ".venv",
    "__pycache__",
    "build",
    "dist",
    "*.egg-info",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "results",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the wheel, the build's whole output)."""
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SKIP, symlinks=True)
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp / "dist"), str(src)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    need(proc.returncode == 0, f"python -m build: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    (wheel,) = (tmp / "dist").glob("cfallow-*.whl")
    return wheel, proc.stdout + proc.stderr


def test_the_build_has_no_deprecation_warnings(built: tuple[Path, str]) -> None:
    _, output = built
    assert "building wheel" in output.lower() or "Successfully built" in output
    assert not re.search(r"deprecat", output, re.I), output


def test_a_build_from_a_checkout_names_its_commit(built: tuple[Path, str]) -> None:
    wheel, _ = built
    version = wheel.name.split("-")[1]
    if (ROOT / ".git").exists() and shutil.which("git"):
        commit = sh(["git", "-C", str(ROOT), "rev-parse", "--short=7", "HEAD"]).strip()
        assert re.fullmatch(rf"0\.1\.0\+g{commit}(\.dirty)?", version), version
    else:
        assert version == "0.1.0"


def test_the_wheel_carries_the_license_and_the_data(built: tuple[Path, str]) -> None:
    import zipfile

    wheel, _ = built
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (meta,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(meta).decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert {"cfallow/data/snapshot.json", "cfallow/py.typed"} <= set(names)


def _source_files() -> set[str]:
    """Every file of the source tree as the wheel must name it (backends/ -> cfallow/backends/)."""
    out = set()
    for top, dest in (("cfallow", "cfallow"), ("backends", "cfallow/backends")):
        for f in (ROOT / top).rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
                out.add(f"{dest}/{f.relative_to(ROOT / top).as_posix()}")
    return out


def _source_modules() -> list[str]:
    names = []
    for path in sorted(_source_files()):
        if path.endswith(".py"):
            parts = path[: -len(".py")].split("/")
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_pyproject_names_every_package_of_the_tree() -> None:
    """setuptools cannot discover the backends/ -> cfallow.backends mapping: the list is
    explicit, so every directory of cfallow/ and backends/ holding files must be in it."""
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {path.rsplit("/", 1)[0].replace("/", ".") for path in _source_files()}
    assert dirs <= set(setup["packages"]), sorted(dirs - set(setup["packages"]))


def test_the_wheel_and_the_sdist_hold_every_file_of_the_tree(built: tuple[Path, str]) -> None:
    import tarfile
    import zipfile

    wheel, _ = built
    (sdist,) = wheel.parent.glob("cfallow-*.tar.gz")
    want = _source_files()
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = {n for n in zf.namelist() if not n.split("/", 1)[0].endswith(".dist-info")}
    assert want == in_wheel, (sorted(want - in_wheel), sorted(in_wheel - want))
    with tarfile.open(sdist) as tf:
        in_sdist = {m.name.split("/", 1)[1] for m in tf.getmembers() if m.isfile()}
    as_sdist = {p.replace("cfallow/backends/", "backends/", 1) for p in want}
    assert as_sdist <= in_sdist, sorted(as_sdist - in_sdist)


_PROBE = """
import importlib, json, sys
from importlib import metadata
mods = json.loads(sys.argv[1])
for name in mods:
    importlib.import_module(name)
dist = metadata.distribution("cfallow")  # not the test venv's plugins (a broken one on purpose)
group = [ep for ep in dist.entry_points if ep.group == "cfallow.backends"]
eps = {ep.name: ep.load().__module__ for ep in group}
import cfallow
print(json.dumps({"file": cfallow.__file__, "dist": str(dist.locate_file("")), "eps": eps}))
"""


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_installed_from_the_wheel_and_the_sdist_every_module_imports(
    built: tuple[Path, str], tmp_path: Path, kind: str
) -> None:
    """A fresh venv with only the built artifact (dependencies from the test venv, read-only):
    every module of the tree is installed and imports, every entry point loads,
    ``cfallow verify --help`` runs."""
    import json
    import site
    import sysconfig

    wheel, _ = built
    artifact = wheel if kind == "wheel" else next(wheel.parent.glob("cfallow-*.tar.gz"))
    venv = tmp_path / "venv"
    sh([sys._base_executable, "-m", "venv", str(venv)])  # type: ignore[attr-defined]
    py = str(venv / "bin" / "python")
    purelib = Path(sh([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).strip())
    # The dependencies (and setuptools for the sdist's build) from this test venv, after
    # the new venv's own site-packages: the artifact is the only cfallow it can import.
    ours = [p for p in (sysconfig.get_path("purelib"), *site.getsitepackages()) if p]
    (purelib / "zz-test-deps.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Python < 3.12's venv brings an old setuptools that would build the sdist: use pyproject's.
    sh([py, "-m", "pip", "uninstall", "-q", "-y", "setuptools"])
    pip = [py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation"]
    proc = subprocess.run(
        [*pip, str(artifact)], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    installed = {
        p.relative_to(purelib).as_posix() for p in (purelib / "cfallow").rglob("*") if p.is_file()
    }
    want = _source_files()
    assert want <= installed, sorted(want - installed)
    mods = [m for m in _source_modules() if not m.endswith(".__main__")]  # it runs the CLI
    proc = subprocess.run(
        [py, "-c", _PROBE, json.dumps(mods)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the checkout: "-c" puts the working directory first on sys.path
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert Path(seen["file"]).is_relative_to(purelib), seen["file"]
    assert Path(seen["dist"]) == purelib, seen["dist"]
    assert set(seen["eps"]) >= {"iptables", "nftables", "nginx", "fail2ban", "aws"}, seen
    assert all(m.startswith("cfallow.backends.") for m in seen["eps"].values()), seen
    proc = subprocess.run(
        [str(venv / "bin" / "cfallow"), "verify", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0 and "usage: cfallow verify" in proc.stdout, proc.stderr


def test_changelog_and_license_exist() -> None:
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## Unreleased" in changelog and "## 0.1.0" in changelog


def test_the_man_page_is_generated_from_the_parser_and_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make-manpage"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    page = (ROOT / "docs" / "cfallow.1").read_text()
    for command in ("ranges", "sync", "status", "check", "backends", "remove"):
        assert f".SS {command}\n" in page
    need_tool("groff")
    render = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(ROOT / "docs" / "cfallow.1")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert render.returncode == 0 and render.stderr == "", render.stderr


@pytest.mark.parametrize(
    ("line", "expected"),
    [("cfallow sy", "sync"), ("cfallow sync --dr", "--dry-run"), ("cfallow ch", "check")],
)
def test_shell_completion(tmp_path: Path, line: str, expected: str) -> None:
    out = tmp_path / "completions"
    env = {
        **os.environ,
        "_ARGCOMPLETE": "1",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
    }
    proc = subprocess.run(
        [str(BIN / "cfallow")], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert expected in out.read_text().split()


def _no_traceback(*outputs: str) -> None:
    for text in outputs:
        for line in text.splitlines():
            assert "Traceback" not in line and not line.startswith("  File "), text


@pytest.mark.root
def test_newcomer_first_hour(built: tuple[Path, str], tmp_path: Path) -> None:
    """Fresh venv from the wheel; --help, check, an offline dry run, a real sync and remove."""
    need_root()
    need_tool("iptables-save")
    wheel, _ = built
    house = dependencies(tmp_path / "wheels")
    venv = tmp_path / "venv"
    sh([sys._base_executable, "-m", "venv", str(venv)])  # type: ignore[attr-defined]
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links", str(house)]
    sh([*pip, str(wheel)])
    cfallow = str(venv / "bin" / "cfallow")
    conf = tmp_path / "config.toml"
    conf.write_text('[backends.iptables]\nports = [80, 443]\nmode = "lockdown"\n')
    base = ["--config", str(conf), "--state-dir", str(tmp_path / "state")]
    env = {**os.environ, "CFALLOW_FIREWALL_LOCK": str(tmp_path / "cfallow.lock")}
    env.pop("PYTHONPATH", None)

    def run(ns: str | None, *args: str, rc: int = 0) -> str:
        argv = [cfallow, *args] if ns is None else ns_exec(ns, cfallow, *args)
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        _no_traceback(proc.stdout, proc.stderr)
        assert proc.returncode == rc, (args, proc.stdout, proc.stderr)
        return proc.stdout + proc.stderr

    assert "usage: cfallow" in run(None, "--help")
    assert run(None, "--version").strip() == f"cfallow {wheel.name.split('-')[1]}"
    with namespace("newc") as ns:
        checked = run(ns, *base, "check", "--unit", str(tmp_path / "no-unit"))
        assert "ok    backend iptables: preflight passed" in checked
        plan = run(ns, *base, "sync", "--dry-run", "--source", "bundled")
        assert "iptables: +22 -0 =0 would change (dry run)" in plan.splitlines()
        assert "CFALLOW" not in sh(ns_exec(ns, "iptables-save"))
        run(ns, *base, "sync", "--source", "bundled")
        saved = sh(ns_exec(ns, "iptables-save")) + sh(ns_exec(ns, "ip6tables-save"))
        assert saved.count("-A CFALLOW -s ") == 22, saved
        status = run(ns, *base, "status", "--source", "bundled")  # a table
        assert re.search(r"^iptables +in sync +0 +0 +22$", status, re.M), status
        run(ns, *base, "remove")
        saved = sh(ns_exec(ns, "iptables-save")) + sh(ns_exec(ns, "ip6tables-save"))
        assert "CFALLOW" not in saved
