"""The role against three fresh Debian 12 servers in one playbook run: a fleet.

Each server is a fresh root (support.fresh.root) booted with ``--private-network``
and kept running; ``ansible-playbook`` on this machine reaches them through a
test-side connection plugin that enters each container's leader pid with
``nsenter`` (support/ansible_plugins/connection/nsenter.py). The playbook is
ansible/README.md's example, taken from the file as written; the inventory
names the containers as the group ``origins``. The package's dependencies come
from the apt cache a setup step filled (the containers have no network). The
example fetches once per play on the controller (``cfallow_fetch_once``): a
stand-in for Cloudflare on this machine's 127.0.0.1 (``-e cfallow_source``
points there; from inside a container that address is the container's own, so
a host that fetched by itself would fail) counts the requests. The matrix:
``--check`` on the fresh hosts (exit 0, nothing installed, no request), apply
(one request for the three hosts, each with the stand-in's list, etag and
date), ``--check`` again (changed=0 on every task, no request), apply again
(changed=0, one request).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support import need_tool
from support.cli_helpers import fixture_text
from support.fresh.deb import build_deb, deb_layer
from support.fresh.root import FreshServer
from support.nspawn import _ENTER, own_cgroups

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PLUGINS = ROOT / "tests" / "support" / "ansible_plugins"
RECAP = re.compile(
    r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE
)


def readme_example() -> str:
    """The first yaml block of ansible/README.md, as written."""
    text = (ROOT / "ansible" / "README.md").read_text()
    (block, *_) = re.findall(r"```yaml\n(.*?)```", text, re.S)
    return str(block)


def leader(nspawn: int) -> int | None:
    """The container's init: systemd-nspawn's child."""
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{nspawn}/task").iterdir():
            kids = (task / "children").read_text().split()
            if kids:
                return int(kids[0])
    return None


def enter(pid: int, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def running(server: FreshServer, name: str) -> Iterator[int]:
    """Boot ``server`` (private network) and keep it up; its leader pid. Powered off after."""
    console = open(server.base / "console-running.log", "w")  # noqa: SIM115
    argv = ["systemd-nspawn", "-q", "-D", str(server.root), "--register=no", "--keep-unit"]
    with console, own_cgroups(f"cfallow-ansible-{os.getpid()}-{name}") as cgroups:
        enter_cg = ["sh", "-c", _ENTER, "sh", str(len(cgroups))]
        enter_cg += [str(d / "cgroup.procs") for d in cgroups]
        proc = subprocess.Popen(
            [*enter_cg, *argv, "--private-network", "-b"],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            pid = None
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and proc.poll() is None:
                pid = pid or leader(proc.pid)
                if pid and enter(pid, "systemctl", "is-system-running", "--wait").stdout.strip():
                    break
                time.sleep(0.5)
            assert pid and proc.poll() is None, (server.base / "console-running.log").read_text()
            yield pid
        finally:
            if proc.poll() is None:
                pid = leader(proc.pid)
                if pid:
                    enter(pid, "systemctl", "poweroff", "--no-block")
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def test_role_on_three_fresh_servers_from_the_readme_example_one_fetch_per_play(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, httpserver: HTTPServer
) -> None:
    need_tool(
        "nsenter", str(BIN / "ansible-playbook"), str(BIN / "ansible-galaxy"), str(BIN / "cfallow")
    )
    api = fixture_text("api-ips.json")
    httpserver.expect_request("/client/v4/ips").respond_with_data(
        api, content_type="application/json"
    )
    base = httpserver.url_for("").rstrip("/")
    work = tmp_path / "controller"
    deb = build_deb(work / "dist", release=True)
    book = work / "site.yml"
    book.write_text(readme_example())
    assert re.search(r"cfallow_deb: dist/" + re.escape(deb.name), book.read_text()), (
        "the README's example names the package scripts/build-deb makes: " + deb.name
    )
    assert "cfallow_fetch_once: true" in book.read_text()
    source = {"api_url": f"{base}/client/v4/ips", "text_urls": [f"{base}/ips-v4", f"{base}/ips-v6"]}
    (work / "source.json").write_text(json.dumps({"cfallow_source": source}))

    layer = deb_layer(tmp_path_factory, deb)

    # The collection, built and installed under the test's own paths.
    galaxy = str(BIN / "ansible-galaxy")
    subprocess.run(
        [galaxy, "collection", "build", str(ROOT / "ansible"), "--output-path", str(work / "b")],
        check=True,
        capture_output=True,
    )
    (tarball,) = (work / "b").glob("cfallow-cfallow-*.tar.gz")
    subprocess.run(
        [galaxy, "collection", "install", str(tarball), "-p", str(work / "collections")],
        check=True,
        capture_output=True,
    )
    (work / "ansible.cfg").write_text(
        "[defaults]\n"
        f"collections_path = {work / 'collections'}\n"
        f"connection_plugins = {PLUGINS / 'connection'}\n"
        f"local_tmp = {work / 'local-tmp'}\n"
        "remote_tmp = /root/.ansible/tmp\n"
        "retry_files_enabled = false\nnocolor = true\nhost_key_checking = false\n"
    )
    env = {
        "ANSIBLE_CONFIG": str(work / "ansible.cfg"),
        "ANSIBLE_HOME": str(work / "home"),
        "HOME": str(work / "home"),
        "PATH": f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C.UTF-8",
    }
    servers = [FreshServer(tmp_path / f"s{i}", layers=[layer]) for i in range(3)]
    with contextlib.ExitStack() as stack:
        for s in servers:
            stack.enter_context(s.mounted())
        pids = [stack.enter_context(running(s, f"s{i}")) for i, s in enumerate(servers)]
        (work / "hosts").write_text(
            "[origins]\n"
            + "".join(f"fresh{i} ansible_host={pid}\n" for i, pid in enumerate(pids))
            + "[origins:vars]\nansible_connection=nsenter\n"
            "ansible_python_interpreter=/usr/bin/python3\nansible_become_method=su\n"
        )

        def play(*extra: str) -> dict[str, tuple[int, int, int]]:
            argv = [str(BIN / "ansible-playbook"), "-i", "hosts", "site.yml"]
            argv += ["-e", "@source.json", *extra]
            proc = subprocess.run(
                argv, cwd=work, env=env, capture_output=True, text=True, check=False
            )
            out = proc.stdout + proc.stderr
            recap = {
                h: (int(c), int(u), int(f)) for h, c, u, f in RECAP.findall(out) if h != "PLAY"
            }
            assert proc.returncode == 0, out[-6000:]
            assert sorted(recap) == ["fresh0", "fresh1", "fresh2"], out[-3000:]
            return recap

        def requests() -> int:
            return len(httpserver.log)

        preview = play("--check")
        assert all(c > 0 for c, _, _ in preview.values()), preview
        for s in servers:
            assert not s.path("/usr/bin/cfallow").exists()
            assert not s.path("/etc/cfallow").exists()
        assert requests() == 0  # check mode reads no live source

        first = play()
        assert all(c > 0 for c, _, _ in first.values()), first
        assert requests() == 1  # one fetch for the whole play
        etag = json.loads(api)["result"]["etag"]
        known = [
            json.loads(s.path("/var/lib/cfallow/last-known-good.json").read_text()) for s in servers
        ]
        assert {k["etag"] for k in known} == {etag}, known
        assert len({k["fetched_at"] for k in known}) == 1  # the one list, its date kept
        for pid in pids:
            units = enter(
                pid, "systemctl", "is-enabled", "cfallow.timer", "cfallow-restore.service"
            )
            assert units.stdout.split() == ["enabled", "enabled"], units.stdout + units.stderr
            chain = enter(pid, "iptables", "-S", "CFALLOW")
            assert "104.16.0.0/13" in chain.stdout, chain.stdout + chain.stderr

        again = play("--check")  # changed=0 on every host is changed=0 on every task
        assert all(c == 0 for c, _, _ in again.values()), again
        assert requests() == 1
        second = play()
        assert all(c == 0 for c, _, _ in second.values()), second
        assert requests() == 2
