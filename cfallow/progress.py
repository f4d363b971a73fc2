"""Progress lines while cfallow waits (stderr, so the journal too).

A wait shorter than :data:`AFTER` seconds shows nothing: a run where nothing
waits prints what it printed before. Beyond that, one line per thing waited
for: a fetch attempt (its number, the next delay, the whole budget), the probes of
``verify`` (how many). A lock's line (the pid holding it, the limit) is the kit's
(:func:`cfallow.fs.flock_within`), for backends take locks too.
"""

from __future__ import annotations

import logging
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


def probing(count: int, timeout: float) -> None:
    """``verify`` starts its probes."""
    log.info("verify: sending %d probes (up to %s each)", count, _secs(timeout))
