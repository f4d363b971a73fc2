#!/usr/bin/env python3
"""Small processes the proof lab runs inside its namespaces (stdlib only).

    procs.py serve DIR          HTTP source on the namespace's 127.0.0.1 (prints "ready PORT")
    procs.py listen PORT        TCP listener on all addresses, accepts and closes
    procs.py connect SRC DST PORT [--rate N] [--timeout S] [--max-seconds S]
                                      bounded connect loop; on SIGTERM prints {"attempts", "failed"}

Everything is bounded: the connect loop stops by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import http.server
import json
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any


def serve(directory: Path) -> None:
    """Serve files under ``directory``; paths map to files, JSON for the API path."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = directory / self.path.split("?")[0].lstrip("/")
            try:
                body = path.read_bytes()
            except OSError:
                self.send_error(404)
                return
            self.send_response(200)
            ctype = "application/json" if body.startswith(b"{") else "text/plain"
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()


def listen(port: int) -> None:
    """Accept and close connections on ``port`` (IPv4 and IPv6)."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.listen(4096)
    print("ready", flush=True)
    while True:
        conn, _ = sock.accept()
        conn.close()


class Loop:
    """Non-blocking connects from ``src`` to ``dst:port``, a few in flight, rate-capped."""

    def __init__(self, src: str, dst: str, port: int, timeout: float, inflight: int) -> None:
        self.family = socket.AF_INET6 if ":" in dst else socket.AF_INET
        self.src, self.dst, self.port = src, dst, port
        self.timeout, self.inflight = timeout, inflight
        self.sel = selectors.DefaultSelector()
        self.started: dict[socket.socket, float] = {}
        self.attempts = self.failed = 0
        self.stop = threading.Event()

    def _open(self) -> None:
        s = socket.socket(self.family, socket.SOCK_STREAM)
        # RST on close: no TIME_WAIT, so a long loop never runs out of ports.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.bind((self.src, 0))
        s.setblocking(False)
        s.connect_ex((self.dst, self.port))
        self.sel.register(s, selectors.EVENT_WRITE)
        self.started[s] = time.monotonic()
        self.attempts += 1

    def _close(self, s: socket.socket, ok: bool) -> None:
        self.sel.unregister(s)
        del self.started[s]
        s.close()
        if not ok:
            self.failed += 1

    def run(self, rate: float, max_seconds: float) -> None:
        deadline = time.monotonic() + max_seconds
        next_start = time.monotonic()
        while not self.stop.is_set() and time.monotonic() < deadline:
            now = time.monotonic()
            while len(self.started) < self.inflight and now >= next_start:
                self._open()
                next_start += 1 / rate
            for key, _ in self.sel.select(0.01):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                self._close(s, s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
            now = time.monotonic()
            for s, t0 in list(self.started.items()):
                if now - t0 > self.timeout:
                    self._close(s, False)
            next_start = max(next_start, now - 1)  # no burst after a stall
        for s in list(self.started):
            self._close(s, False)


def connect(opts: argparse.Namespace) -> None:
    loop = Loop(opts.src, opts.dst, opts.port, opts.timeout, opts.inflight)
    signal.signal(signal.SIGTERM, lambda *_: loop.stop.set())
    print("ready", flush=True)
    loop.run(opts.rate, opts.max_seconds)
    print(json.dumps({"attempts": loop.attempts, "failed": loop.failed}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description="proof lab helper processes")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("serve").add_argument("dir", type=Path)
    sub.add_parser("listen").add_argument("port", type=int)
    c = sub.add_parser("connect")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("port", type=int)
    c.add_argument("--rate", type=float, default=2000.0, help="connects per second at most")
    c.add_argument("--timeout", type=float, default=0.3, help="a connect slower than this failed")
    c.add_argument("--inflight", type=int, default=256)
    c.add_argument("--max-seconds", type=float, default=600.0)
    opts = ap.parse_args()
    if opts.cmd == "serve":
        serve(opts.dir)
    elif opts.cmd == "listen":
        listen(opts.port)
    else:
        connect(opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
