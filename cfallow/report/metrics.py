"""Prometheus metrics for node_exporter's textfile collector (the metrics: docs/operations.md).

One file, rewritten after every ``sync``: written to a temporary file in the
same directory, fsynced and renamed over the old one, so the collector never
reads half a file (it ignores names not ending in ``.prom``, and the temporary
name starts with a dot and ends in ``.tmp``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cfallow.errors import ConfigError
from cfallow.fs import write_atomic

if TYPE_CHECKING:
    from cfallow.engine import BackendResult
    from cfallow.fetch.ranges import Ranges
    from cfallow.report import Fetch, Report

PREFIX = "cfallow_"
_LAST_SUCCESS = "cfallow_last_success_timestamp_seconds"
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\s+(?P<value>\S+)(?:\s+\S+)?\s*$")

Labels = Mapping[str, str]
Sample = tuple[Labels, float]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    return repr(float(value))


class _Exposition:
    """Text exposition format 0.0.4: HELP, TYPE, then samples, one family at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def gauge(self, name: str, help_text: str, samples: Iterable[Sample]) -> None:
        samples = list(samples)
        if not samples:
            return
        full = PREFIX + name
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} gauge")
        for labels, value in samples:
            if labels:
                inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                self.lines.append(f"{full}{{{inner}}} {_number(value)}")
            else:
                self.lines.append(f"{full} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def previous_success(path: Path) -> float | None:
    """The last-success timestamp recorded in an existing metrics file, if any."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group("name") == _LAST_SUCCESS:
            try:
                value = float(m.group("value"))
            except ValueError:
                return None
            return value if math.isfinite(value) and value > 0 else None
    return None


def render(report: Report, *, now: float, success: bool, last_success: float | None) -> str:
    """The metrics text for one ``sync`` run.

    A report without a list or backends (a run that failed before it had them)
    leaves those metrics out.
    """
    out = _Exposition()
    out.gauge("last_run_timestamp_seconds", "End of the last cfallow sync run.", [({}, now)])
    out.gauge(
        "last_run_success", "1 if the last cfallow sync succeeded, else 0.", [({}, int(success))]
    )
    out.gauge(
        "last_success_timestamp_seconds",
        "End of the last successful cfallow sync run (0 = never).",
        [({}, now if success else (last_success or 0))],
    )

    if report.ranges is not None:
        _source_gauges(out, report.ranges, now)
    failed = _backend_gauges(out, report.results, report.dry_run)
    _fetch_gauges(out, report, backends_ok=not failed)
    return out.text()


def _source_gauges(out: _Exposition, ranges: Ranges, now: float) -> None:
    out.gauge(
        "ranges",
        "Cloudflare ranges in the desired list.",
        [({"family": "ipv4"}, len(ranges.ipv4)), ({"family": "ipv6"}, len(ranges.ipv6))],
    )
    info = {"kind": ranges.kind, "etag": ranges.etag or ""}
    out.gauge("source_info", "The source of the desired list.", [(info, 1)])
    fetched = ranges.fetched_at
    if fetched is not None:
        out.gauge(
            "source_fetched_timestamp_seconds",
            "When the desired list was fetched from Cloudflare.",
            [({}, float(fetched))],
        )
        out.gauge(
            "source_age_seconds",
            "Age of the desired list at the end of the run.",
            [({}, max(0.0, now - float(fetched)))],
        )


def _backend_gauges(out: _Exposition, results: Iterable[BackendResult], dry_run: bool) -> bool:
    """Per-backend gauges; True if any backend failed."""
    failed: list[Sample] = []
    applied: list[Sample] = []
    entries: list[Sample] = []
    for r in results:
        label = {"backend": r.name}
        failed.append((label, int(r.error is not None)))
        plan = r.plan
        add, remove = (plan.add, plan.remove) if plan is not None else (frozenset(), frozenset())
        current = plan.current if plan is not None else frozenset()
        done = not dry_run and r.error is None
        for action, nets in (("add", add), ("remove", remove)):
            applied.append(({**label, "action": action}, len(nets) if done else 0))
        if r.error is None:
            entries.append((label, len((current - remove) | add) if done else len(current)))
    out.gauge("backend_failed", "1 if the backend failed in the last run, else 0.", failed)
    out.gauge(
        "backend_changes_applied", "Entries the last run added or removed, per backend.", applied
    )
    out.gauge("backend_entries", "Entries cfallow owns in the backend after the last run.", entries)
    return any(v for _, v in failed)


def _fetch_gauges(out: _Exposition, report: Report, *, backends_ok: bool) -> None:
    """The apply and the fetch, each on its own: held at last-known-good is 1 and 0."""
    if report.results and not report.dry_run:
        out.gauge(
            "apply_success",
            "1 if every backend was brought to the list of the last run, else 0.",
            [({}, int(backends_ok))],
        )
    fetch: Fetch | None = report.fetch
    if fetch is not None and fetch.attempted:
        out.gauge(
            "source_fetch_success",
            "1 if the last run's fetch from Cloudflare succeeded and was accepted, else 0.",
            [({}, int(fetch.error is None))],
        )
    if fetch is not None and fetch.last_change is not None:
        out.gauge(
            "source_last_change_timestamp_seconds",
            "When a fetched Cloudflare list last differed from the last-known-good one.",
            [({}, float(fetch.last_change))],
        )


def check_path(path: Path) -> None:
    """Before a run changes anything: :class:`ConfigError` unless ``path`` can be written.

    Its directory must exist and be writable (cfallow never creates it: a
    missing one is usually a typo or an uninstalled collector), and the file,
    if present, must be a regular file.
    """
    where = path.parent
    if not where.is_dir():
        raise ConfigError(f"metrics_file {path}: directory {where} does not exist")
    if path.exists() and not path.is_file():
        raise ConfigError(f"metrics_file {path}: not a regular file")
    if not os.access(where, os.W_OK):
        raise ConfigError(f"metrics_file {path}: directory {where} is not writable")


def write_metrics(path: Path, report: Report, *, now: float, success: bool) -> None:
    """Write the metrics for one run to ``path`` atomically.

    A failed run keeps the previous run's last-success timestamp (read from
    the existing file), so "time since the last success" keeps growing.
    Raises :class:`OSError` if the file cannot be written.
    """
    path = Path(path)
    text = render(report, now=now, success=success, last_success=previous_success(path))
    # 0644: the collector may run as another user.
    write_atomic(path, text, mode=0o644)
