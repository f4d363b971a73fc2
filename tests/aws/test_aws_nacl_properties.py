"""Property: the aws-nacl pure diff, applied one write at a time, never drops a kept range.

Random ACLs (the admin's entries above the band and outbound, cfallow's from an
earlier sync with other ranges, ports and layout) and random desired lists.
Each planned write is applied to a pure model of the ACL and the ACL judged
after every one by an evaluator written independently of the backend
(tests/support/aws/nacl.py): a range wanted before and after is let in at
every step, the end state lets in exactly the desired ranges on the ports,
the admin's entries never change, and every entry cfallow makes is in its band.
"""

from __future__ import annotations

from typing import Any

from cfallow.backends.aws import nacl_rules as nr
from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import IPNetwork
from support.aws.nacl import Entry, verdict
from support.cfdata import CURRENT, OLD

from cfallow.section import PortRange

BAND = nr.Band(1, 99)
POOL = sorted(CURRENT | OLD, key=lambda n: (n.version, int(n.network)))
PORT_SETS = st.sampled_from([(443,), (80, 443), (443, 8443), (8000,)])
LAYOUTS = st.sampled_from(["per-port", "span"])
OUTSIDE = {4: "198.51.100.77", 6: "2001:db8::77"}


def as_tuple(e: nr.Entry) -> Entry:
    s = e.spec
    return (e.number, s.egress, s.protocol, s.first, s.last, s.cidr, "allow" if s.allow else "deny")


def ports_of(ports: tuple[int, ...]) -> tuple[PortRange, ...]:
    return tuple(PortRange(p, p) for p in ports)


def apply(acl: nr.Acl, ch: nr.AclChange, check: Any) -> nr.Acl:
    entries = {(e.number, e.spec.egress): e for e in acl.entries}
    phases = [("create", ch.create), ("delete", ch.delete)]
    if ch.delete_first:
        phases.reverse()
    for op, items in phases:
        for e in items:
            key = (e.number, e.spec.egress)
            if op == "create":
                assert key not in entries, f"rule {e.number} taken twice"
                assert e.number in BAND
                entries[key] = e
            else:
                entries.pop(key)
            check(sorted(as_tuple(x) for x in entries.values()))
    tag = ch.tag or acl.tag
    return nr.Acl(acl.acl_id, tuple(sorted(entries.values())), None if ch.untag else tag, 0)


def sync(acl: nr.Acl, desired: frozenset[IPNetwork], ports: Any, layout: str, check: Any) -> Any:
    allows, denies = nr.wanted(desired, ports_of(ports), "tcp", layout)
    try:
        ch = nr.change(acl, "t", BAND, allows, denies)
    except nr.Unplaceable:
        return None
    return apply(acl, ch, check)


admin = st.lists(
    st.tuples(st.integers(100, 32766), st.booleans(), st.sampled_from(POOL), st.booleans()),
    max_size=6,
    unique_by=lambda t: (t[0], t[1]),
)


@settings(max_examples=150, deadline=None)
@given(
    admin,
    st.frozensets(st.sampled_from(POOL)),
    PORT_SETS,
    LAYOUTS,
    st.frozensets(st.sampled_from(POOL), min_size=1),
    PORT_SETS,
    LAYOUTS,
)
def test_every_write_keeps_the_kept_ranges_and_the_end_is_exact(
    theirs: list[tuple[int, bool, IPNetwork, bool]],
    before: frozenset[IPNetwork],
    ports0: tuple[int, ...],
    layout0: str,
    after: frozenset[IPNetwork],
    ports1: tuple[int, ...],
    layout1: str,
) -> None:
    admins = tuple(
        nr.Entry(n, nr.Spec(egress, "6", 22, 22, str(net), allow))
        for n, egress, net, allow in theirs
    )
    acl = nr.Acl("acl-0", admins, None, 0)
    start = sync(acl, before, ports0, layout0, lambda _: None) if before else acl
    if start is None:
        return
    # the plan is pure
    allows, denies = nr.wanted(after, ports_of(ports1), "tcp", layout1)
    try:
        assert nr.change(start, "t", BAND, allows, denies) == nr.change(
            start, "t", BAND, allows, denies
        )
    except nr.Unplaceable:
        return
    kept_ports = set(ports0) & set(ports1)

    def check(entries: list[Entry]) -> None:
        for net in before & after:
            for port in kept_ports:
                assert verdict(entries, str(net[1]), port) == "allow", (net, port)

    end = sync(start, after, ports1, layout1, check)
    assert end is not None
    final = [as_tuple(e) for e in end.entries]
    assert {e for e in end.entries if e.number >= 100 or e.spec.egress} == set(admins)
    for port in ports1:
        for net in after:
            assert verdict(final, str(net[1]), port) == "allow"
            assert verdict(final, str(net[-1]), port) == "allow"
        for version in {n.version for n in after}:
            assert verdict(final, OUTSIDE[version], port) == "deny"
    removed = sync(end, frozenset(), ports1, layout1, lambda _: None)
    gone = apply(end, nr.removal(end, "t"), lambda _: None)
    assert set(gone.entries) == set(admins) and gone.tag is None
    assert removed is not None
