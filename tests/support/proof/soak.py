"""Soak: many consecutive ``cfallow sync`` runs on one namespace, watched for leaks.

The worker runs inside the lab's server namespace as one long-lived process
that calls the real CLI entry point (``cfallow.cli.commands.main``) again and again, the
way a leak would accumulate: first with the list unchanged, then alternating
between the two Cloudflare lists. After every run it records the exit code,
the open file descriptors, resident memory, unreaped children and the rule
count of cfallow's chain; at the end, what is left in the state directory and
in a private TMPDIR. ``bench/soak.py`` and ``tests/test_soak.py`` drive it.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from support import ns_exec  # noqa: E402
from support.proof.lab import VARIANTS, Lab, chain_sources, era_lists, publish  # noqa: E402

EXPECTED = {
    era: len(v4) + len(v6) for era, (v4, v6) in ((e, era_lists(e)) for e in ("current", "2021-03"))
}


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _unreaped_children() -> int:
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return 0  # no child at all: every subprocess of the run was waited for
    return 1


def _heap() -> int:
    """Bytes the Python heap holds, leaving out this module's own records of the runs."""
    gc.collect()
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, __file__)])
    return sum(stat.size for stat in snap.statistics("filename"))


def worker(opts: dict[str, Any]) -> dict[str, Any]:
    """Run ``opts["runs"]`` syncs in this process (already inside the namespace)."""
    from cfallow.cli.commands import main

    save = [VARIANTS[opts["variant"]][i] + "-save" for i in (0, 1)]
    www = Path(opts["www"])
    half = opts["runs"] // 2
    warm = min(20, half)
    runs = []
    heap: list[int] = []
    for i in range(opts["runs"]):
        if i == warm:
            tracemalloc.start()
            heap.append(_heap())
        era = "2021-03" if i < half or (i - half) % 2 else "current"
        publish(www, era)
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main(["--config", opts["config"], "--state-dir", opts["state"], "-q", "sync"])
        rules = sum(
            len(
                chain_sources(
                    subprocess.run(
                        [tool, "-t", "filter"], capture_output=True, text=True, check=True
                    ).stdout,
                    "CFALLOW",
                )
            )
            for tool in save
        )
        runs.append(
            {
                "era": era,
                "rc": rc,
                "fds": len(os.listdir("/proc/self/fd")),
                "rss_kib": _rss_kib(),
                "children": _unreaped_children(),
                "rules": rules,
            }
        )
    heap.append(_heap())
    tracemalloc.stop()
    return {
        "runs": runs,
        "py_heap_growth_kib": (heap[-1] - heap[0]) // 1024,
        "heap_runs": opts["runs"] - warm,
        "state_files": sorted(p.name for p in Path(opts["state"]).iterdir()),
        "tmp_files": sorted(str(p) for p in Path(opts["tmpdir"]).rglob("*")),
    }


def soak(lb: Lab, runs: int) -> dict[str, Any]:
    """Run the worker inside ``lb``'s server namespace; its findings as a dict."""
    tmpdir = lb.tmp / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    out = lb.tmp / "soak.json"
    opts = {
        "config": str(lb.config()),
        "state": str(lb.tmp / "state"),
        "www": str(lb.www),
        "runs": runs,
        "variant": lb.variant,
        "tmpdir": str(tmpdir),
        "out": str(out),
    }
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    subprocess.run(
        ns_exec(lb.server, sys.executable, __file__, json.dumps(opts)), env=env, check=True
    )
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _median(rows: list[dict[str, Any]], key: str) -> int:
    return int(sorted(r[key] for r in rows)[len(rows) // 2])


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers an operator asks about."""
    runs = result["runs"]
    q = max(1, len(runs) // 4)
    first, last = runs[:q], runs[-q:]
    return {
        "runs": len(runs),
        "failed_runs": sum(1 for r in runs if r["rc"] != 0),
        "wrong_rule_count": sum(1 for r in runs if r["rules"] != EXPECTED[r["era"]]),
        "fds_first": runs[0]["fds"],
        "fds_max": max(r["fds"] for r in runs),
        "fds_last": runs[-1]["fds"],
        "rss_kib_first_quarter_median": _median(first, "rss_kib"),
        "rss_kib_last_quarter_median": _median(last, "rss_kib"),
        "rss_kib_samples": [r["rss_kib"] for r in runs[:: max(1, len(runs) // 10)]],
        "unreaped_children": sum(r["children"] for r in runs),
        "py_heap_growth_kib": result["py_heap_growth_kib"],
        "py_heap_runs": result["heap_runs"],
        "state_files": result["state_files"],
        "tmp_files": result["tmp_files"],
    }


def repl() -> None:
    """Run ``cfallow.cli.main(argv)`` for each JSON argv line on stdin; answer rc and stderr."""
    from cfallow.cli.commands import main

    print("ready", flush=True)
    for line in sys.stdin:
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            rc = main(json.loads(line))
        print(json.dumps({"rc": rc, "err": err.getvalue()}), flush=True)


class InProcess:
    """A long-lived process in ``lb``'s server namespace running the CLI on request
    (saves interpreter start-up and imports on runs whose cost is not the point)."""

    def __init__(self, lb: Lab) -> None:
        self.lb = lb
        self.proc = subprocess.Popen(
            ns_exec(lb.server, sys.executable, __file__, "repl"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        lb.procs.append(self.proc)
        assert self.proc.stdout is not None and self.proc.stdout.readline().startswith("ready")

    def run(self, *args: str) -> tuple[int, str]:
        """``cfallow --config ... --state-dir ... ARGS`` in the worker: (exit code, stderr)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(self.lb.cfallow_cmd(*args)[1:]) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        return int(answer["rc"]), str(answer["err"])


if __name__ == "__main__":
    if sys.argv[1] == "repl":
        repl()
    else:
        options = json.loads(sys.argv[1])
        Path(options["out"]).write_text(json.dumps(worker(options)))
