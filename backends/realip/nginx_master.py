"""The running nginx master: its pid file and the configuration file it was started with.

A master started with another ``-c`` than the one cfallow tests reloads a
configuration that may never read cfallow's file: the backend refuses to
reload it. The pid file is found as nginx finds it (``-g``, the main file's
``pid``, the compiled-in default) for :mod:`.realip_proc`'s confirmation.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

_PID_RE = re.compile(r"(?:^|[;\s])pid\s+([^;\s]+)\s*;")
_CONF_RE = re.compile(r"^# configuration file (.+):$", re.M)


def main_config(dump: str) -> str | None:
    """The main configuration file ``nginx -T`` dumped first."""
    found = _CONF_RE.search(dump)
    return found.group(1) if found else None


def _top_level(text: str) -> str:
    """``text`` without comments and without anything inside braces."""
    out: list[str] = []
    depth = 0
    for line in text.splitlines():
        for ch in line.split("#", 1)[0]:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth = max(depth - 1, 0)
            elif depth == 0:
                out.append(ch)
        out.append("\n")
    return "".join(out)


def pid_directive(dump: str, options: Sequence[str]) -> str | None:
    """The ``pid`` path the tested configuration names (``-g`` first, then the main file)."""
    for i, opt in enumerate(options[:-1]):
        if opt == "-g":
            found = _PID_RE.search(options[i + 1])
            if found:
                return found.group(1)
    files = _CONF_RE.split(dump)
    if len(files) < 3:  # [before, name, text, name, text, ...]
        return None
    found = _PID_RE.search(_top_level(files[2]))
    return found.group(1) if found else None


def compiled(version_output: str, key: str) -> str | None:
    """A ``--KEY=VALUE`` of ``nginx -V``'s configure arguments."""
    found = re.search(rf"--{re.escape(key)}=(\S+)", version_output)
    return found.group(1) if found else None


def args_of(pid: int) -> list[str] | None:
    """The command line the master was started with, from its process title.

    nginx sets the title to ``nginx: master process ARGV...`` (argv joined by
    spaces); None when the process is gone, hidden or not an nginx master.
    """
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    title = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    head = "nginx: master process "
    if not title.startswith(head):
        return None
    try:
        return shlex.split(title[len(head) :])
    except ValueError:
        return title[len(head) :].split()


def option(args: Sequence[str], flag: str) -> str | None:
    """The value of ``-c`` / ``-p`` in an nginx command line (``-c X`` or ``-cX``)."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag) and len(arg) > len(flag):
            return arg[len(flag) :]
    return None
