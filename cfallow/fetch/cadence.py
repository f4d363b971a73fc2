"""When to ask Cloudflare: ``[source] refresh`` and ``retry``, and the fetch log.

The timer re-asserts the allowlist every few minutes; fetching that often
would load Cloudflare for nothing (the list changes a few times a decade). A
scheduled run fetches once per ``refresh`` period, at a point in the period
fixed for this host: its phase, from a salt made on the host's first run and
kept in the state directory (``DIR/salt.json``, remade when it was made on
another machine: a cloned image does not share it). So a fleet that fetched in
the same minute (one push, a baked image, a long outage) fetches spread over
the next period, not in step for good. A host that was down at its point waits
for its next one rather than fetching at boot with the whole fleet; once its
list is :data:`MAX_AGE` periods old, its point comes :data:`MAX_AGE` times as
often (a fleet down for days fetches spread over a quarter period after it
boots, not at boot).

A failed or refused fetch is retried after ``retry``, doubling with each
failure in a row, up to ``refresh``, each wait stretched by up to
:data:`JITTER` (so a fleet that lost Cloudflare at the same moment does not
come back in step), and never sooner than the server's ``Retry-After``.
``DIR/fetch.json`` records the last attempt.
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
SALT_FILE = "salt.json"
JITTER = 1.0  # a wait is stretched by up to this fraction of itself
WINDOW = 600.0  # a run this soon after the host's point fetches (the timer runs every 4 min)
MAX_AGE = 4  # refresh periods: a list this old is overdue (its point comes 4 times as often)
MAX_RETRY_AFTER = 86400.0  # a server's Retry-After is honoured up to a day


@dataclass(frozen=True)
class FetchLog:
    """The last fetch attempt: when, whether it failed, and when to retry."""

    attempted_at: float
    failed: bool
    next_retry: float | None = None
    error: str | None = None
    changed_at: float | None = None  # last time a fetched list differed from the known one
    failures: int = 0  # failed attempts in a row (the back-off doubles with each)


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
        failures = raw.get("failures")
        failed = bool(raw["failed"])
        return FetchLog(
            float(raw["attempted_at"]),
            failed,
            float(retry) if isinstance(retry, (int, float)) else None,
            error if isinstance(error, str) else None,
            float(changed) if isinstance(changed, (int, float)) else None,
            min(max(failures, 0), 64) if isinstance(failures, int) else int(failed),
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
        "failures": entry.failures,
    }
    try:
        state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_atomic(state_dir / FETCH_LOG, json.dumps(doc) + "\n")
    except OSError:
        pass


def failed_at(
    at: float,
    retry: float,
    error: str,
    *,
    refresh: float = float("inf"),
    previous: FetchLog | None = None,
    retry_after: float | None = None,
) -> FetchLog:
    """The log entry for a failed attempt at ``at``.

    The wait is ``retry`` doubled for each earlier failure in a row (``previous``),
    at most ``refresh``, stretched by up to :data:`JITTER`, and never shorter than
    the server's ``Retry-After`` (capped at :data:`MAX_RETRY_AFTER`).
    """
    import random  # only after a failure: not on every run's import path

    failures = (previous.failures if previous is not None and previous.failed else 0) + 1
    base = min(retry * 2.0 ** min(failures - 1, 32), max(refresh, retry))
    wait = base * (1 + random.uniform(0, JITTER))  # noqa: S311 - spreading a fleet, not a secret
    if retry_after is not None:
        wait = max(wait, min(retry_after, MAX_RETRY_AFTER))
    changed = previous.changed_at if previous is not None else None
    return FetchLog(at, True, at + wait, error, changed, failures)


def fetched_at(at: float, previous: FetchLog | None, *, changed: bool) -> FetchLog:
    """The log entry for a fetch at ``at`` that brought a valid list (``changed``: one
    that differs from the last-known-good list)."""
    since = at if changed else (previous.changed_at if previous is not None else None)
    return FetchLog(at, False, changed_at=since)


def machine_marks() -> str:
    """What tells this machine from a clone of its disk: the machine-id, the firmware's
    UUID (root only) and the network cards' addresses."""
    marks: list[str] = []
    for path in ("/etc/machine-id", "/sys/class/dmi/id/product_uuid"):
        try:
            marks.append(Path(path).read_text("ascii", "replace").strip())
        except OSError:
            marks.append("")
    try:
        nics = sorted(Path("/sys/class/net").iterdir())
    except OSError:
        nics = []
    for nic in nics:
        try:
            mac = (nic / "address").read_text("ascii", "replace").strip()
        except OSError:
            continue
        if mac and mac.strip("0:"):
            marks.append(mac)
    return "\n".join(marks)


def phase(state_dir: Path, marks: str | None = None) -> float:
    """This host's point in each refresh period, a fraction in [0, 1).

    From the salt in ``DIR/salt.json``, made on the first run (16 random bytes) and
    tied to a digest of ``marks`` (default: :func:`machine_marks`): a state directory
    copied to another machine, or a file that is unreadable, gets a new salt. If the
    salt cannot be written, the digest of the marks alone stands in for it.
    """
    import hashlib

    host = hashlib.sha256((machine_marks() if marks is None else marks).encode()).hexdigest()
    salt = None
    try:
        raw = json.loads((state_dir / SALT_FILE).read_text("utf-8"))
        if isinstance(raw, dict) and raw.get("host") == host and isinstance(raw.get("salt"), str):
            salt = raw["salt"]
    except (OSError, ValueError):
        pass
    if salt is None:
        salt = os.urandom(16).hex()
        try:
            state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            doc = json.dumps({"salt": salt, "host": host})
            write_atomic(state_dir / SALT_FILE, doc + "\n", mode=0o600)
        except OSError as exc:
            _log.debug("cannot keep the salt in %s (%s); using the machine's", state_dir, exc)
            salt = host
    digest = hashlib.sha256(f"cfallow-phase:{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def fetch_due(
    log: FetchLog | None,
    known_at: float | None,
    at: float,
    refresh: float,
    point: float | None = None,
) -> tuple[bool, str]:
    """Whether a scheduled run at ``at`` fetches, and why (for the debug log).

    With ``point`` (this host's :func:`phase`), a list older than its last point
    ``point * refresh + k * refresh`` is fetched by a run within :data:`WINDOW` of that
    point; once :data:`MAX_AGE` periods old, of the point of each ``refresh / MAX_AGE``
    (at once if that is no longer than the window); without it, once ``refresh`` old.
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
    says = f"last-known-good list is {age:.0f} s old (refresh {refresh:g} s)"
    if point is None:
        return age >= refresh, says
    period = refresh
    if age >= MAX_AGE * refresh:
        # Overdue: the point comes MAX_AGE times as often, so a fleet that was down for
        # days is spread over a quarter period after its boot instead of fetching at it.
        period = refresh / MAX_AGE
        if period <= WINDOW:
            return True, says
        says += f"; overdue, so this host's point comes every {period:.0f} s"
    offset = point * period
    last = offset + (at - offset) // period * period  # this host's latest point
    if last > known_at and at - last < WINDOW:
        return True, f"{says}; this host's point in the period was {at - last:.0f} s ago"
    return False, f"{says}; this host fetches in {last + period - at:.0f} s"
