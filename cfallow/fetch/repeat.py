"""A warning that comes back run after run (a fetch failing for hours, on a 4-minute
timer): logged in full when it starts and when it ends, one short line in between.

What was said last time is kept in the state directory (:data:`FILE`), written only by
runs that record state (a ``sync`` that is not a dry run); every other run, and a run
outside :func:`session`, logs everything in full.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cfallow.fs import write_atomic

log = logging.getLogger("cfallow")

FILE = "warnings.json"


@dataclass
class _Seen:
    text: str
    since: float
    runs: int
    cause: str = ""


@dataclass
class Session:
    """The warnings of one run against those of the previous one."""

    path: Path
    before: dict[str, _Seen]
    now: dict[str, _Seen] = field(default_factory=dict)
    cleared: set[str] = field(default_factory=set)

    def say(self, key: str, full: list[str], short: str, level: int, cause: str) -> None:
        """Log ``full`` (its lines) unless ``key`` was warned last time for the same
        ``cause`` (numbers aside): then ``short``."""
        prev = self.before.get(key)
        if prev is None or _shape(prev.cause) != _shape(cause):
            for line in full:
                log.log(level, "%s", line)
            self.now[key] = _Seen(" / ".join(full), time.time(), 1, cause)
            return
        seen = _Seen(prev.text, prev.since, prev.runs + 1, cause)
        log.log(level, "%s (%s)", short, _since(seen))
        self.now[key] = seen

    def finish(self) -> None:
        """The end of the run: warnings seen to be over are said in full once more; those
        the run did not look at are kept for the next."""
        for key, prev in self.before.items():
            if key in self.now:
                continue
            if key in self.cleared or key.split(":")[0] in self.cleared:
                log.info("no longer: %s (%s)", prev.text, _since(prev))
            else:
                self.now[key] = prev
        doc = {
            k: {"text": v.text, "since": v.since, "runs": v.runs, "cause": v.cause}
            for k, v in self.now.items()
        }
        if doc or self.before:
            with contextlib.suppress(OSError):  # not worth failing a run for
                write_atomic(self.path, json.dumps(doc, indent=1) + "\n", mode=0o600)


def _shape(cause: str) -> str:
    """A cause without its numbers (a time-out's seconds, a port, a count)."""
    return re.sub(r"[0-9]+", "#", cause)


def _since(seen: _Seen) -> str:
    at = time.strftime("%Y-%m-%d %H:%M", time.localtime(seen.since))
    return f"since {at}, {seen.runs} runs; in full then"


_active: contextvars.ContextVar[Session | None] = contextvars.ContextVar("repeat", default=None)


def _load(path: Path) -> dict[str, _Seen]:
    try:
        raw = json.loads(path.read_text("utf-8"))
        return {
            str(k): _Seen(str(v["text"]), float(v["since"]), int(v["runs"]), str(v["cause"]))
            for k, v in raw.items()
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


@contextlib.contextmanager
def session(state_dir: Path) -> Iterator[Session]:
    """Shorten repeated warnings for the run inside (see the module docstring)."""
    s = Session(state_dir / FILE, _load(state_dir / FILE))
    token = _active.set(s)
    try:
        yield s
    finally:
        _active.reset(token)
    s.finish()


def warn(
    key: str, full: list[str], short: str, *, cause: str, level: int = logging.WARNING
) -> None:
    """Log a warning that may repeat run after run: ``full`` (its lines) the first time
    and whenever ``cause`` changes, ``short`` while it stays (always in full outside a
    session)."""
    s = _active.get()
    if s is None:
        for line in full:
            log.log(level, "%s", line)
    else:
        s.say(key, full, short, level, cause)


def cleared(key: str) -> None:
    """The run saw that the condition of ``key`` (and of every ``key:...``) is over (a
    fetch succeeded): a warning of it last run is said in full once more, as ended. A run
    that did not look keeps it as it was."""
    s = _active.get()
    if s is not None:
        s.cleared.add(key)
