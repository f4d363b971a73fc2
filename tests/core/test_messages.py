"""Small messages an operator meets first, with the real CLI: a typo on the command line
is a command-line error with a suggestion; a non-root user denied the state directory is
told to run as root; a tool that is installed but hidden by PATH is named with its
directory, not as a package to install."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support import namespace, need_root, need_tool, ns_exec
from support.cli_helpers import run_proc


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_a_backend_typo_on_the_command_line_is_a_usage_error(tmp_path: Path) -> None:
    config = _config(tmp_path, f'[backends.fake]\npath = "{tmp_path / "t.json"}"\n')
    r = run_proc(
        "--config",
        str(config),
        "--state-dir",
        str(tmp_path / "st"),
        "status",
        "--source",
        "bundled",
        "--backend",
        "ngnix",
    )
    assert r.rc == 2
    assert r.err == "cfallow: error: --backend ngnix: no such backend (did you mean nginx?)\n"


def test_a_non_root_user_is_told_to_run_as_root() -> None:
    need_root()
    need_tool("setpriv")
    tmp_path = Path(tempfile.mkdtemp(prefix="cfallow-nonroot-"))  # /tmp/pytest-of-root is 0700
    tmp_path.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)  # root's, as /var/lib/cfallow is
    config = _config(tmp_path, f'[backends.fake]\npath = "{tmp_path / "t.json"}"\n')
    os.chown(config, 65534, 65534)  # the config may be the user's own
    argv = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        # Reading stays allowed (the checkout and its venv may sit in a directory only root
        # enters, as a clean clone in a 0700 temp dir does); writing is what is refused.
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
        sys.executable,
        "-m",
        "cfallow",
        "--config",
        str(config),
        "--state-dir",
        str(state),
        "sync",
        "--source",
        "bundled",
    ]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(tmp_path)
    assert r.returncode == 1
    assert r.stderr == (
        f"cfallow: error: cannot open lock in {state}: Permission denied "
        "(cfallow changes the firewall: run it as root, e.g. with sudo)\n"
    )


@pytest.mark.root
@pytest.mark.parametrize(("backend", "tool"), [("nftables", "nft"), ("iptables", "iptables")])
def test_a_tool_hidden_by_path_is_named_with_its_directory(
    tmp_path: Path, backend: str, tool: str
) -> None:
    need_tool(tool)
    where = shutil.which(tool)
    assert where is not None
    config = _config(tmp_path, f'[backends.{backend}]\nmode = "lockdown"\n')
    path = os.pathsep.join(
        d for d in ("/usr/local/bin", "/usr/bin", "/bin") if d != os.path.dirname(where)
    )
    with namespace("path") as ns:  # should the tool be found after all, only here
        argv = [
            "env",
            f"PATH={path}",
            sys.executable,
            "-m",
            "cfallow",
            "--config",
            str(config),
            "--state-dir",
            str(tmp_path / "st"),
            "sync",
            "--dry-run",
            "--source",
            "bundled",
        ]
        r = subprocess.run(ns_exec(ns, *argv), capture_output=True, text=True, check=False)
    assert r.returncode == 1
    assert (
        f"{tool}: command not found ({where} is installed, but {os.path.dirname(where)} "
        "is not on PATH)"
    ) in r.stderr, r.stderr
    assert "install the" not in r.stderr
