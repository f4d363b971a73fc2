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
nftables does not trace; or a trace event that never came) is ``drop`` then.
Once every probe is decided a *fence* SYN goes out: when its trace event is
read, every event of the probes before it has been read too.

On a host with legacy x_tables (``late``: the trace table's late input chain,
:data:`.trace.LEGACY_RULESET`) the probes and two *early fences* are sent by
one thread kept on one CPU. Without RPS (:func:`.lab.in_order`) a veth queues
what it carries on the backlog of the CPU that sent it, and that CPU takes its
backlog in order, each packet in full before the next (prerouting to the
socket or to its drop: nothing on the way queues a SYN); the answers the
origin sends back are queued the same way. So once the first early fence is
traced at prerouting every probe's SYN has been handled, and once the second
one (sent then) is, so has every answer (SYN-ACK, RST, ICMP error) they drew.
A probe still unanswered then, whose SYN was traced at prerouting and never
reached the late chain, was dropped before it (by x_tables, or routing) and
no answer is coming: ``drop`` at once instead of at the time-out. One that
reached the late chain and is still unanswered (its answer dropped, say)
waits out the time-out as before; so does every probe if events were lost or
the thread cannot be kept on one CPU.
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


def _clients(targets: list[Target], fences: int, legacy: bool) -> list[socket.socket]:
    """A socket per target, then ``fences`` more from the first target's source (``legacy``:
    each on its own :data:`.trace.FENCE_SPORTS` port, where the trace table drops them)."""
    out = []
    sports = [0] * len(targets) + list(trace.FENCE_SPORTS[:fences] if legacy else [0] * fences)
    for t, sport in zip(targets + [targets[0]] * fences, sports):
        s = socket.socket(socket.AF_INET6 if t.version == 6 else socket.AF_INET)
        out.append(s)
        s.setblocking(False)
        s.bind((t.source, sport))
    return out


@dataclass
class Session:
    """Listeners in the scratch origin, and a netlink socket there that reads the trace."""

    edge: str
    timeout: float
    listeners: list[socket.socket]
    tracer: socket.socket
    rules: dict[tuple[str, str, str, int], str]
    legacy: bool = False  # the trace table is :data:`.trace.LEGACY_RULESET`
    late: bool = False  # and no RPS: the early fences decide x_tables' drops

    def send(self, targets: list[Target]) -> Sent:
        """Connect every target at once; the verdicts and the trace."""
        nftrace.read(self.tracer)  # what earlier batches left: not this batch's
        if not targets:
            return Sent([])
        ports = {t.port for t in targets} | {s.getsockname()[1] for s in self.listeners}
        free = (p for p in range(9, 65536) if p not in ports)
        stream = trace.Stream(next(free))
        early = [next(free), next(free)] if self.late else []
        edge = in_namespace(self.edge, lambda: _clients(targets, 1 + len(early), self.legacy))
        fence, socks = edge[len(targets)], edge[: len(targets)]
        try:
            with _one_cpu(bool(early)) as pinned:
                fences = _Early(edge[len(targets) + 1 :], targets[0].target, early, stream)
                verdicts = _wait(
                    socks,
                    targets,
                    stream,
                    self.tracer,
                    self.timeout,
                    early=fences if pinned else None,
                )
            fence.connect_ex((targets[0].target, stream.fence))
            _fence(stream, self.tracer, max(self.timeout, FENCE_WAIT))
        finally:
            for s in edge:
                s.close()
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
    legacy: bool = False,
    late: bool = False,
) -> Iterator[Session]:
    """Listen on ``ports`` in the origin and join its trace group (``rules``: the text of
    each rule the trace may name, :func:`.nftrace.rule_texts`; ``legacy``: the trace table
    is :data:`.trace.LEGACY_RULESET`; ``late``: decide x_tables' drops by the early fences,
    see above); all closed at the end."""
    listeners = in_namespace(origin, lambda: _listeners(ports, families))
    try:
        tracer = in_namespace(origin, nftrace.open_socket)
        try:
            yield Session(edge, timeout, listeners, tracer, rules, legacy, late and legacy)
        finally:
            tracer.close()
    finally:
        for sock in listeners:
            sock.close()


@contextlib.contextmanager
def _one_cpu(wanted: bool) -> Iterator[bool]:
    """Keep the calling thread on one CPU for the duration (``wanted``); whether it is."""
    if not wanted:
        yield False
        return
    try:
        old = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(old)})  # 0: the calling thread alone
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        os.sched_setaffinity(0, old)


class _Early:
    """The two early fences of a batch on a legacy host (see the module's docstring)."""

    def __init__(
        self, socks: list[socket.socket], target: str, ports: list[int], stream: trace.Stream
    ) -> None:
        self.socks, self.target, self.ports, self.stream = socks, target, ports, stream
        self.sent = 0

    def next(self) -> bool:
        """Send the next fence when it is due; ``True`` once the last one is traced."""
        if self.sent and self.stream.seen(self.ports[self.sent - 1]) < 1:
            return False
        if self.sent == len(self.ports):
            return True
        self.socks[self.sent].connect_ex((self.target, self.ports[self.sent]))
        self.sent += 1
        return False


def _wait(
    socks: list[socket.socket],
    targets: list[Target],
    stream: trace.Stream,
    tracer: socket.socket | None,
    timeout: float,
    *,
    early: _Early | None = None,
) -> list[str]:
    """Connect all; each verdict from its socket, or a drop from the trace, or the time-out
    (or, ``early``, a drop before the late chain: see the module's docstring)."""
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

        def handle(ready: list[tuple[int, int]]) -> None:
            for fd, _ in ready:
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

        if early is not None:
            early.next()  # behind every probe's SYN
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            handle(poller.poll(max(0.001, deadline - time.monotonic())))
            if early is not None and early.next():
                handle(poller.poll(0))  # the answers the probes drew, all in by now
                if not stream.lost:
                    for k in stream.entered - stream.passed:
                        fd = keys.get(k, -1)
                        if fd in pending:  # no answer, none coming: "drop"
                            del pending[fd]
                            poller.unregister(fd)
                early = None
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
