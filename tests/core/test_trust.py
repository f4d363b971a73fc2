"""A root run trusts only what root alone can change: the config, the commands it names.

End to end through the real CLI as root, with real files chowned to
``nobody`` and a world-writable directory: the command the config names
(``evil.sh``, which would leave a marker file) never runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import need_root
from support.cli_helpers import run_proc

NOBODY = 65534


@pytest.fixture(autouse=True)
def _root() -> None:
    need_root()


class Lab:
    """A config naming ``evil.sh`` as Fail2Ban's client, in a root-owned 0755 directory."""

    def __init__(self, tmp: Path) -> None:
        self.top = tmp / "lab"
        self.top.mkdir(mode=0o755)
        (self.top / "f2b" / "jail.d").mkdir(parents=True)
        self.marker = self.top / "ran-as-root"
        self.evil = self.script(self.top / "evil.sh")
        self.config = self.top / "config.toml"

    def script(self, path: Path) -> Path:
        path.write_text(f"#!/bin/sh\ntouch {self.marker}\nexit 1\n")
        path.chmod(0o755)
        return path

    def write(self, client: Path | None = None, extra: str = "", where: Path | None = None) -> Path:
        conf = where or self.config
        conf.write_text(
            extra + "[backends.fail2ban]\n"
            f'client = "{client or self.evil}"\n'
            f'config_dir = "{self.top / "f2b"}"\n'
        )
        conf.chmod(0o644)
        return conf

    def status(self, conf: Path | None = None) -> tuple[int, list[str]]:
        done = run_proc(
            "--config",
            str(conf or self.config),
            "--state-dir",
            str(self.top / "state"),
            "status",
            "--source",
            "bundled",
        )
        return done.rc, done.err.splitlines()


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


def refused(lab: Lab, conf: Path | None = None) -> str:
    rc, err = lab.status(conf)
    assert rc == 2, err
    assert len(err) == 1, err
    assert not lab.marker.exists(), "the configured command ran as root"
    assert "cfallow runs as root and will not trust it" in err[0]
    return err[0]


def test_control_a_trusted_config_does_run_its_client(lab: Lab) -> None:
    """Without this, the refusals below could pass because evil.sh never ran anyway."""
    lab.write()
    rc, _ = lab.status()
    assert rc == 1 and lab.marker.exists()


def test_a_config_file_owned_by_nobody_and_world_writable(lab: Lab) -> None:
    conf = lab.write()
    os.chown(conf, NOBODY, NOBODY)
    conf.chmod(0o666)
    assert f"config file {conf} is owned by uid {NOBODY}, not root" in refused(lab)


def test_a_root_config_file_writable_by_others(lab: Lab) -> None:
    lab.write().chmod(0o666)
    assert "is writable by group or others (mode 0666)" in refused(lab)


def test_a_config_in_a_world_writable_directory(lab: Lab) -> None:
    open_dir = lab.top / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    conf = lab.write(where=open_dir / "config.toml")
    assert f"directory {open_dir} is writable by group or others" in refused(lab, conf)


def test_a_config_symlink_is_judged_by_its_target(lab: Lab) -> None:
    theirs = lab.top / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    target = lab.write(where=theirs / "config.toml")
    lab.config.symlink_to(target)
    assert f"directory {theirs} is owned by uid {NOBODY}" in refused(lab)


def test_a_client_owned_by_nobody(lab: Lab) -> None:
    lab.write()
    os.chown(lab.evil, NOBODY, NOBODY)
    msg = refused(lab)
    assert msg.startswith(
        f"cfallow: error: {lab.config}: [backends.fail2ban] client {lab.evil} is owned by"
    )


def test_a_client_in_a_world_writable_directory(lab: Lab) -> None:
    open_dir = lab.top / "bin"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    lab.write(client=lab.script(open_dir / "evil.sh"))
    assert f"directory {open_dir} is writable by group or others" in refused(lab)


def test_a_client_found_on_path_is_checked_where_it_resolves(lab: Lab) -> None:
    bin_dir = lab.top / "bin"
    bin_dir.mkdir()
    lab.script(bin_dir / "f2b-evil")
    os.chown(bin_dir / "f2b-evil", NOBODY, NOBODY)
    lab.write(client=Path("f2b-evil"))
    done = run_proc(
        "--config",
        str(lab.config),
        "status",
        "--source",
        "bundled",
        env={"PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    assert done.rc == 2 and not lab.marker.exists(), done.err
    assert f"client {bin_dir / 'f2b-evil'} is owned by uid {NOBODY}" in done.err


def test_metrics_file_in_a_world_writable_directory(lab: Lab) -> None:
    open_dir = lab.top / "metrics"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    lab.write(extra=f'metrics_file = "{open_dir / "cfallow.prom"}"\n')
    assert f"metrics_file directory {open_dir} is writable by group or others" in refused(lab)
    lab.write(extra=f'metrics_file = "{open_dir / "not-yet" / "cfallow.prom"}"\n')
    assert f"metrics_file directory {open_dir} is writable" in refused(lab)


def test_metrics_directory_is_checked_itself_not_above_it(lab: Lab) -> None:
    """Debian's layout: a root-owned 0755 node-exporter dir in a directory of another user."""
    theirs = lab.top / "prometheus"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    (theirs / "node-exporter").mkdir(mode=0o755)
    lab.write(extra=f'metrics_file = "{theirs / "node-exporter" / "cfallow.prom"}"\n')
    rc, err = lab.status()
    assert rc == 1 and "will not trust" not in "".join(err)
    lab.marker.unlink()
    os.chown(theirs / "node-exporter", NOBODY, NOBODY)
    assert f"metrics_file directory {theirs / 'node-exporter'} is owned by uid" in refused(lab)


def test_a_sticky_root_directory_like_tmp_is_trusted_above_a_root_file(lab: Lab) -> None:
    sticky = lab.top / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    lab.write(where=sticky / "config.toml")
    rc, _ = lab.status(sticky / "config.toml")
    assert rc == 1 and lab.marker.exists()  # trusted: the (trusted) client ran


@pytest.mark.parametrize(
    ("backend", "key"),
    [("nginx", "reload_command"), ("apache", "test_command"), ("caddy", "reload_command")],
)
def test_a_web_servers_command_owned_by_nobody(lab: Lab, backend: str, key: str) -> None:
    """The real-IP backends run their test and reload commands as root too."""
    os.chown(lab.evil, NOBODY, NOBODY)
    lab.config.write_text(
        f'[backends.{backend}]\npath = "{lab.top / "list"}"\n{key} = ["{lab.evil}"]\n'
    )
    lab.config.chmod(0o644)
    msg = refused(lab)
    assert msg.startswith(
        f"cfallow: error: {lab.config}: [backends.{backend}] {key} {lab.evil} is owned by"
    )
