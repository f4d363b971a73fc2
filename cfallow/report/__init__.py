"""A run's report, built once (:class:`Report`): the text and JSON reports, the metrics
and the notification all read it (the JSON shape is a stable contract)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from cfallow.engine import BackendResult
from cfallow.fetch import cadence
from cfallow.fetch.ranges import Ranges
from cfallow.fetch.resolve import Resolved, day
from cfallow.model import Networks, as_strings
from cfallow.report import table


@dataclass(frozen=True)
class Fetch:
    """This run's fetch, as the report tells it."""

    attempted: bool = False  # a live fetch was tried this run
    error: str | None = None  # its failure, whatever list was used instead
    held: str | None = None  # the failure or refusal that held the backends (last-known-good)
    #: When a fetched list last differed from the last-known-good one (as far as seen)
    last_change: float | None = None
    added: Networks = frozenset()  # Cloudflare's change against the last-known-good list
    removed: Networks = frozenset()

    @classmethod
    def of(cls, resolved: Resolved, log: cadence.FetchLog | None) -> Fetch:
        """From the resolved list and the fetch log as the run left it."""
        return cls(
            attempted=resolved.attempted,
            error=str(resolved.failed) if resolved.failed is not None else None,
            held=str(resolved.held) if resolved.held is not None else None,
            last_change=log.changed_at if log is not None else None,
            added=resolved.added,
            removed=resolved.removed,
        )

    def to_json(self) -> dict[str, object]:
        """The ``fetch`` object of the JSON report."""
        return {
            "attempted": self.attempted,
            "ok": (self.error is None) if self.attempted else None,
            "error": self.error,
            "last_change": self.last_change,
        }


@dataclass(frozen=True)
class Report:
    """One run's outcome: the list (``None`` for ``remove`` and a run refused before it
    had one), every backend's result, the fetch (``sync`` and ``status`` only)."""

    results: tuple[BackendResult, ...]
    dry_run: bool
    ranges: Ranges | None = None
    fetch: Fetch | None = None

    @property
    def changed(self) -> bool:
        """Did (or would) any backend change?"""
        return any(r.changed for r in self.results)

    @property
    def failed(self) -> bool:
        """Did any backend fail?"""
        return any(r.error is not None for r in self.results)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document of ``sync``, ``status`` and ``remove``."""
        source = None
        if self.ranges is not None:
            source = {**self.ranges.to_json(), "date": day(self.ranges)}  # YYYY-MM-DD, UTC
        doc: dict[str, Any] = {
            "changed": self.changed,
            "dry_run": self.dry_run,
            "source": source,
            "backends": [backend_json(r) for r in self.results],
        }
        if self.fetch is not None:
            doc["fetch"] = self.fetch.to_json()
        return doc


def backend_json(result: BackendResult) -> dict[str, Any]:
    """One backend's entry: name, changed, current, add, remove, error (+ drift, notes)."""
    plan = result.plan
    return {
        "name": result.name,
        "changed": result.changed,
        "current": as_strings(plan.current) if plan else [],
        "add": as_strings(plan.add) if plan else [],
        "remove": as_strings(plan.remove) if plan else [],
        "drift": list(plan.drift) if plan else [],
        "notes": list(plan.notes) if plan else [],
        "error": result.error,
    }


def source_line(ranges: Ranges) -> str:
    """``source: live URL etag=38f79d05... ipv4=15 ipv6=7`` (the etag shortened; ``--json``
    has it whole)."""
    where = ranges.url or "snapshot"
    etag = ranges.etag or "-"
    etag = etag if len(etag) <= 12 else etag[:8] + "..."
    return (
        f"source: {ranges.kind} {where} etag={etag} ipv4={len(ranges.ipv4)} ipv6={len(ranges.ipv6)}"
    )


def summary(
    result: BackendResult, *, verb: str = "sync", error: bool = True, dry_run: bool = False
) -> str:
    """One backend's line: ``iptables: +2 -1 =20 changed`` (added, removed, kept, then what
    happened: ``in sync``, ``would change (dry run)``, ``differs``, ``removed``...), or
    ``iptables: failed: ...`` (``iptables: failed`` without ``error``: the text report
    leaves the message to the one line on stderr).

    Drift follows in brackets; for ``remove`` what a plan deletes beyond entries is what
    removal means, not drift:
    ``iptables: +0 -22 =0 removed (IPv4: delete 1 jump(s) and chain CFALLOW (22 rules))``.
    """
    if result.error is not None:
        return f"{result.name}: failed: {result.error}" if error else f"{result.name}: failed"
    plan = result.plan
    assert plan is not None
    line = f"{plan.backend}: +{len(plan.add)} -{len(plan.remove)} ={len(plan.kept)} "
    line += table.state(result, verb=verb, dry_run=dry_run)
    if plan.drift:
        line += " (" + ("" if verb == "remove" else "drift: ") + "; ".join(plan.drift) + ")"
    return line


def details(result: BackendResult, *, verb: str = "sync", entries: bool = True) -> list[str]:
    """A backend's ``+``/``-`` lines, drift (``~``; ``x`` for what ``remove`` deletes) and
    notes, indented under its summary line (the notes alone without ``entries``, or when
    the backend failed: a plan that failed in some targets still has its notes, such as
    a quota it could not read, and its entries are not all true)."""
    plan = result.plan
    if plan is None:
        return []
    lines: list[str] = []
    if plan.changed and entries and result.error is None:
        lines += [f"  + {net}" for net in as_strings(plan.add)]
        lines += [f"  - {net}" for net in as_strings(plan.remove)]
        mark = "x" if verb == "remove" else "~"  # removal deletes; it does not drift
        lines += [f"  {mark} {item}" for item in plan.drift]
    lines += [f"  note: {note}" for note in plan.notes]
    return lines


def write_text(
    out: TextIO,
    ranges: Ranges | None,
    results: Sequence[BackendResult],
    *,
    dry_run: bool,
    verb: str = "sync",
    detail: bool = True,
    wrap: bool = True,
) -> None:
    """Human report: the source, then per backend its summary line, its notes and (with
    ``detail``) its ``+``/``-`` and drift lines; ``status`` is a table (drift and notes in
    its note column; the entries with ``detail``); lines wrap at 100 columns unless not
    ``wrap`` (the journal keeps a line whole)."""
    lines: list[str] = []
    if ranges is not None:
        lines.append(source_line(ranges))
    if verb == "status":
        lines += table.status_rows(results)
        for r in results if detail else ():
            if details(r, verb=verb):
                lines += [f"{r.name}:", *details(r, verb=verb)]
    else:
        for r in results:
            lines.append(summary(r, verb=verb, error=False, dry_run=dry_run))
            lines += details(r, verb=verb, entries=detail)
    for line in lines:  # the journal keeps a line whole
        parts = table.wrap(line, indent=6 if line.startswith("  ") else 4) if wrap else [line]
        for part in parts:
            out.write(part + "\n")


def is_journal(stream: TextIO) -> bool:
    """Is ``stream`` the systemd journal (``$JOURNAL_STREAM`` names its device and inode)?
    There a run keeps to one line per backend; the ``+``/``-`` lines need ``-v``."""
    want = os.environ.get("JOURNAL_STREAM", "")
    if not want:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def write_json(out: TextIO, doc: dict[str, Any]) -> None:
    """Pretty JSON, one document."""
    json.dump(doc, out, indent=2)
    out.write("\n")
