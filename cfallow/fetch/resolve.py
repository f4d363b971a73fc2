"""Which list a run brings the backends to: live, last-known-good, bundled, offline.

The kernel forgets (a reboot, a firewall reload); cfallow must not. The
validated last-known-good list is the desired state whenever no newer valid
list is at hand:

* live (the default): fetch; a list the guard accepts is the new desired
  state. A fetch that fails or is refused holds the backends at the
  last-known-good list (the run still repairs them, then exits 4); without one,
  a failed fetch falls back to the bundled snapshot, with a warning.
* ``offline``: no network at all (``requests`` is not even imported): the
  last-known-good list, else the bundled snapshot, with a warning. ``--source
  last-known-good`` is the same list, with every backend (an Ansible check).
* ``scheduled`` (the timer): live only when a fetch is due (see
  :mod:`cfallow.fetch.cadence`), offline otherwise.
* ``bundled``: the shipped snapshot, through the guard like a fetched list.
* pushed (``--source-file``): a list fetched and validated elsewhere (once, on an
  Ansible controller, for a whole fleet), checked and guarded here like a fetched
  one and recorded like one; no network. One older than the last-known-good list
  is refused if it differs (a replay), ignored if it does not.

The state file is checked with the same rules as a fetched list before any use
(:meth:`cfallow.fetch.state.State.load`): a hand-edited or planted file is ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from cfallow import instep
from cfallow.cli.config import Config
from cfallow.errors import FetchError, GuardRefused, RangesError, UsageError
from cfallow.fetch import cadence, repeat, sources
from cfallow.fetch.guard import check_ceiling, check_growth, check_shrink
from cfallow.fetch.ranges import Ranges
from cfallow.fetch.state import State
from cfallow.model import Networks, as_strings

log = logging.getLogger("cfallow")
LKG = "last-known-good"
#: The keys of the warnings a failing fetch repeats run after run (cfallow.fetch.repeat):
#: held at the last-known-good list, or on the bundled snapshot; a good fetch clears both.
FETCH_WARNING = "fetch"
HELD_WARNING = "fetch:held"
SNAPSHOT_WARNING = "fetch:snapshot"


@dataclass(frozen=True)
class Resolved:
    """The list to bring the backends to, and how it was chosen."""

    ranges: Ranges
    attempted: bool = False  # a live fetch was tried this run
    held: RangesError | None = None  # the fetch's failure or refusal (ranges: last-known-good)
    failed: RangesError | None = None  # the fetch's failure, whatever was used instead
    added: Networks = frozenset()  # a fetched list against the last-known-good one
    removed: Networks = frozenset()
    forced: bool = False  # accepted with --force: it becomes the accepted list too
    log: cadence.FetchLog | None = None  # the fetch log as this run found it (read once)

    @property
    def fetched(self) -> bool:
        """A live list was fetched and accepted (it becomes the last-known-good list)."""
        return self.attempted and self.held is None and self.ranges.kind == "live"


def day(ranges: Ranges) -> str:
    """The list's date, ``YYYY-MM-DD`` (UTC)."""
    return time.strftime("%Y-%m-%d", time.gmtime(ranges.fetched_at or 0))


def snapshot_age(snap: Ranges) -> str:
    """``the bundled snapshot of DATE (N days old)``: said on every run that uses it."""
    made = snap.fetched_at or 0
    days = max(0, int((cadence.now() - made) // 86400))
    instep.before(made + (days + 1) * 86400)  # when the count of days moves on
    return f"the bundled snapshot of {day(snap)} ({days} days old)"


def held_line(ranges: Ranges, verb: str = "held at") -> str:
    """``backends held at the last-known-good list of 2026-12-01 (etag ...)``."""
    return f"backends {verb} the last-known-good list of {day(ranges)} (etag {ranges.etag or '-'})"


def change_line(added: Networks, removed: Networks) -> str:
    """``cloudflare list changed: +104.16.0.0/13 +104.24.0.0/14 -104.16.0.0/12``."""
    words = [f"+{n}" for n in as_strings(added)] + [f"-{n}" for n in as_strings(removed)]
    return "cloudflare list changed: " + " ".join(words)


def _as_known(ranges: Ranges) -> Ranges:
    return dataclasses.replace(ranges, kind=LKG)


def _without_network(known: Ranges | None) -> Ranges:
    if known is not None:
        return _as_known(known)
    snap = sources.bundled()
    log.warning("no last-known-good list yet; using %s", snapshot_age(snap))
    return snap


def _growth_baseline(anchor: Ranges | None, bundled: Ranges) -> Ranges:
    """What a new list may not grow too far beyond: the list an operator last accepted
    together with the bundled snapshot (a newer snapshot after an upgrade counts at
    once; returning to the shipped list after a forced shrink is no growth). Never the
    last-known-good list: growth through it would ratchet, each fetch a little more."""
    if anchor is None:
        return bundled
    return Ranges(anchor.ipv4 | bundled.ipv4, anchor.ipv6 | bundled.ipv6, "accepted")


def ceiling(cfg: Config, ranges: Ranges) -> None:
    """The fixed ceiling (:class:`GuardRefused`): no ``--force`` or acceptance lifts it."""
    check_ceiling(ranges, {4: cfg.source.ceiling_prefix_v4, 6: cfg.source.ceiling_prefix_v6})


def guard(cfg: Config, ranges: Ranges, known: Ranges | None, anchor: Ranges | None) -> None:
    """The shrink guard (against the last-known-good list), the growth guard (against
    the accepted list with the snapshot) and the ceiling (:class:`GuardRefused`)."""
    src = cfg.source
    check_shrink(ranges, known, src.max_shrink)
    baseline = _growth_baseline(anchor, sources.bundled())
    prefixes = {4: src.min_new_prefix_v4, 6: src.min_new_prefix_v6}
    check_growth(ranges, baseline, src.max_growth, prefixes)
    ceiling(cfg, ranges)


def _known(cfg: Config, state: State) -> Ranges | None:
    """The last-known-good list, unless it is over the ceiling (then ignored, warned)."""
    known = state.load()
    if known is None:
        return None
    try:
        ceiling(cfg, known)
    except GuardRefused as exc:
        log.warning("ignoring the last-known-good list in %s: %s", state.dir, exc)
        return None
    return known


def _pushed(path: Path, known: Ranges | None) -> Ranges | None:
    """The pushed list; ``None`` when it is the list this host has, only older."""
    ranges = sources.pushed(path)
    at = ranges.fetched_at if ranges.fetched_at is not None else cadence.now()
    ranges = dataclasses.replace(ranges, fetched_at=at)
    if known is None or known.fetched_at is None or at >= known.fetched_at:
        return ranges
    if ranges.desired == known.desired:
        return None
    raise GuardRefused(
        f"{path}: the list of {day(ranges)} is older than this host's last-known-good "
        f"list of {day(known)}, and differs from it"
    )


def _live(
    cfg: Config, state: State, known: Ranges | None, *, force: bool, pushed: Path | None = None
) -> Resolved:
    try:
        if pushed is not None:
            given = _pushed(pushed, known)
            if given is None:
                assert known is not None
                return Resolved(_as_known(known))
            ranges = given
        else:
            # Stamped with the run's clock: the cadence measures the list's age by it.
            ranges = dataclasses.replace(sources.fetch_live(cfg.source), fetched_at=cadence.now())
        if force:
            ceiling(cfg, ranges)
        else:
            guard(cfg, ranges, known, state.load_anchor())
    except RangesError as exc:
        if known is not None:
            return Resolved(_as_known(known), attempted=True, held=exc, failed=exc)
        if isinstance(exc, GuardRefused):
            raise
        snap = sources.bundled()
        still = f"using {snapshot_age(snap)}; Cloudflare never reached from this host"
        full = f"live fetch failed ({exc}); no last-known-good list yet, {still}"
        if isinstance(exc, FetchError):  # unreachable: shortened while it lasts
            short = f"live fetch still failing the same way; {still}"
            repeat.warn(SNAPSHOT_WARNING, [full], short, cause=str(exc))
        else:  # a list refused: said in full every time
            log.warning("%s", full)
        return Resolved(snap, attempted=True, failed=exc)
    repeat.cleared(FETCH_WARNING)
    if known is None:
        return Resolved(ranges, attempted=True, forced=force)
    added, removed = ranges.desired - known.desired, known.desired - ranges.desired
    if added or removed:
        log.warning("%s", change_line(added, removed))
    return Resolved(ranges, attempted=True, added=added, removed=removed, forced=force)


def resolve(
    cfg: Config,
    state: State,
    *,
    source: str = "live",
    offline: bool = False,
    scheduled: bool = False,
    force: bool = False,
    pushed: Path | None = None,
) -> Resolved:
    """The list for this run (see the module docstring). Raises :class:`RangesError`
    only when nothing trustworthy is at hand (the bundled list refused by the guard).

    The fetch log is read here, once a run: :func:`record` writes the next entry from
    it, and the report reads it from what :func:`record` returns."""
    if pushed is not None and (source != "live" or offline or scheduled):
        raise UsageError(
            "--source-file is a list of its own: not with --source, --offline or --scheduled"
        )
    entry = cadence.read_log(state.dir)
    chosen = _choose(
        cfg,
        state,
        entry,
        source=source,
        offline=offline,
        scheduled=scheduled,
        force=force,
        pushed=pushed,
    )
    return dataclasses.replace(chosen, log=entry)


def _choose(
    cfg: Config,
    state: State,
    entry: cadence.FetchLog | None,
    *,
    source: str,
    offline: bool,
    scheduled: bool,
    force: bool,
    pushed: Path | None,
) -> Resolved:
    known = _known(cfg, state)
    if source == "bundled":
        ranges = sources.bundled()
        if force:
            ceiling(cfg, ranges)
        else:
            guard(cfg, ranges, known, state.load_anchor())
        return Resolved(ranges)
    if offline or source == LKG:
        return Resolved(_without_network(known))
    if scheduled:
        marks = cadence.machine_marks()
        known_at = known.fetched_at if known else None
        due, why = cadence.fetch_due(
            entry, known_at, cadence.now(), cfg.source.refresh, cadence.phase(state.dir, marks)
        )
        log.debug("fetch %s: %s", "due" if due else "not due", why)
        if not due:
            instep.scheduled(cfg.source.refresh, known_at, marks)
            if entry is not None and entry.failed and known is not None:
                log.warning("%s; %s", why, held_line(known))
                instep.spoil()  # "next retry in N s": each run says another N
            return Resolved(_without_network(known))
    return _live(cfg, state, known, force=force, pushed=pushed)


def accept_lines(anchor: Ranges | None, ranges: Ranges) -> list[str]:
    """What ``cfallow accept`` shows: ``ranges`` against the accepted list (else the
    bundled snapshot), per family in addresses, then every entry added or removed."""
    from netaddr import IPSet

    base = anchor if anchor is not None else sources.bundled()
    what = f"the accepted list of {day(base)}" if anchor is not None else snapshot_age(base)
    lines = [f"against {what}:"]
    for fam, old, cur in (("IPv4", base.ipv4, ranges.ipv4), ("IPv6", base.ipv6, ranges.ipv6)):
        have, now, grown = IPSet(old).size, IPSet(cur).size, (IPSet(cur) - IPSet(old)).size
        times = f" ({grown / have:,.1f} times the accepted coverage)" if have else ""
        lines.append(f"  {fam}: {have:,} -> {now:,} addresses, {grown:,} new{times}")
    added, removed = ranges.desired - base.desired, base.desired - ranges.desired
    lines += [f"  +{n}" for n in as_strings(added)] + [f"  -{n}" for n in as_strings(removed)]
    if not added and not removed:
        lines.append("  no change")
    return lines


def record(
    cfg: Config, state: State, resolved: Resolved, *, staged: bool = False
) -> cadence.FetchLog | None:
    """After a real run: record an accepted list (commit the candidate ``staged`` before
    the backends ran, else save it), log the attempt (for the cadence). Returns the
    fetch log as it now stands (``resolved.log`` when there was nothing to log)."""
    if not resolved.attempted:
        return resolved.log
    at = cadence.now()
    previous = resolved.log
    if resolved.fetched:
        if staged:
            state.commit()
        else:
            state.save(resolved.ranges)
        if resolved.forced:  # --force is an operator's explicit acceptance
            state.save_anchor(resolved.ranges)
        changed = bool(resolved.added or resolved.removed)
        entry = cadence.fetched_at(at, previous, changed=changed)
    elif resolved.failed is not None:  # retry later, also on a first run (snapshot)
        entry = cadence.failed_at(
            at,
            cfg.source.retry,
            str(resolved.failed),
            refresh=cfg.source.refresh,
            previous=previous,
            retry_after=resolved.failed.retry_after,
        )
    else:
        return previous
    cadence.write_log(state.dir, entry)
    return entry
