"""The safety guards: refuse a list that shrinks the known one, grows the accepted one, or
covers more than a fixed ceiling of the address space."""

from __future__ import annotations

from netaddr import IPSet

from cfallow.errors import GuardRefused
from cfallow.fetch.ranges import Ranges
from cfallow.fetch.validate import coverage_lost
from cfallow.model import Networks

_FORCE = "use --force if this is really intended"
_ACCEPT = "review it with 'cfallow accept --dry-run', accept it with 'cfallow accept' (or --force)"


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

    ``baseline`` is the list an operator last accepted (``--force`` or ``cfallow accept``)
    together with the bundled snapshot, or the snapshot alone: never the last-known-good
    list, so growth is bounded since the last acceptance however many fetches it is spread
    over (a source that grows just under the limit each time gets nowhere). A *new* range
    is one whose addresses the baseline does not already cover entirely. Refused: any new
    range shorter than ``min_new_prefix[version]``, and new coverage of more than
    ``max_growth`` times the baseline's (in addresses). Cloudflare's largest real step,
    adding ``104.16.0.0/12`` in 2014, was 4.9 times the IPv4 coverage before it.
    """
    what = "bundled snapshot" if baseline.kind == "bundled" else "accepted list with the snapshot"
    for fam, version, old, cur in _families(new, baseline):
        covered = IPSet(old)
        added = [n for n in sorted(cur) if not IPSet([n]).issubset(covered)]
        wide = [n for n in added if n.prefixlen < min_new_prefix[version]]
        if wide:
            raise GuardRefused(
                f"refusing the new list: {len(wide)} new {fam} range(s) wider than "
                f"/{min_new_prefix[version]} (first: {wide[0]}; min_new_prefix_v{version}="
                f"{min_new_prefix[version]}) beyond the {what}; {_ACCEPT}"
            )
        grown = (IPSet(added) - covered).size
        have = covered.size
        if have and grown / have > max_growth:
            raise GuardRefused(
                f"refusing the new list: it adds {grown:,} {fam} addresses, {grown / have:,.1f} "
                f"times the {have:,} of the {what} (more than max_growth={max_growth:g}); "
                f"{_ACCEPT}"
            )


def check_ceiling(new: Ranges, ceiling_prefix: dict[int, int]) -> None:
    """Per family, refuse a list covering more addresses than one ``/ceiling_prefix[v]``.

    Neither ``--force`` nor ``cfallow accept`` lifts it: only the configuration does.
    """
    for fam, version, _, cur in _families(new, new):
        bits = 32 if version == 4 else 128
        limit = 1 << (bits - ceiling_prefix[version])
        total = IPSet(cur).size
        if total > limit:
            raise GuardRefused(
                f"refusing the list: it covers {total:,} {fam} addresses, more than the "
                f"ceiling of {limit:,} (one /{ceiling_prefix[version]}, ceiling_prefix_v{version}"
                f"={ceiling_prefix[version]}); neither --force nor 'cfallow accept' lifts it"
            )
