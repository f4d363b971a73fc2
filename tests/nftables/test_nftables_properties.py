"""Property: the nftables backend's pure diff (sets mode), applied to the sets it read, gives
exactly the desired elements: element deletes and adds only, never a flush, and a second
diff is empty."""

from __future__ import annotations

import re
from typing import Any

from cfallow.backends.nftables.apply import Seen
from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import IPNetwork
from support.cfdata import CURRENT, OLD

from cfallow.backend import Context, build
from cfallow.model import canonical, family
from cfallow.netfilter.host import NftSet

EXTRA = {IPNetwork("198.18.0.0/24"), IPNetwork("2001:db8::/48")}
LINE = re.compile(r"^(add|delete) element inet filter (cloudflare_v[46]) \{ (.*) \}$")


def _seen(v4: frozenset[IPNetwork], v6: frozenset[IPNetwork]) -> Seen:
    def one(name: str, kind: str, nets: frozenset[IPNetwork]) -> NftSet:
        return NftSet("inet", "filter", name, kind, ("interval",), nets, "cfallow")  # its mark

    sets = (one("cloudflare_v4", "ipv4_addr", v4), one("cloudflare_v6", "ipv6_addr", v6))
    return Seen(None, True, sets, (), None)


def _apply(seen: Seen, script: str) -> dict[str, set[IPNetwork]]:
    sets = {s.name: set(s.elements) for s in seen.sets}
    for line in script.splitlines():
        m = LINE.match(line)
        assert m, f"not an element change: {line!r}"
        nets = {IPNetwork(c) for c in m.group(3).split(", ")}
        if m.group(1) == "delete":
            assert nets <= sets[m.group(2)], "deletes an element the set does not hold"
            sets[m.group(2)] -= nets
        else:
            assert not nets & sets[m.group(2)], "adds an element already there"
            sets[m.group(2)] |= nets
    return sets


era = st.sampled_from([CURRENT, OLD])
subset = st.frozensets(st.sampled_from(sorted(CURRENT | OLD | EXTRA, key=str)))


@settings(max_examples=200, deadline=None)
@given(era, subset, subset)
def test_plan_applied_to_the_sets_gives_exactly_the_desired_elements(
    base: frozenset[IPNetwork], keep: frozenset[IPNetwork], wanted: frozenset[IPNetwork]
) -> None:
    backend: Any = build(
        "nftables",
        {
            "mode": "sets",
            "table": "inet filter",
            "host_check": False,
            "file": "/nonexistent/cfallow.nft",
        },
        Context(),
    )
    now = (base | EXTRA) & keep  # one era's ranges (an interval set holds no overlaps)
    seen = _seen(family(now, 4), family(now, 6))
    desired = canonical(wanted)
    plan = backend.diff(seen, desired)
    assert backend.diff(seen, desired) == plan  # pure
    script = "".join(s.script for s in plan.steps)
    after = _apply(seen, script)
    assert after["cloudflare_v4"] == family(desired, 4)
    assert after["cloudflare_v6"] == family(desired, 6)
    assert plan.add == desired - now and plan.remove == now - desired
    again = backend.diff(
        _seen(frozenset(after["cloudflare_v4"]), frozenset(after["cloudflare_v6"])), desired
    )
    assert not again.add and not again.remove
