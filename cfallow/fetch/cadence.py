"""When to ask Cloudflare: ``[source] refresh`` and ``retry``, and the fetch log.

The timer re-asserts the allowlist every few minutes; fetching that often
would load Cloudflare for nothing (the list changes a few times a decade). A
scheduled run fetches only when the last-known-good list is older than
``refresh``, or, after a failed or refused fetch, when the retry time has come
(``retry`` minutes plus up to 20 % jitter, so a fleet that lost Cloudflare at
the same moment does not come back in step). ``DIR/fetch.json`` records the
last attempt.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cfallow.fs import write_atomic

_log = logging.getLogger("cfallow")
FETCH_LOG = "fetch.json"
JITTER = 0.2


@dataclass(frozen=True)
class FetchLog:
    """The last fetch attempt: when, whether it failed, and when to retry."""

    attempted_at: float
    failed: bool
    next_retry: float | None = None
    error: str | None = None
    changed_at: float | None = None  # last time a fetched list differed from the known one


def now() -> float:
    """Wall-clock seconds; ``CFALLOW_NOW`` (epoch seconds) overrides it for tests."""
    fake = os.environ.get("CFALLOW_NOW")
    if fake:
        return float(fake)
    import time

    return time.time()


def read_log(state_dir: Path) -> FetchLog | None:
    """The recorded attempt, or ``None`` (none yet, or unreadable: a fetch is due)."""
    try:
        raw = json.loads((state_dir / FETCH_LOG).read_text("utf-8"))
        retry, error, changed = raw.get("next_retry"), raw.get("error"), raw.get("changed_at")
        return FetchLog(
            float(raw["attempted_at"]),
            bool(raw["failed"]),
            float(retry) if isinstance(retry, (int, float)) else None,
            error if isinstance(error, str) else None,
            float(changed) if isinstance(changed, (int, float)) else None,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_log(state_dir: Path, entry: FetchLog) -> None:
    """Record an attempt (atomically; a failure to write is not worth failing the run)."""
    doc = {
        "attempted_at": entry.attempted_at,
        "failed": entry.failed,
        "next_retry": entry.next_retry,
        "error": entry.error,
        "changed_at": entry.changed_at,
    }
    try:
        state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_atomic(state_dir / FETCH_LOG, json.dumps(doc) + "\n")
    except OSError:
        pass


def failed_at(at: float, retry: float, error: str) -> FetchLog:
    """The log entry for a failed attempt at ``at``: retry after ``retry`` s plus jitter."""
    import random  # only after a failure: not on every run's import path

    jitter = random.uniform(0, JITTER)  # noqa: S311 - spreading a fleet, not a secret
    return FetchLog(at, True, at + retry * (1 + jitter), error)


def fetch_due(
    log: FetchLog | None, known_at: float | None, at: float, refresh: float
) -> tuple[bool, str]:
    """Whether a scheduled run at ``at`` fetches, and why (for the debug log).

    A list or an attempt stamped in the future (the clock was ahead when it was
    recorded) makes a fetch due, with a warning: otherwise every later run would say
    "not due" until the clock caught up, and never fetch again.
    """
    future = [
        (what, stamp)
        for what, stamp in (
            ("last-known-good list", known_at),
            ("last fetch attempt", log.attempted_at if log is not None else None),
        )
        if stamp is not None and stamp > at
    ]
    if future:
        what, stamp = future[0]
        why = f"the {what} is stamped {stamp - at:.0f} s in the future (the clock was ahead)"
        _log.warning("%s; fetching now", why)
        return True, why
    if log is not None and log.failed and (known_at is None or log.attempted_at >= known_at):
        if log.next_retry is None or at >= log.next_retry:
            return True, "retrying the failed fetch"
        return False, f"last fetch failed; next retry in {log.next_retry - at:.0f} s"
    if known_at is None:
        return True, "no last-known-good list"
    age = at - known_at
    if age >= refresh:
        return True, f"last-known-good list is {age:.0f} s old (refresh {refresh:g} s)"
    return False, f"last-known-good list is {age:.0f} s old (refresh {refresh:g} s)"
