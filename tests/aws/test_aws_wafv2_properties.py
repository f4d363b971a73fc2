"""Property: the aws-wafv2 pure plan, applied to the sets it read, gives exactly the wanted sets.

Random sets of cfallow's (either family present or not, any addresses) and
random desired lists: after the plan each family's set holds exactly the
desired ranges of that family (a family no longer wanted keeps an empty set,
which a web ACL may reference), nothing is written when nothing differs, and
removal leaves no set of cfallow's.
"""

from __future__ import annotations

from cfallow.backends.aws import wafv2_sets as ws
from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import IPNetwork
from support.cfdata import CURRENT, OLD

POOL = sorted(CURRENT | OLD | {IPNetwork("198.18.0.0/24")}, key=str)
PREFIX = "cfallow-cloudflare"


def family_set(version: int) -> st.SearchStrategy[ws.IpSet | None]:
    family = ws.FAMILIES[version]
    addresses = st.frozensets(st.sampled_from([str(n) for n in POOL if n.version == version]))
    return st.none() | addresses.map(
        lambda a: ws.IpSet(
            ws.set_name(PREFIX, family), f"id-{family}", f"arn-{family}", family, a, "t1"
        )
    )


def apply(found: dict[str, ws.IpSet], changes: list[ws.SetChange]) -> dict[str, frozenset[str]]:
    sets = {f: s.addresses for f, s in found.items()}
    for c in changes:
        assert c.name == ws.set_name(PREFIX, c.family)
        if c.delete:
            del sets[c.family]
        else:
            assert (c.set_id is None) == (c.family not in found)
            if c.set_id is not None:
                assert c.lock == found[c.family].lock  # the token of the read
            sets[c.family] = frozenset(c.addresses)
    return sets


@settings(max_examples=300, deadline=None)
@given(family_set(4), family_set(6), st.none() | st.frozensets(st.sampled_from(POOL)))
def test_the_plan_gives_exactly_the_desired_sets(
    v4: ws.IpSet | None, v6: ws.IpSet | None, desired: frozenset[IPNetwork] | None
) -> None:
    found = {s.family: s for s in (v4, v6) if s is not None}
    changes = ws.plan_sets(found, desired, PREFIX)
    assert changes == ws.plan_sets(found, desired, PREFIX)
    after = apply(found, changes)
    if desired is None:
        assert after == {}
        return
    for version, family in ws.FAMILIES.items():
        want = frozenset(str(n) for n in desired if n.version == version)
        if want or family in found:
            assert after[family] == want
        else:
            assert family not in after
    if all(found.get(f) and found[f].addresses == after[f] for f in after) and len(after) == len(
        found
    ):
        assert changes == []
