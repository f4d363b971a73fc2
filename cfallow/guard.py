"""The shrink guard: refuse a list that drops too much of the last-known-good one."""

from __future__ import annotations

from cfallow.errors import GuardRefused
from cfallow.ranges import Ranges
from cfallow.validate import coverage_lost


def check_shrink(new: Ranges, known: Ranges | None, max_shrink: float) -> None:
    """Per family, refuse when more than ``max_shrink`` of the known entries lose coverage.

    An entry split into smaller ones that still cover it is not lost; a range
    Cloudflare gives up is (and one such removal is well under the default 0.5).
    """
    if known is None:
        return
    for fam, old, cur in (("IPv4", known.ipv4, new.ipv4), ("IPv6", known.ipv6, new.ipv6)):
        lost = coverage_lost(old, cur)
        if old and len(lost) / len(old) > max_shrink:
            raise GuardRefused(
                f"refusing the new list: {len(lost)} of {len(old)} known {fam} ranges would "
                f"disappear (more than max_shrink={max_shrink:g}); "
                f"{len(cur)} {fam} ranges offered; use --force if this is really intended"
            )
