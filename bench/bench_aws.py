"""Benchmark (not a test): ``cfallow sync`` with the aws backend against a local moto server.

Run from the repo root: ``.venv/bin/python bench/bench_aws.py [RUNS] [GROUPS]``.
Prints, for GROUPS security groups (default 2) and ports 80 + 443, the
whole-process wall time of the first sync and the median of RUNS no-change
syncs (bundled source), with the API requests each made (``100`` groups: the
fleet case of docs/aws.md).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.aws.harness import REGION, MotoServer, World


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

            def sync() -> tuple[float, int, int]:
                server.reset_recording()
                start = time.perf_counter()
                subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
                took = time.perf_counter() - start
                calls = [c for c in server.calls() if c.by_cfallow]
                return took, len(calls), len([c for c in calls if c.mutating])

            first = sync()
            print(f"{groups} groups")
            print(f"first sync: {first[0]:.3f} s, {first[1]} requests ({first[2]} writes)")
            rest = [sync() for _ in range(runs)]
            med = statistics.median(t for t, _, _ in rest)
            print(
                f"no-change sync, median of {runs}: {med:.3f} s,"
                f" {rest[0][1]} requests ({max(w for _, _, w in rest)} writes)"
            )
            reads(world, runs)
        finally:
            server.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7, int(sys.argv[2]) if len(sys.argv) > 2 else 2)
