"""Benchmark (not a test): ``cfallow sync`` with the aws backend against a local moto server.

Run from the repo root: ``.venv/bin/python bench/bench_aws.py [RUNS] [GROUPS]``.
Prints, for GROUPS security groups (default 2) and ports 80 + 443, the
whole-process wall time of the first sync and the median of RUNS no-change
syncs (bundled source), with the API requests each made (``100`` groups: the
fleet case of docs/aws.md) and the peak memory of the cfallow process (issue
25: under 80 MB).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from benchkit import run
from support.aws.harness import REGION, MotoServer, World

#: Issue 25: the peak memory of an aws run stays under this (MB).
PEAK_MB = 80.0


def reads(world: World, runs: int) -> None:
    """The read alone, in this process: the groups one after another, then 8 at a time."""
    for workers in (1, 8):
        took = []
        for _ in range(runs):
            backend: Any = world.backend()
            backend.read_workers = workers
            start = time.perf_counter()
            backend.read()
            took.append(time.perf_counter() - start)
        print(f"read with {workers} worker(s), median of {runs}: {statistics.median(took):.3f} s")


def main(runs: int, groups: int) -> None:
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",  # noqa: S106 - moto's dummy credentials
        AWS_CONFIG_FILE="/nonexistent/aws-config",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws-credentials",
        AWS_EC2_METADATA_DISABLED="true",
    )
    with tempfile.TemporaryDirectory() as tmp:
        server = MotoServer(Path(tmp))
        try:
            world = World(server, groups=groups)
            ids = ", ".join(f'"{g}"' for g in world.groups)
            config = Path(tmp) / "config.toml"
            config.write_text(
                f'[backends.aws]\nregion = "{REGION}"\nsecurity_group_ids = [{ids}]\n'
                f'ports = [80, 443]\nendpoint_url = "{server.url}"\n'
            )
            argv = [sys.executable, "-m", "cfallow", "--config", str(config)]
            argv += ["--state-dir", str(Path(tmp) / "state"), "-q", "sync", "--source", "bundled"]

            def sync() -> tuple[float, int, int, float]:
                server.reset_recording()
                done = run(argv)
                calls = [c for c in server.calls() if c.by_cfallow]
                writes = len([c for c in calls if c.mutating])
                return done.seconds, len(calls), writes, done.peak_mb

            first = sync()
            print(f"{groups} groups")
            print(
                f"first sync: {first[0]:.3f} s, {first[1]} requests ({first[2]} writes),"
                f" peak {first[3]:.1f} MB"
            )
            rest = [sync() for _ in range(runs)]
            med = statistics.median(t for t, _, _, _ in rest)
            peak = max(first[3], *(p for _, _, _, p in rest))
            print(
                f"no-change sync, median of {runs}: {med:.3f} s,"
                f" {rest[0][1]} requests ({max(w for _, _, w, _ in rest)} writes),"
                f" peak {max(p for _, _, _, p in rest):.1f} MB"
            )
            verdict = "met" if peak < PEAK_MB else "NOT met"
            print(f"peak memory of a sync (whole process): {peak:.1f} MB, < {PEAK_MB:g}: {verdict}")
            reads(world, runs)
        finally:
            server.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7, int(sys.argv[2]) if len(sys.argv) > 2 else 2)
