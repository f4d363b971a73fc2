"""The safety guards: refuse a list that shrinks or grows the known one too much."""

from __future__ import annotations

from netaddr import IPSet

from cfallow.errors import GuardRefused
from cfallow.model import Networks
from cfallow.ranges import Ranges
from cfallow.validate import coverage_lost

_FORCE = "use --force if this is really intended"


def _families(new: Ranges, known: Ranges) -> tuple[tuple[str, int, Networks, Networks], ...]:
    return (("IPv4", 4, known.ipv4, new.ipv4), ("IPv6", 6, known.ipv6, new.ipv6))


def check_shrink(new: Ranges, known: Ranges | None, max_shrink: float) -> None:
    """Per family, refuse when more than ``max_shrink`` of the known entries lose coverage.

    An entry split into smaller ones that still cover it is not lost; a range
    Cloudflare gives up is (and one such removal is well under the default 0.5).
    """
    if known is None:
        return
    for fam, _, old, cur in _families(new, known):
        lost = coverage_lost(old, cur)
        if old and len(lost) / len(old) > max_shrink:
            raise GuardRefused(
                f"refusing the new list: {len(lost)} of {len(old)} known {fam} ranges would "
                f"disappear (more than max_shrink={max_shrink:g}); "
                f"{len(cur)} {fam} ranges offered; {_FORCE}"
            )


def check_growth(
    new: Ranges, baseline: Ranges, max_growth: float, min_new_prefix: dict[int, int]
) -> None:
    """Per family, refuse a list that adds too much to ``baseline``.

    ``baseline`` is the last-known-good list with the bundled snapshot (or the snapshot alone). A
    *new* range is one whose addresses the baseline does not already cover
    entirely. Refused: any new range shorter than ``min_new_prefix[version]``,
    and new coverage of more than ``max_growth`` times the baseline's (in
    addresses). Cloudflare's largest real step, adding ``104.16.0.0/12`` in
    2014, was 4.9 times the IPv4 coverage before it.
    """
    for fam, version, old, cur in _families(new, baseline):
        covered = IPSet(old)
        added = [n for n in sorted(cur) if not IPSet([n]).issubset(covered)]
        wide = [n for n in added if n.prefixlen < min_new_prefix[version]]
        if wide:
            raise GuardRefused(
                f"refusing the new list: {len(wide)} new {fam} range(s) wider than "
                f"/{min_new_prefix[version]} (first: {wide[0]}; min_new_prefix_v{version}="
                f"{min_new_prefix[version]}); {_FORCE}"
            )
        grown = (IPSet(added) - covered).size
        have = covered.size
        if have and grown / have > max_growth:
            what = "bundled snapshot" if baseline.kind == "bundled" else "last-known-good list"
            raise GuardRefused(
                f"refusing the new list: it adds {grown:,} {fam} addresses, {grown / have:,.1f} "
                f"times the {have:,} of the {what} (more than max_growth={max_growth:g}); "
                f"{_FORCE}"
            )
