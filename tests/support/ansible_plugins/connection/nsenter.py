"""Ansible connection plugin for the tests: a booted systemd-nspawn container,
entered with ``nsenter`` through its leader pid (``ansible_host``).

The containers run with ``--register=no`` (no machinectl), so the leader pid is
the only handle: commands run in its mount, UTS, IPC, network and PID
namespaces, with its root and a clean environment; files go in and out through
``cat`` inside the container. This machine's network is never used.
"""

from __future__ import annotations

import shlex
import subprocess
from typing import Any

from ansible.errors import AnsibleError
from ansible.plugins.connection import ConnectionBase

DOCUMENTATION = """
name: nsenter
short_description: Run tasks in a booted systemd-nspawn container through nsenter (tests only)
description:
  - Enters the namespaces of the container's leader pid with nsenter.
author: cfallow developers
options:
  remote_addr:
    description: The container's leader pid.
    vars:
      - name: ansible_host
  remote_user:
    description: Ignored (always root).
    vars:
      - name: ansible_user
"""

ENV = [
    "env",
    "-i",
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LANG=C.UTF-8",
    "USER=root",
    "LOGNAME=root",
]


class Connection(ConnectionBase):
    """nsenter into a container's leader pid."""

    transport = "nsenter"
    has_pipelining = True

    def _argv(self, command: str) -> list[str]:
        pid = str(self.get_option("remote_addr"))
        if not pid.isdigit():
            raise AnsibleError(f"nsenter: ansible_host must be the leader pid, got {pid!r}")
        ns = ["nsenter", "-t", pid, "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--"]
        return [*ns, *ENV, "/bin/sh", "-c", command]

    def _connect(self) -> Connection:
        self._connected = True
        return self

    def exec_command(
        self, cmd: str, in_data: bytes | None = None, sudoable: bool = True
    ) -> tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        proc = subprocess.run(
            self._argv(cmd), input=in_data or b"", capture_output=True, check=False
        )
        return proc.returncode, proc.stdout, proc.stderr

    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        with open(in_path, "rb") as fh:
            data = fh.read()
        proc = subprocess.run(
            self._argv(f"cat > {shlex.quote(out_path)}"),
            input=data,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            raise AnsibleError(f"nsenter put_file {out_path}: {proc.stderr.decode()}")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        proc = subprocess.run(
            self._argv(f"cat {shlex.quote(in_path)}"), capture_output=True, check=False
        )
        if proc.returncode != 0:
            raise AnsibleError(f"nsenter fetch_file {in_path}: {proc.stderr.decode()}")
        with open(out_path, "wb") as fh:
            fh.write(proc.stdout)

    def close(self) -> None:
        self._connected = False

    def reset(self, *args: Any, **kwargs: Any) -> None:
        self.close()
