#!/usr/bin/env python3
"""The legacy writer alone, before and after: python-iptables commit vs iptables-legacy-restore.

Run as root (one network namespace of its own; the host's firewall is never
touched)::

    sudo .venv/bin/python bench/bench_legacy_writer.py [--rounds 30]

In a forked child inside a fresh namespace (python-iptables works on its own
process's namespace), each round syncs the 2021-03 list then the current one
(lockdown, both families, 104.16.0.0/12 swapped each time) with the writer
under test, timing ``apply`` (lock, read, diff, write, both families). The two
writers alternate round by round, so load from elsewhere falls on both. The
python-iptables import is paid once before timing (as in a real run the
import comes first for the old writer only: about 0.1 s, not counted here).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cfallow.backends.iptables.backend import IptablesBackend  # noqa: E402
from cfallow.backends.iptables.legacy import LegacyIO, RestoreWriter  # noqa: E402
from support.cfdata import CURRENT, OLD  # noqa: E402
from support.iptables.iptc import IptcWriter, load_iptc  # noqa: E402
from support.iptables.netns import enter_netns  # noqa: E402

from cfallow.backend import Context, build  # noqa: E402
from cfallow.runner import Runner  # noqa: E402


def child(rounds: int, lock: str) -> dict[str, list[float]]:
    load_iptc()
    out: dict[str, list[float]] = {"python-iptables": [], "restore": []}
    for i in range(rounds * 2):
        name = "python-iptables" if i % 2 else "restore"
        for nets in (OLD, CURRENT):
            backend = build(
                "iptables", {"mode": "lockdown", "variant": "legacy"}, Context(Runner())
            )
            assert isinstance(backend, IptablesBackend)
            io = backend._open()
            assert isinstance(io, LegacyIO)
            io.lock_path = lock
            if name == "python-iptables":
                io.writer = IptcWriter()
            else:
                assert isinstance(io.writer, RestoreWriter)
            plan = backend.plan(nets)
            started = time.perf_counter()
            backend.apply(plan)
            out[name].append(time.perf_counter() - started)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    ns = f"cfa-benchw-{uuid.uuid4().hex[:8]}"
    lock = os.path.join(tempfile.mkdtemp(prefix="cfallow-bench-"), "xtables.lock")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            enter_netns(ns)
            res = child(args.rounds, lock)
            with os.fdopen(write, "w") as f:
                for name, times in res.items():
                    med, top = statistics.median(times), max(times)
                    f.write(
                        f"{name:16} apply median {med * 1000:6.1f} ms  max {top * 1000:6.1f} ms"
                        f"  ({len(times)} changing applies)\n"
                    )
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            print(f.read(), end="")
        os.waitpid(pid, 0)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(os.path.dirname(lock), ignore_errors=True)


if __name__ == "__main__":
    main()
