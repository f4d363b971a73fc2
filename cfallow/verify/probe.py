"""The probes themselves, sent from this process: no helper interpreter.

``setns(CLONE_NEWNET)`` moves only the calling thread, and a socket stays in
the namespace it was created in: a short-lived thread enters the scratch
origin and opens the listeners (on every probed port and every port the
host's NAT sends connections to), another enters the scratch edge and opens
one non-blocking client socket per probe, bound to its source address. The
main thread never changes namespace; it connects them all at once and waits.

A connection is ``accept``; a refusal (RST or ICMP error: the listener is
there, so it came from a rule) ``reject``; a SYN that ``nft monitor trace``
shows dropped (a rule's or a policy's ``drop``) is ``drop`` at once. A probe
with neither by the time-out (a drop nftables does not trace: legacy
x_tables; or a trace event that never came) is ``drop`` then, as before.
Once every probe is decided a *fence* SYN goes out: when its trace line is
read, every event of the probes before it has been read too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from cfallow.runner import Child, Runner
from cfallow.verify import trace
from cfallow.verify.lab import in_namespace

REFUSED = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM}
NETLINK_NETFILTER = 12
NFNLGRP_NFTRACE = 9
#: How long ``nft monitor trace`` may take to subscribe before the probes go out untraced.
SUBSCRIBE_CAP = 5.0
#: How long the monitor may take to print a batch's events (it prints all the while).
FENCE_CAP = 30.0


@dataclass(frozen=True)
class Target:
    """One probe: from ``source`` in the edge to ``target``:``port`` in the origin."""

    version: int
    port: int
    source: str
    target: str


@dataclass
class Sent:
    """What one batch of probes came to: a verdict each, the trace lines, lost events."""

    verdicts: list[str]
    lines: list[str] = field(default_factory=list)
    lost: bool = False


def _listeners(ports: list[int], families: list[int]) -> list[socket.socket]:
    out = []
    for version in families:
        for port in ports:
            af = socket.AF_INET6 if version == 6 else socket.AF_INET
            s = socket.socket(af, socket.SOCK_STREAM)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if version == 6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # the wildcard of the scratch origin namespace, which only the probes reach
            s.bind(("::" if version == 6 else "0.0.0.0", port))  # noqa: S104
            s.listen(256)
    return out


def _clients(targets: list[Target]) -> list[socket.socket]:
    out = []
    for t in targets:
        s = socket.socket(socket.AF_INET6 if t.version == 6 else socket.AF_INET)
        out.append(s)
        s.setblocking(False)
        s.bind((t.source, 0))
    return out


@dataclass
class Session:
    """Listeners in the scratch origin and, if traced, ``nft monitor trace`` running there."""

    origin: str
    edge: str
    timeout: float
    listeners: list[socket.socket]
    monitor: Child | None = None
    drops: int = 0  # the monitor socket's drop count after the last batch

    def send(self, targets: list[Target], *, traced: bool = True) -> Sent:
        """Connect every target at once; the verdicts (and, ``traced``, the trace).

        Untraced, nothing else is sent (no fence: a legacy rule's counters count the
        probe alone).
        """
        ports = {t.port for t in targets} | {s.getsockname()[1] for s in self.listeners}
        monitor = self.monitor if traced and targets else None
        fence = [targets[0]] if monitor is not None else []
        edge = in_namespace(self.edge, lambda: _clients(targets + fence))
        stream = trace.Stream(next(p for p in range(9, 65536) if p not in ports))
        try:
            verdicts = _wait(edge[: len(targets)], targets, stream, monitor, self.timeout)
            if monitor is not None:
                edge[-1].connect_ex((fence[0].target, stream.fence))
                _fence(stream, monitor, self.timeout)
        finally:
            for s in edge:
                s.close()
        if monitor is None:
            return Sent(verdicts)
        drops = _trace_socket(monitor.pid, os.stat(self.origin).st_ino)
        lost = stream.lost or drops is None or drops > self.drops or stream.fences < 1
        self.drops = drops or 0
        return Sent(verdicts, stream.lines, lost)


@contextlib.contextmanager
def session(
    inside: Runner,
    origin: str,
    edge: str,
    ports: list[int],
    families: list[int],
    *,
    timeout: float,
) -> Iterator[Session]:
    """Listen on ``ports`` in the origin, run ``nft monitor trace`` there (through
    ``inside``, a runner into the origin); all closed at the end."""
    listeners = in_namespace(origin, lambda: _listeners(ports, families))
    s = Session(origin, edge, timeout, listeners)
    try:
        s.monitor = inside.start(["stdbuf", "-oL", "nft", "monitor", "trace"])
        s.drops = _subscribed(s.monitor, origin)
        yield s
    finally:
        if s.monitor is not None:
            s.monitor.stop()
        for sock in listeners:
            sock.close()


def _subscribed(monitor: Child, origin: str) -> int:
    """Wait until the monitor's netlink socket in the origin has joined the trace group.

    ``/proc/PID/net/netlink`` is read once PID is in the origin namespace; from the moment
    the group bit shows, the kernel queues every trace event for it. Its drop count.
    """
    want = os.stat(origin).st_ino
    deadline = time.monotonic() + SUBSCRIBE_CAP
    while time.monotonic() < deadline and monitor.running():
        drops = _trace_socket(monitor.pid, want)
        if drops is not None:
            return drops
        time.sleep(0.001)
    return 0


def _trace_socket(pid: int, netns: int) -> int | None:
    """The drop count of ``pid``'s netlink socket in the trace group, if ``pid`` is in
    ``netns`` and has one."""
    try:
        if os.stat(f"/proc/{pid}/ns/net").st_ino != netns:
            return None
        with open(f"/proc/{pid}/net/netlink") as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except OSError:
        return None
    bit = 1 << (NFNLGRP_NFTRACE - 1)
    for row in rows:
        if int(row[1]) == NETLINK_NETFILTER and int(row[3], 16) & bit:
            return int(row[8])
    return None


def _wait(
    socks: list[socket.socket],
    targets: list[Target],
    stream: trace.Stream,
    monitor: Child | None,
    timeout: float,
) -> list[str]:
    """Connect all; each verdict from its socket, or a drop from the trace, or the time-out."""
    verdicts = ["drop"] * len(targets)
    pending: dict[int, int] = {}
    with select.epoll() as poller:
        for i, (s, t) in enumerate(zip(socks, targets)):
            rc = s.connect_ex((t.target, t.port))
            if rc not in (0, errno.EINPROGRESS):
                verdicts[i] = "reject" if rc in REFUSED else f"error: {os.strerror(rc)}"
                continue
            pending[s.fileno()] = i
            poller.register(s, select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP)
        out = monitor.stdout.fileno() if monitor is not None else -1
        if out >= 0:
            poller.register(out, select.EPOLLIN)
        keys = {(t.source, t.port): s.fileno() for s, t in zip(socks, targets)}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for fd, _ in poller.poll(max(0.001, deadline - time.monotonic())):
                if fd == out:
                    # dropped by a rule or a policy: no answer will come
                    dropped = [keys.get(k, -1) for k in _read(out, stream, poller)]
                    for done in (d for d in dropped if d in pending):
                        del pending[done]
                        poller.unregister(done)
                elif fd in pending:
                    i = pending.pop(fd)
                    poller.unregister(fd)
                    err = socks[i].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    verdicts[i] = (
                        "accept" if err == 0 else "reject" if err in REFUSED else os.strerror(err)
                    )
    return verdicts


def _read(fd: int, stream: trace.Stream, poller: select.epoll) -> list[tuple[str, int]]:
    """Feed what the monitor wrote to ``stream``: the (source, port) it newly shows
    dropped. At the monitor's end ``fd`` is unregistered."""
    data = os.read(fd, 1 << 16)
    if not data:
        poller.unregister(fd)
    return stream.feed(data)


def _fence(stream: trace.Stream, monitor: Child, quiet: float) -> None:
    """Read the trace until the fence SYN's line. The monitor prints a large ruleset's
    events for a while: give up only once it has printed nothing for ``quiet`` s (the
    fence itself was dropped before the trace chain, say), or after :data:`FENCE_CAP`."""
    fd = monitor.stdout.fileno()
    cap = time.monotonic() + FENCE_CAP
    with select.epoll() as poller:
        poller.register(fd, select.EPOLLIN)
        while stream.fences < 1 and time.monotonic() < cap:
            if not poller.poll(quiet):
                return
            data = os.read(fd, 1 << 16)
            if not data:
                return
            stream.feed(data)
