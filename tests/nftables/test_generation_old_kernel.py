"""Kernels before 5.14 have no network namespace cookie. The namespace's inode number,
the fallback, is reused once the namespace is gone, and a new namespace's generation
starts again from 1: a container restarted on the same boot could meet the key of its
last life and a memo of another ruleset (iptables' kept tables: a CFALLOW chain the
restart took away). The fallback therefore names a namespace only with the start of the
process 1 sharing it (a container's init: a restart is a new one), and else gives no
generation at all (no memo, an analysis every run).

The old kernel is simulated in a child process: ``getsockopt(SO_NETNS_COOKIE)`` fails
there as it does before 5.14 (ENOPROTOOPT); everything else is the real kernel's.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import namespace, need_tool, ns_exec

pytestmark = pytest.mark.root

CHILD = """
import errno, socket
from cfallow.netfilter import generation

class Old(socket.socket):
    def getsockopt(self, level, name, *rest):
        if (level, name) == (socket.SOL_SOCKET, generation.SO_NETNS_COOKIE):
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        return super().getsockopt(level, name, *rest)

socket.socket = Old
try:
    print(generation.current())
except OSError as exc:
    print("none:", exc)
"""


def _run(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def test_a_namespace_without_a_lasting_name_has_no_generation() -> None:
    with namespace("oldk") as ns:  # its process 1 is the host's, in another namespace
        out = _run(ns_exec(ns, sys.executable, "-c", CHILD))
    assert out.startswith("none:"), f"a key that a later namespace may reuse: {out}"


def test_a_containers_namespace_is_named_with_its_init() -> None:
    """The shortcut where it is honest: a namespace whose process 1 lives in it (a
    container's init, here ``unshare``'s child) is named by its inode and that start."""
    need_tool("unshare")
    argv = ["unshare", "--net", "--pid", "--fork", "--mount-proc"]
    keys = [_run([*argv, sys.executable, "-c", CHILD]) for _ in range(2)]
    assert all(not k.startswith("none:") and "@" in k.split("/")[1] for k in keys), keys
    starts = [k.split("/")[1].split("@")[1] for k in keys]
    assert all(s.isdigit() for s in starts), keys
