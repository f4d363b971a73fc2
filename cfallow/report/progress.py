"""Progress lines while cfallow waits (stderr, so the journal too).

A wait shorter than :data:`AFTER` seconds shows nothing: a run where nothing
waits prints what it printed before. Beyond that, one line per thing waited
for: a fetch attempt (its number, the next delay, the whole budget), a lock
(the pid holding it, the limit), the probes of ``verify`` (how many).
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger("cfallow")

#: Seconds of waiting before a progress line is shown.
AFTER = 1.0


def fetch_budget(timeout: float, attempts: int, backoff: float) -> float:
    """The longest one URL's fetch can take: every attempt's timeout plus the longest
    delays between attempts (exponential backoff, capped at 16 x ``backoff``)."""
    delays = sum(min(backoff * 2.0 ** (n - 1), backoff * 16) for n in range(1, attempts))
    return attempts * timeout + delays


def _secs(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".") + " s"


class Fetch:
    """Progress of one URL's fetch with retries."""

    def __init__(self, url: str, *, timeout: float, attempts: int, backoff: float) -> None:
        self.url = url
        self.timeout = timeout
        self.attempts = attempts
        self.budget = fetch_budget(timeout, attempts, backoff)
        self.started = time.monotonic()
        self.attempt = 0
        self.shown = False
        log.debug(
            "%s: fetching (%d attempt(s) of up to %s; %s in all)",
            url,
            attempts,
            _secs(timeout),
            _secs(self.budget),
        )

    def begin(self, attempt: int) -> None:
        """Attempt number ``attempt`` (from 1) starts."""
        self.attempt = attempt

    def slow(self) -> None:
        """The current attempt has had no answer for :data:`AFTER` seconds."""
        self.shown = True
        log.info(
            "%s: attempt %d of %d, no answer yet (up to %s each; %s in all)",
            self.url,
            self.attempt,
            self.attempts,
            _secs(self.timeout),
            _secs(self.budget),
        )

    def retry(self, error: BaseException | None, delay: float) -> None:
        """The current attempt failed; the next one starts in ``delay`` seconds.

        A line when the fetch has already waited (or will), else only at ``-v``.
        """
        waited = time.monotonic() - self.started
        say = log.info if self.shown or waited + delay >= AFTER else log.debug
        say(
            "%s: attempt %d of %d failed (%s); attempt %d in %s (%s of %s used)",
            self.url,
            self.attempt,
            self.attempts,
            error,
            self.attempt + 1,
            _secs(delay),
            _secs(waited),
            _secs(self.budget),
        )


def lock_holder(fd: int) -> int | None:
    """The pid holding a ``flock`` on the file open as ``fd`` (from ``/proc/locks``)."""
    ino = os.fstat(fd).st_ino
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF" (blocked waiters: "1: -> FLOCK ...")
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        dev_ino = fields[5].split(":")
        if len(dev_ino) == 3 and dev_ino[2] == str(ino) and fields[4].isdigit():
            pid = int(fields[4])
            if pid != os.getpid():
                return pid
    return None


def lock_wait(what: str, fd: int, limit: float) -> None:
    """The line for a lock that has not come free within :data:`AFTER` seconds."""
    pid = lock_holder(fd)
    holder = f"held by pid {pid}" if pid is not None else "held by another process"
    log.info("waiting for %s, %s (up to %s)", what, holder, _secs(limit))


def probing(count: int, timeout: float) -> None:
    """``verify`` starts its probes."""
    log.info("verify: sending %d probes (up to %s each)", count, _secs(timeout))
