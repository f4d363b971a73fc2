"""bench/fleet.py runs on cfallow's own cadence and fetch code (a test of the harness and
of what it shows, not of speed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "fleet.py"


def test_an_overdue_fleet_that_boots_together_fetches_spread_out() -> None:
    """200 hosts down for 30 h boot within a minute: their fetches come over the next
    90 minutes, so the first 20 minutes hold a fraction of them (before: every one)."""
    argv = [sys.executable, str(SCRIPT), "--hosts", "200", "--hours", "0.34"]
    done = subprocess.run(
        [*argv, "--only", "overdue"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| reboot after 30 h")]
    assert len(rows) == 1, done.stdout
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    requests = int(cells[3].replace(",", ""))
    assert re.fullmatch(r"\d+", cells[1]), cells
    assert 0 < requests < 100, cells  # about 200 x 30 / 90; all 200 on the code before
