"""SIGKILL a real ``cfallow sync`` at random, reproducible instants, then let the next run converge.

The seed is printed (``-s`` shows it) and put in every failure message; set
``CFALLOW_KILL_SEED`` to replay a run, ``CFALLOW_KILLS`` for the number of
kills per backend (default 6: the suite stays fast; the iptables proof runs 100).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

KILLS = int(os.environ.get("CFALLOW_KILLS", "6"))


def sync_argv(config: Path, state_dir: Path) -> list[str]:
    """The real CLI's quiet sync of the bundled list: the run the kill tests signal."""
    return [
        *(sys.executable, "-m", "cfallow", "--config", str(config)),
        *("--state-dir", str(state_dir), "-q", "sync", "--source", "bundled"),
    ]


class Killer:
    """Random kill instants inside the window where a sync writes."""

    def __init__(self, what: str) -> None:
        self.seed = int(os.environ.get("CFALLOW_KILL_SEED", str(time.time_ns() % 10**6)))
        self.rng = random.Random(self.seed)
        self.what = what
        self.lo = 0.0
        self.hi = 0.0
        self.outcomes: dict[str, int] = {}
        print(f"{what}: kill seed {self.seed} (CFALLOW_KILL_SEED={self.seed} replays it)")

    def where(self, i: int) -> str:
        """The label of kill ``i`` for a failure message."""
        return f"{self.what}: kill {i} (seed {self.seed})"

    def measure(self, reset: Callable[[], None], argv: Sequence[str], env: dict[str, str]) -> None:
        """The window, from a dry run's and a full run's times (start-up, read, plan, writes).

        Both are timed on a shared machine, so the window is wide: from 0.6 x the
        shorter (still starting up) to 1.1 x the longer (done).
        """
        times = []
        for args in (("--dry-run",), ()):
            reset()
            start = time.monotonic()
            proc = subprocess.run(
                [*argv, *args], capture_output=True, text=True, timeout=300, env=env, check=False
            )
            times.append(time.monotonic() - start)
            assert proc.returncode == 0, proc.stderr
        self.lo, self.hi = 0.3 * min(times), 1.1 * max(times)
        print(f"{self.what}: dry run {times[0]:.2f} s, sync {times[1]:.2f} s")

    def landed(self, state: str) -> None:
        """Count what a kill left (``old``, ``new``, ``between``); printed by :meth:`summary`."""
        self.outcomes[state] = self.outcomes.get(state, 0) + 1

    def summary(self) -> str:
        """One line: the seed, the window and where the kills landed."""
        line = (
            f"{self.what}: seed {self.seed}, kills within {self.lo:.2f}-{self.hi:.2f} s: "
            f"{self.outcomes}"
        )
        print(line)
        return line

    def kill_one(self, argv: Sequence[str], env: dict[str, str]) -> float:
        """Start ``argv``, SIGKILL it at a random instant of the window; the instant (s)."""
        at = self.rng.uniform(self.lo, self.hi)
        proc = subprocess.Popen(
            list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        time.sleep(at)
        proc.kill()
        proc.wait()
        return at
