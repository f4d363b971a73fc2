"""The helper process the verify runs through the Runner (``python -m cfallow.verify.probe``).

``probe``: listeners on every port in the scratch origin namespace (and on
every port the host's NAT sends connections to: ``listen``), then every
probe connects from its source address in the scratch edge namespace, all at
once; a connection is ``accept``, a refusal (RST or ICMP error; the listener
is there, so it came from a rule) ``reject``, silence until the timeout
``drop``. With ``trace``, ``nft monitor trace`` runs in the origin while the
probes fly. ``xt-load``: load legacy x_tables blobs into this namespace.

Input is one JSON document on stdin; output one JSON document on stdout. The
helper switches only its own network namespace (``setns``), and only into the
scratch namespaces it is given.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from cfallow.netfilter import xtables

CLONE_NEWNET = 0x40000000
REFUSED = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM}


def _setns(path: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _listeners(ports: list[int], families: list[int]) -> list[socket.socket]:
    out = []
    for version in families:
        for port in ports:
            af = socket.AF_INET6 if version == 6 else socket.AF_INET
            s = socket.socket(af, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if version == 6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # the wildcard of the scratch origin namespace, which only the probes reach
            s.bind(("::" if version == 6 else "0.0.0.0", port))  # noqa: S104
            s.listen(256)
            out.append(s)
    return out


def _connect_all(probes: list[dict[str, Any]], timeout: float) -> list[str]:
    socks: dict[int, tuple[int, socket.socket]] = {}
    verdicts = ["drop"] * len(probes)
    poller = select.poll()
    for i, p in enumerate(probes):
        af = socket.AF_INET6 if p["version"] == 6 else socket.AF_INET
        s = socket.socket(af, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((p["source"], 0))
        rc = s.connect_ex((p["target"], p["port"]))
        if rc not in (0, errno.EINPROGRESS):
            verdicts[i] = "reject" if rc in REFUSED else f"error: {os.strerror(rc)}"
            s.close()
            continue
        socks[s.fileno()] = (i, s)
        poller.register(s, select.POLLOUT | select.POLLERR | select.POLLHUP)
    deadline = time.monotonic() + timeout
    while socks and time.monotonic() < deadline:
        for fd, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            i, s = socks.pop(fd)
            poller.unregister(fd)
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            verdicts[i] = "accept" if err == 0 else "reject" if err in REFUSED else os.strerror(err)
            s.close()
    for _, s in socks.values():
        s.close()
    return verdicts


def _monitor() -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        # line-buffered: a pipe would hold the last events in stdio's buffer at SIGTERM
        [*(["stdbuf", "-oL"] if shutil.which("stdbuf") else []), "nft", "monitor", "trace"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=_pdeathsig,  # noqa: PLW1509 - this helper has no threads
    )
    _wait_subscribed(proc.pid)
    return proc


def _wait_subscribed(pid: int, cap: float = 2.0) -> None:
    """Until nft has opened its netlink socket (it subscribes right after), at most ``cap`` s."""
    deadline = time.monotonic() + cap
    while time.monotonic() < deadline:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in fds):
                break
        except OSError:
            pass
        time.sleep(0.005)
    time.sleep(0.02)


def _drain(monitor: subprocess.Popen[str], quiet: float = 0.05, cap: float = 3.0) -> list[str]:
    """Every trace line, read until the monitor has been quiet for ``quiet`` seconds."""
    out = monitor.stdout
    assert out is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(out.readline, "")))
    reader.daemon = True
    reader.start()
    deadline, seen = time.monotonic() + cap, -1
    while time.monotonic() < deadline and seen != len(lines):
        seen = len(lines)
        time.sleep(quiet)
    monitor.send_signal(signal.SIGTERM)
    monitor.wait(timeout=5)
    reader.join(timeout=1)
    return list(lines)


def _pdeathsig() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive this helper


def probe(doc: dict[str, Any]) -> dict[str, Any]:
    """Listen in the origin, connect from the edge; ``{"verdicts": [...], "trace": [...]}``."""
    _setns(doc["origin"])
    families = sorted({p["version"] for p in doc["probes"]})
    ports = {p["port"] for p in doc["probes"]} | set(doc.get("listen", ()))
    listeners = _listeners(sorted(ports), families)
    monitor = _monitor() if doc.get("trace") else None
    try:
        _setns(doc["edge"])
        verdicts = _connect_all(doc["probes"], float(doc["timeout"]))
        trace: list[str] = []
        if monitor is not None:
            trace = _drain(monitor)
            monitor = None
    finally:
        if monitor is not None:
            monitor.kill()
            monitor.wait()
        for s in listeners:
            s.close()
    return {"verdicts": verdicts, "trace": trace}


def xt_load(doc: dict[str, Any]) -> dict[str, Any]:
    """Load every blob of ``doc["tables"]`` into this namespace."""
    for item in doc["tables"]:
        xtables.load_table(xtables.Blob.from_json(item))
    return {"loaded": len(doc["tables"])}


def main(argv: list[str]) -> int:
    """``probe`` or ``xt-load``, JSON on stdin -> JSON on stdout; an OSError is one line, exit 1."""
    doc = json.load(sys.stdin)
    try:
        out = {"probe": probe, "xt-load": xt_load}[argv[0]](doc)
    except OSError as exc:
        print(f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
