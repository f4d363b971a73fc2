"""Ways a real-IP sync could report success while the server does otherwise (issue 23).

Each against the real server, started by the test from a temp dir:

* HAProxy runs, but the configured stats socket is another path: an error
  naming the socket (it was "not running", exit 0, the live ACL left old);
* Apache's graceful restart makes the parent exit (a ``Listen`` on a taken
  port, which ``apache2ctl -t`` passes): an error, the old list back (it was
  a success with the site down); a good one returns once the parent logged
  ``AH00489``, whatever the ``LogLevel``;
* an executable the config names (``nginx``, ``apachectl``, ``haproxy``,
  ``caddy``) that root does not own alone: refused before anything runs,
  custom ``test_command`` and ``reload_command`` or not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.cfdata import CURRENT, OLD
from support.realip.apache import Apache
from support.realip.haproxy import Haproxy
from support.realip.lab import port_in_use, running, sync, synced_to_old
from support.realip.nginx import Nginx

from cfallow.errors import ConfigError

pytestmark = pytest.mark.root
NOBODY = 65534


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Haproxy]:
    with running(Haproxy(tmp_path / "haproxy")) as srv:
        yield srv


@pytest.fixture
def apache(tmp_path: Path) -> Iterator[Apache]:
    with running(Apache(tmp_path / "apache")) as srv:
        yield srv


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    with running(Nginx(tmp_path / "nginx")) as srv:
        yield srv


# -- HAProxy: a socket at the wrong path while HAProxy runs --------------------------------


def test_haproxy_running_with_the_socket_elsewhere_is_an_error(haproxy: Haproxy) -> None:
    assert sync(haproxy, OLD).applied
    old = haproxy.list_path.read_bytes()
    wrong = haproxy.root / "run" / "admin.sock"
    result = sync(haproxy, CURRENT, socket=str(wrong))
    assert result.error is not None, "a sync with the live ACL left old reported success"
    assert "\n" not in result.error
    assert f"haproxy (pid {haproxy.master_pid()}" in result.error
    assert f"its stats socket {wrong} does not answer (No such file or directory)" in result.error
    assert "set [backends.haproxy] socket to its" in result.error
    assert f"names {haproxy.socket}" in result.error  # the path the config itself gives
    assert haproxy.list_path.read_bytes() == old and haproxy.live() == OLD

    haproxy.stop()  # not running at all: the file is written for its next start
    stopped = sync(haproxy, CURRENT, socket=str(wrong))
    assert stopped.error is None and stopped.applied
    with running(haproxy):
        assert haproxy.live() == CURRENT


def test_haproxy_stale_socket_file_while_it_runs_is_an_error(haproxy: Haproxy) -> None:
    import socket as sk

    stale = haproxy.root / "stale.sock"
    with sk.socket(sk.AF_UNIX) as s:
        s.bind(str(stale))  # bound, never listening: connections are refused
    result = sync(haproxy, CURRENT, socket=str(stale))
    assert result.error is not None and f"its stats socket {stale} does not answer" in result.error
    assert haproxy.live() == frozenset()


# -- Apache: a graceful restart the parent does not survive ---------------------------------


def test_apache_parent_exiting_on_the_graceful_restart_is_an_error_and_the_old_list_stays(
    apache: Apache,
) -> None:
    old, (pid, _) = synced_to_old(apache)
    with port_in_use() as port:
        # apache2ctl -t passes (it binds nothing); the parent's bind then fails.
        (apache.root / "conf.d" / "admin.conf").write_text(f"Listen 127.0.0.1:{port}\n")
        result = sync(apache, CURRENT)
        assert result.error is not None, "graceful exited 0 and the site is down"
    assert "\n" not in result.error
    assert f"Apache's parent process (pid {pid}) exited during the reload" in result.error
    assert "could not bind to address" in result.error or "no listening sockets" in result.error
    assert apache.list_path.read_bytes() == old
    assert not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("level", ["notice", "crit"])
def test_apache_sync_returns_once_the_parent_logged_it_resumed(apache: Apache, level: str) -> None:
    if level != "notice":
        apache.conf.write_text(
            apache.conf.read_text().replace("LogLevel notice", f"LogLevel {level}")
        )
        apache.reload_by_hand()
    log = apache.root / "error.log"
    before = log.read_text().count("AH00489")
    pid = apache.master_pid()
    assert sync(apache, CURRENT).applied
    assert log.read_text().count("AH00489") == before + 1  # at once: no waiting after the sync
    assert apache.master_pid() == pid


# -- executables from config: all trust-checked before anything runs -----------------------


def _untrusted(tmp_path: Path, real: str) -> tuple[Path, Path]:
    top = tmp_path / "bin"
    top.mkdir(mode=0o755)
    marker = top / "ran-as-root"
    evil = top / f"evil-{real}"
    evil.write_text(f'#!/bin/sh\ntouch {marker}\nexec {real} "$@"\n')
    evil.chmod(0o755)
    os.chown(evil, NOBODY, NOBODY)
    return evil, marker


def test_nginx_from_config_is_checked_with_custom_commands(nginx: Nginx, tmp_path: Path) -> None:
    evil, marker = _untrusted(tmp_path, "nginx")
    opts = nginx.options()
    custom = {
        "test_command": ["nginx", *opts, "-t"],  # no dump: the backend would ask nginx -V
        "reload_command": ["nginx", *opts, "-s", "reload"],
    }
    with pytest.raises(ConfigError) as err:
        sync(nginx, CURRENT, nginx=str(evil), **custom)
    assert f"[backends.nginx] nginx {evil} is owned by uid {NOBODY}, not root" in str(err.value)
    assert not marker.exists() and not nginx.list_path.exists()
    assert sync(nginx, CURRENT, **custom).error is None  # the same run with root's nginx


@pytest.mark.parametrize(
    ("backend", "key", "real"),
    [
        ("apache", "apachectl", "apache2ctl"),
        ("haproxy", "haproxy", "haproxy"),
        ("caddy", "caddy", "caddy"),
    ],
)
def test_every_configured_executable_is_checked(
    tmp_path: Path, backend: str, key: str, real: str
) -> None:
    from cfallow.backend import Context, build

    evil, marker = _untrusted(tmp_path, real)
    section = {
        "path": str(tmp_path / "list"),
        key: str(evil),
        "test_command": ["true"],
        "reload_command": ["true"],
    }
    with pytest.raises(ConfigError, match=rf"\[backends.{backend}\] {key} {evil} is owned by uid"):
        build(backend, section, Context())
    assert not marker.exists()
