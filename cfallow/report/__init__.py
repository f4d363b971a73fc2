"""Text and JSON reports (the JSON shape is a stable contract)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

from cfallow.engine import BackendResult
from cfallow.fetch.ranges import Ranges
from cfallow.model import as_strings


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


def to_json(
    ranges: Ranges | None, results: Sequence[BackendResult], *, dry_run: bool
) -> dict[str, Any]:
    """The ``--json`` document for ``sync``, ``status`` and ``remove``."""
    return {
        "changed": any(r.changed for r in results),
        "dry_run": dry_run,
        "source": ranges.to_json() if ranges else None,
        "backends": [backend_json(r) for r in results],
    }


def source_line(ranges: Ranges) -> str:
    """``source: live URL etag=... ipv4=15 ipv6=7``."""
    where = ranges.url or "snapshot"
    return (
        f"source: {ranges.kind} {where} etag={ranges.etag or '-'} "
        f"ipv4={len(ranges.ipv4)} ipv6={len(ranges.ipv6)}"
    )


def summary(result: BackendResult, *, verb: str = "sync", error: bool = True) -> str:
    """``iptables: +2 -1 =20`` or ``iptables: error: ...`` (``iptables: failed`` without
    ``error``: the text report leaves the message to the one line on stderr).

    For ``remove`` what a plan deletes beyond entries is what removal means,
    not drift: ``iptables: +0 -22 =0 (IPv4: delete 1 jump(s) and chain CFALLOW (22 rules))``.
    """
    if result.error is not None:
        return f"{result.name}: error: {result.error}" if error else f"{result.name}: failed"
    plan = result.plan
    assert plan is not None
    if verb == "remove":
        line = f"{plan.backend}: +{len(plan.add)} -{len(plan.remove)} ={len(plan.kept)}"
        return line + (" (" + "; ".join(plan.drift) + ")" if plan.drift else "")
    return plan.summary()


def write_text(
    out: TextIO,
    ranges: Ranges | None,
    results: Sequence[BackendResult],
    *,
    dry_run: bool,
    verb: str = "sync",
) -> None:
    """Human report: the source, then per backend its ``+``/``-`` lines and a summary."""
    if ranges is not None:
        out.write(source_line(ranges) + "\n")
    for r in results:
        plan = r.plan
        if plan is not None and plan.changed:
            state = "would change (dry run)" if dry_run else "changed"
            if verb == "status":
                state = "differs from the desired list"
            elif verb == "remove":
                state = "would remove (dry run)" if dry_run else "removed"
            out.write(f"{r.name}: {state}\n")
            for net in as_strings(plan.add):
                out.write(f"  + {net}\n")
            for net in as_strings(plan.remove):
                out.write(f"  - {net}\n")
            mark = "x" if verb == "remove" else "~"  # removal deletes; it does not drift
            for item in plan.drift:
                out.write(f"  {mark} {item}\n")
        for note in plan.notes if plan else ():
            out.write(f"  note: {note}\n")
        out.write(summary(r, verb=verb, error=False) + "\n")


def write_json(out: TextIO, doc: dict[str, Any]) -> None:
    """Pretty JSON, one document."""
    json.dump(doc, out, indent=2)
    out.write("\n")
