"""bench/bench_scale.py runs its quick matrix and reports every figure (a test of the
harness, not of speed: nothing here compares a time with a limit)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import need_root, need_tool, sh

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "bench_scale.py"
FIGURES = ["no-change", "no-change, host_check off", "the read", "ruleset changed", "changing sync"]

pytestmark = pytest.mark.root


def test_quick_matrix_of_one_backend_reports_each_figure_beside_its_baseline(
    tmp_path: Path,
) -> None:
    need_root()
    need_tool("ip", "nft")
    out = tmp_path / "scale.json"
    argv = [sys.executable, str(SCRIPT), "--quick", "--runs", "1"]
    argv += ["--backends", "nftables-lockdown", "--json", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout + stderr
    doc = json.loads(out.read_text())
    assert doc["failed"] == []
    figures = doc["figures"]
    # every size of --quick, every figure, in the order the script measures them
    assert [(f["rules"], f["figure"]) for f in figures] == [
        (n, name) for n in (0, 1000) for name in FIGURES
    ]
    for f in figures:
        assert len(f["times"]) == 1 and f["times"][0] > 0, f
        # the process tree's peak memory was seen (a Python process holds megabytes)
        assert f["peak_mb"] >= f["largest_mb"] > 1, f
        assert f["verdict"] in ("met", "NOT met", "-"), f
    by = {(f["rules"], f["figure"]): f for f in figures}
    for n in (0, 1000):
        nc = by[(n, "no-change")]
        # compared with the run without the host analysis, judged on both targets
        assert nc["versus"] == "host_check off"
        assert [c[0] for c in nc["checks"]] == ["<= 2x", "peak <= 64 MB"]
        assert nc["verdict"] != "-"
        for name in ("ruleset changed", "changing sync"):
            assert by[(n, name)]["versus"] == "the read" and by[(n, name)]["ratio"] > 0
    # the baseline ratios are judged at 100,000 rules, not at these sizes
    assert by[(1000, "ruleset changed")]["checks"] == []
    assert doc["load_average"]["before"] and doc["load_average"]["after"]
    assert doc["growth"] == []  # one non-zero size: no growth to tell
    assert "nftables-lockdown" in stdout and "targets NOT met:" in stdout
    # the same results as the tables of the docs
    tables = sh([sys.executable, str(SCRIPT), "--render", str(out)])
    assert "| nftables-lockdown | 1,000 | " in tables and "x off)" in tables
    # the namespaces it made are gone
    listed = sh(["ip", "netns", "list"])
    assert f"cfa-scale-{proc.pid}-" not in listed


def test_growth_is_the_ratio_of_times_over_the_ratio_of_rules() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from bench_scale import Figure, growth
    finally:
        sys.path.remove(str(ROOT / "bench"))

    def fig(rules: int, name: str, seconds: float) -> Figure:
        return Figure("b", rules, name, [seconds], 30.0, 30.0)

    lines = growth(
        [
            fig(0, "a", 0.1),
            fig(1000, "a", 0.2),
            fig(20000, "a", 1.0),
            fig(100000, "a", 40.0),  # x200 the time for x100 the rules: worse than linear
            fig(1000, "b", 0.3),
            fig(100000, "b", 0.6),  # x2 for x100: better than linear
            fig(1000, "c", 0.3),  # one size only: nothing to tell
            fig(1000, "the read", 0.01),
            fig(100000, "the read", 3.0),  # a baseline: told, not judged
        ]
    )
    assert len(lines) == 3
    assert "1,000 -> 100,000" in lines[0] and "= 2.000" in lines[0]
    assert lines[0].endswith("NOT met")
    assert "= 0.020" in lines[1] and lines[1].endswith(": met")
    assert lines[2].endswith("= 3.000 (a baseline)")
