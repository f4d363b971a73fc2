"""How often a scheduled run asks AWS: ``interval`` (default 6 h), per backend.

The timer runs every few minutes so that the host's own firewall is
re-asserted; an AWS resource shared by many hosts needs no such cadence, and a
fleet asking every 4 minutes is a load on AWS (1,000 hosts x 100 groups is
~430 describe calls a second). A scheduled run (``sync --scheduled``, what the
timer runs) reads AWS only when the last full read is older than ``interval``;
any other run (``sync``, ``status``, ``remove``) always reads. A failed apply
forgets the stamp, so the next scheduled run tries again.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from cfallow.backend import Context
from cfallow.errors import ConfigError
from cfallow.fs import write_atomic
from cfallow.section import Section

DEFAULT_INTERVAL = 6 * 3600.0
_UNITS = {"m": 60, "h": 3600, "d": 86400}


def interval(section: Section) -> float:
    """``interval``: seconds (at least 60) or ``"30m"``, ``"6h"``, ``"1d"``; default 6 h."""
    value = section.raw("interval", DEFAULT_INTERVAL)
    if isinstance(value, str) and value[:-1].isdigit() and value[-1:] in _UNITS:
        value = int(value[:-1]) * _UNITS[value[-1]]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 60:
        raise ConfigError(
            f'[{section.where}] interval: expected seconds (at least 60) or "30m", "6h", "1d";'
            f" got {value!r}"
        )
    return float(value)


def now() -> float:
    """Wall-clock seconds; ``CFALLOW_NOW`` (epoch seconds) overrides it, as for the fetch
    cadence (a backend builds on the kit alone, so the two read the variable each)."""
    fake = os.environ.get("CFALLOW_NOW")
    return float(fake) if fake else time.time()


def _path(state_dir: Path, name: str) -> Path:
    return state_dir / f"{name}.checked.json"


def due(state_dir: Path, name: str, every: float) -> tuple[bool, str]:
    """Whether a scheduled run reads AWS now, and why not (a note) when it does not."""
    try:
        at = float(json.loads(_path(state_dir, name).read_text("utf-8"))["checked_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return True, ""
    age = now() - at
    if age < 0 or age >= every:
        return True, ""
    return False, (
        f"not due: AWS last read {age / 60:.0f} min ago, interval {every / 3600:g} h"
        " (sync without --scheduled reads now)"
    )


def stamp(state_dir: Path, name: str) -> None:
    """Record a full read now (a state dir that cannot be written only costs a read)."""
    try:
        state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_atomic(_path(state_dir, name), json.dumps({"checked_at": now()}) + "\n")
    except OSError:
        pass


def forget(state_dir: Path, name: str) -> None:
    """The next scheduled run reads again (after a failed apply)."""
    with contextlib.suppress(OSError):
        _path(state_dir, name).unlink()


def not_due(ctx: Context, name: str, every: float) -> str:
    """Why this run does not read AWS (a scheduled run inside the interval), else ``""``."""
    if not ctx.scheduled:
        return ""
    run, why = due(ctx.state_dir, name, every)
    return "" if run else why
