"""What the netfilter benchmarks share: a namespace with a list source, and a timed run.

Not a benchmark itself. ``bench_nftables.py``, ``bench_iptables.py``,
``bench_reconcile.py`` and ``bench_scale.py`` import it (they run as scripts,
so this directory is on their ``sys.path``).

* :func:`scene`: a fresh network namespace (loopback up) with an HTTP source on
  its own 127.0.0.1 that publishes one era of the real Cloudflare lists
  (``tests/fixtures/cloudflare``); deleted on the way out, also on failure.
* :func:`run`: one whole process, from start to exit, with the peak resident
  memory of its process tree (the process and the children it starts:
  ``nft``, ``iptables-save``, ...): the largest sum of their resident sizes
  seen every 5 ms, and never less than the exact peak of the largest one
  (GNU ``time``, where installed); and its CPU time (the tree's, from the
  children's resource usage: one run at a time).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "cloudflare"
CFALLOW = str(Path(sys.executable).parent / "cfallow")
ERAS = {"old": "api-ips-2021-03.json", "current": "api-ips.json"}
#: How often the memory of a running process tree is looked at (seconds).
SAMPLE = 0.005
#: GNU time (Debian's ``time``): the exact peak of the largest process of a run.
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else ""

_SERVER = """
import http.server, pathlib, sys
root = pathlib.Path(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (root / "ips.json").read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def sh(argv: list[str], *, input: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """Run a set-up command; its stdout (a failure raises with its stderr)."""
    proc = subprocess.run(argv, input=input, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class Run:
    """One timed process."""

    seconds: float
    #: MB: the most the process tree (the process and its children) held at once: the
    #: largest sum of their resident sizes seen, never less than ``largest_mb``.
    peak_mb: float
    #: MB: the peak of the largest single process of the tree.
    largest_mb: float
    #: s: the CPU time (user + system) of the whole tree, which other load moves far
    #: less than the time it took
    cpu: float = 0.0


def _kids(pid: int) -> list[int]:
    """Children of every thread of ``pid`` (a thread pool starts ``*-save`` too)."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:  # it has just ended
        pass
    return out


def _memory_kb(pid: int) -> tuple[int, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in kB (0, 0 once it has ended)."""
    got = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    got[line[:5]] = int(line.split()[1])
    except OSError:
        pass
    return got.get("VmRSS", 0), got.get("VmHWM", 0)


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _watch(root: int, peak: list[int], stop: threading.Event, *, count_root: bool) -> None:
    """Until ``stop``, keep the largest sum of the resident sizes of ``root``'s tree seen
    (``peak[0]``) and the largest high-water mark of one of its processes (``peak[1]``).

    A child not yet past its ``exec`` (the same command line as its parent) still
    shows its parent's memory: it is not counted; nor is ``root`` unless ``count_root``.
    """
    mine = _cmdline(os.getpid())
    while not stop.is_set():
        total, todo = 0, [(root, mine)]
        while todo:
            pid, parent = todo.pop()
            line = _cmdline(pid)
            if line and line != parent and (count_root or pid != root):
                rss, hwm = _memory_kb(pid)
                total += rss
                peak[1] = max(peak[1], hwm)
            todo += [(kid, line) for kid in _kids(pid)]
        peak[0] = max(peak[0], total)
        stop.wait(SAMPLE)


def run(argv: list[str], env: Mapping[str, str] | None = None) -> Run:
    """Run ``argv`` to its end (stdout dropped): its time and its process tree's peak memory.

    ``ip netns exec`` and ``env`` replace themselves with the command, so the
    process started is the one measured. The tree is looked at every
    :data:`SAMPLE` seconds; the exact largest process comes from GNU ``time``
    (``%M``, the kernel's ``ru_maxrss`` of the command and its waited-for
    children) where it is installed. It is not asked of this script's own child:
    the kernel counts in it the image before ``exec``, a copy of this Python.
    A non-zero exit raises with its stderr.
    """
    peak = [0, 0]
    stop = threading.Event()
    with tempfile.NamedTemporaryFile("r", prefix="cfallow-bench-rss-") as rss:
        wrap = [GNU_TIME, "-f", "%M", "-o", rss.name] if GNU_TIME else []
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*wrap, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        watcher = threading.Thread(
            target=_watch, args=(proc.pid, peak, stop), kwargs={"count_root": not wrap}
        )
        watcher.start()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.wait()
        took = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (used.ru_utime + used.ru_stime)
        stop.set()
        watcher.join()
        proc.stderr.close()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[-3:])} exited {proc.returncode}: {err.strip()}")
        said = rss.read().split()
    largest = max(peak[1], int(said[-1]) if said and said[-1].isdigit() else 0)
    return Run(took, max(peak[0], largest) / 1024, largest / 1024, cpu)


@dataclass
class Scene:
    """A namespace with a list source on its 127.0.0.1 and a temp dir."""

    ns: str
    tmp: Path
    url: str
    #: the ``cfallow`` command that :meth:`cfallow` runs
    program: str = CFALLOW

    def nsx(self, *argv: str) -> list[str]:
        """``argv`` to run inside the namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def publish(self, era: str) -> None:
        """Make the source serve one era's list (the file replaced atomically)."""
        part = self.tmp / "ips.json.part"
        part.write_bytes((FIXTURES / ERAS[era]).read_bytes())
        os.replace(part, self.tmp / "ips.json")

    def source(self) -> str:
        """The ``[source]`` table of a config that fetches from this scene's source."""
        return (
            f'[source]\napi_url = "{self.url}/client/v4/ips"\n'
            f'text_urls = ["{self.url}/ips-v4", "{self.url}/ips-v6"]\n\n'
        )

    def cfallow(self, config: Path, *args: str) -> list[str]:
        """``cfallow --config CONFIG --state-dir TMP/state -q ARGS`` inside the namespace."""
        state = str(self.tmp / "state")
        base = [self.program, "--config", str(config), "--state-dir", state, "-q"]
        return self.nsx(*base, *args)


@contextmanager
def scene(tag: str = "bench", program: str = CFALLOW) -> Iterator[Scene]:
    """A fresh namespace serving the current list; removed (with its temp dir) on the way out.

    ``program``: the ``cfallow`` command its runs use (this interpreter's by default).
    """
    ns = f"cfa-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="cfallow-bench-"))
    server: subprocess.Popen[str] | None = None
    sh(["ip", "netns", "add", ns])
    try:
        sh(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])
        here = Scene(ns, tmp, "", program)
        here.publish("current")
        server = subprocess.Popen(
            here.nsx(sys.executable, "-c", _SERVER, str(tmp)), stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None
        here.url = f"http://127.0.0.1:{int(server.stdout.readline())}"
        yield here
    finally:
        if server is not None:
            server.kill()
            server.wait()
            if server.stdout is not None:
                server.stdout.close()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())
