"""Benchmark (not a test): the fail2ban backend on a private fail2ban-server.

Run as root from the repo root: ``.venv/bin/python bench/bench_fail2ban.py [JAILS] [RUNS]``.
Whole ``cfallow`` processes (``--source bundled``), median of RUNS:
``cfallow ranges`` (what any run costs on this machine right now: Python
start and imports, no backend), the first sync (every jail gets the 22
ranges; the admin's configuration not read before), a no-change sync, a
no-change ``status``, and ``remove``; wall time and CPU time (user + system
of the run and its ``fail2ban-client`` children: what the run costs when
other work shares the machine). JAILS polling jails (default 50:
alpha, beta, plus more copies of alpha).
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.fail2ban.harness import running_server

EXTRA_JAIL = "\n[extra{i}]\nenabled = true\nfilter = cfa-test\nlogpath = {logs}/alpha.log\n"


def cfallow(*args: str) -> tuple[float, float]:
    """Wall time, and CPU time (user + system, with its fail2ban-client children)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cfallow", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = proc.communicate()
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"cfallow {' '.join(args)} -> {proc.returncode}: {err}")
    return elapsed, _cpu_of_last_child()


_seen = [0.0]


def _cpu_of_last_child() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    spent, _seen[0] = total - _seen[0], total
    return spent


def main() -> None:
    jails = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    with tempfile.TemporaryDirectory(prefix="f2b-bench-") as tmp:
        root = Path(tmp)
        with running_server(root / "f2b", "f2bbench") as srv:
            extra = "".join(EXTRA_JAIL.format(i=i, logs=srv.logs) for i in range(jails - 2))
            srv.write_jail_local(extra=extra)
            srv.reload()
            config = root / "config.toml"
            config.write_text(
                f'[backends.fail2ban]\nsocket = "{srv.socket}"\nconfig_dir = "{srv.conf}"\n'
            )
            common = ("--config", str(config), "--state-dir", str(root / "state"), "-q")
            _cpu_of_last_child()  # the server's start-up is not a cfallow run
            first: list[tuple[float, float]] = []
            nochange: list[tuple[float, float]] = []
            status: list[tuple[float, float]] = []
            remove: list[tuple[float, float]] = []
            floor: list[tuple[float, float]] = []
            for _ in range(runs):
                # What any cfallow run costs here (Python start, imports): the floor.
                floor.append(cfallow(*common, "ranges", "--source", "bundled"))
                # Cold: the admin's configuration has not been read yet.
                (root / "state" / "fail2ban-admin.json").unlink(missing_ok=True)
                first.append(cfallow(*common, "sync", "--source", "bundled"))
                nochange.append(cfallow(*common, "sync", "--source", "bundled"))
                status.append(cfallow(*common, "status", "--source", "bundled"))
                remove.append(cfallow(*common, "remove"))
    print(f"fail2ban backend, {jails} jails, median of {runs} whole-process runs (wall / CPU):")
    for name, times in (
        ("floor: cfallow ranges (no backend)", floor),
        ("first sync (22 ranges per jail)", first),
        ("no-change sync", nochange),
        ("no-change status", status),
        ("remove", remove),
    ):
        wall = statistics.median(t for t, _ in times)
        cpu = statistics.median(c for _, c in times)
        print(f"  {name:34s} {wall:.3f} s / {cpu:.3f} s")


if __name__ == "__main__":
    main()
