"""The probes themselves, sent from this process: no helper interpreter.

``setns(CLONE_NEWNET)`` moves only the calling thread, and a socket stays in
the namespace it was created in: a short-lived thread enters the scratch
origin and opens the listeners (on every probed port and every port the
host's NAT sends connections to), another enters the scratch edge and opens
one non-blocking client socket per probe, bound to its source address. The
main thread never changes namespace; it connects them all at once and waits.

A connection is ``accept``; a refusal (RST or ICMP error: the listener is
there, so it came from a rule) ``reject``; a SYN the kernel's nftables trace
(:mod:`.nftrace`, read in the origin) shows dropped, by a rule's or a policy's
``drop``, is ``drop`` at once. A probe with neither by the time-out (a drop
nftables does not trace: legacy x_tables; or a trace event that never came)
is ``drop`` then, as before. Once every probe is decided a *fence* SYN goes
out: when its trace event is read, every event of the probes before it has
been read too.
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

from cfallow.verify import nftrace, trace
from cfallow.verify.lab import in_namespace

#: The least time the fence's trace event is waited for (it comes at once unless dropped).
FENCE_WAIT = 0.5
REFUSED = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM}


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
    """Listeners in the scratch origin, and a netlink socket there that reads the trace."""

    edge: str
    timeout: float
    listeners: list[socket.socket]
    tracer: socket.socket
    rules: dict[tuple[str, str, str, int], str]

    def send(self, targets: list[Target], *, traced: bool = True) -> Sent:
        """Connect every target at once; the verdicts (and, ``traced``, the trace).

        Untraced, nothing else is sent (no fence: a legacy rule's counters count the
        probe alone).
        """
        nftrace.read(self.tracer)  # what earlier batches left: not this batch's
        ports = {t.port for t in targets} | {s.getsockname()[1] for s in self.listeners}
        tracer = self.tracer if traced and targets else None
        fence = [targets[0]] if tracer is not None else []
        edge = in_namespace(self.edge, lambda: _clients(targets + fence))
        stream = trace.Stream(next(p for p in range(9, 65536) if p not in ports))
        try:
            verdicts = _wait(edge[: len(targets)], targets, stream, tracer, self.timeout)
            if tracer is not None:
                edge[-1].connect_ex((fence[0].target, stream.fence))
                _fence(stream, tracer, max(self.timeout, FENCE_WAIT))
        finally:
            for s in edge:
                s.close()
        if tracer is None:
            return Sent(verdicts)
        return Sent(verdicts, stream.lines(self.rules), stream.lost or stream.fences < 1)


@contextlib.contextmanager
def session(
    origin: str,
    edge: str,
    ports: list[int],
    families: list[int],
    rules: dict[tuple[str, str, str, int], str],
    *,
    timeout: float,
) -> Iterator[Session]:
    """Listen on ``ports`` in the origin and join its trace group (``rules``: the text of
    each rule the trace may name, :func:`.nftrace.rule_texts`); all closed at the end."""
    listeners = in_namespace(origin, lambda: _listeners(ports, families))
    try:
        tracer = in_namespace(origin, nftrace.open_socket)
        try:
            yield Session(edge, timeout, listeners, tracer, rules)
        finally:
            tracer.close()
    finally:
        for sock in listeners:
            sock.close()


def _wait(
    socks: list[socket.socket],
    targets: list[Target],
    stream: trace.Stream,
    tracer: socket.socket | None,
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
        events = tracer.fileno() if tracer is not None else -1
        if tracer is not None:
            poller.register(tracer, select.EPOLLIN)
        keys = {(t.source, t.port): s.fileno() for s, t in zip(socks, targets)}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for fd, _ in poller.poll(max(0.001, deadline - time.monotonic())):
                if tracer is not None and fd == events:
                    # dropped by a rule or a policy: no answer will come
                    for done in (keys.get(k, -1) for k in _read(tracer, stream)):
                        if done in pending:
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


def _read(tracer: socket.socket, stream: trace.Stream) -> list[tuple[str, int]]:
    """Feed the queued trace events to ``stream``: the (source, port) newly dropped."""
    events, lost = nftrace.read(tracer)
    stream.lost = stream.lost or lost
    return stream.add(events)


def _fence(stream: trace.Stream, tracer: socket.socket, timeout: float) -> None:
    """Read the trace until the fence SYN's event (at most ``timeout`` s: the fence was
    dropped before the trace chain, say)."""
    deadline = time.monotonic() + timeout
    with select.epoll() as poller:
        poller.register(tracer, select.EPOLLIN)
        while stream.fences < 1 and time.monotonic() < deadline:
            if poller.poll(max(0.001, deadline - time.monotonic())):
                _read(tracer, stream)
