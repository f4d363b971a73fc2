"""The in-step record's side of the command line, and who may be recorded at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli_helpers import plant_lkg

from cfallow import instep
from cfallow.cli import config
from cfallow.fetch import state

CFALLOW = str(Path(sys.executable).with_name("cfallow"))


def test_its_defaults_are_the_command_lines() -> None:
    assert str(config.DEFAULT_STATE_DIR) == instep.DEFAULT_STATE_DIR
    assert str(config.DEFAULT_CONFIG) == instep.DEFAULT_CONFIG
    assert instep.LOCK_FILE == state.LOCK_FILE


@pytest.mark.parametrize(
    ("argv", "found"),
    [
        (["sync"], ("/var/lib/cfallow", "/etc/cfallow/config.toml")),
        (["--config", "c.toml", "sync", "--offline"], ("/var/lib/cfallow", "c.toml")),
        (["sync", "--state-dir=/s", "-q", "--scheduled"], ("/s", "/etc/cfallow/config.toml")),
        (["--state-dir", "/a", "--state-dir", "/b", "sync"], ("/b", "/etc/cfallow/config.toml")),
        (
            ["sync", "--backend", "iptables", "--lock-timeout", "5"],
            ("/var/lib/cfallow", "/etc/cfallow/config.toml"),
        ),
    ],
)
def test_a_sync_with_the_options_it_knows(argv: list[str], found: tuple[str, str]) -> None:
    assert instep.where(argv) == found


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["status"],
        ["sync", "--dry-run"],
        ["sync", "--json"],
        ["-v", "sync"],
        ["sync", "--force"],
        ["sync", "--verify"],
        ["sync", "--source", "bundled"],
        ["sync", "--source-file", "x.json"],
        ["sync", "--state", "/s"],  # argparse takes the abbreviation; the record does not
        ["sync", "--config"],
        ["remove"],
        ["sync", "sync"],
        ["ranges", "sync"],
    ],
)
def test_anything_else_is_always_a_full_run(argv: list[str]) -> None:
    assert instep.where(argv) is None


def test_a_backend_without_witnesses_is_never_recorded(tmp_path: Path) -> None:
    """The fake backend (a file) gives none: every run plans, and no record is left."""
    plant_lkg(tmp_path / "state")
    conf = tmp_path / "config.toml"
    conf.write_text(f'[backends.fake]\npath = "{tmp_path / "target.json"}"\n')
    argv = [CFALLOW, "--config", str(conf), "--state-dir", str(tmp_path / "state")]
    env = {k: v for k, v in os.environ.items() if k != "CFALLOW_NO_INSTEP"}
    for expect in ("fake: +22 -0 =0 changed", "fake: +0 -0 =22 in sync"):
        r = subprocess.run(
            [*argv, "-q", "sync", "--offline"], capture_output=True, text=True, env=env, check=False
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == expect
        assert not (tmp_path / "state" / instep.FILE).exists()


def test_a_stale_record_is_removed_by_the_next_full_run_that_may_not_record(
    tmp_path: Path,
) -> None:
    plant_lkg(tmp_path / "state")
    record = tmp_path / "state" / instep.FILE
    record.write_text("{}")
    conf = tmp_path / "config.toml"
    conf.write_text(f'[backends.fake]\npath = "{tmp_path / "target.json"}"\n')
    r = subprocess.run(
        [
            CFALLOW,
            "--config",
            str(conf),
            "--state-dir",
            str(tmp_path / "state"),
            "sync",
            "--offline",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert not record.exists()
