"""The pure core: CIDR parsing, the entry-level diff, the Plan value."""

from __future__ import annotations

import copy

import pytest
from netaddr import IPNetwork
from support.cfdata import ADDED_2021, CURRENT, OLD, REMOVED_2021

from cfallow.errors import ValidationError
from cfallow.fetch.ranges import Ranges
from cfallow.model import Desired, Plan, as_strings, canonical, diff, etag_of, make_plan, parse_cidr

N = IPNetwork


def test_diff_2021_change_is_entry_level() -> None:
    add, remove = diff(CURRENT, OLD)
    assert add == ADDED_2021
    assert remove == REMOVED_2021


def test_diff_does_not_hide_adjacent_blocks() -> None:
    # As an IPSet these two are the same /24; a firewall still needs the rewrite.
    desired = frozenset({N("10.0.0.0/24")})
    current = frozenset({N("10.0.0.0/25"), N("10.0.0.128/25")})
    add, remove = diff(desired, current)
    assert add == desired and remove == current


def test_covered_entries_are_neither_added_nor_removed() -> None:
    admin = frozenset({N("173.245.48.0/20")})
    add, remove = diff(CURRENT, frozenset(), covered=admin)
    assert N("173.245.48.0/20") not in add
    assert len(add) == len(CURRENT) - 1 and not remove


def test_canonical_merges_once() -> None:
    assert canonical([N("10.0.0.0/25"), N("10.0.0.128/25")]) == frozenset({N("10.0.0.0/24")})
    assert canonical(CURRENT) == CURRENT  # Cloudflare's list has no mergeable neighbours


def test_plan_value() -> None:
    plan = make_plan("x", CURRENT, OLD, drift=["ports 80 -> 80,443"])
    assert plan.changed
    assert plan.summary() == "x: +2 -1 =20 (drift: ports 80 -> 80,443)"
    assert plan.after == CURRENT
    assert not Plan("x", CURRENT).changed
    assert Plan("x", CURRENT, drift=("mode",)).changed


def test_ordering_ipv4_first_in_address_order() -> None:
    nets = as_strings(CURRENT)
    assert nets[0] == "103.21.244.0/22" and nets[14] == "198.41.128.0/17"
    assert nets[15] == "2400:cb00::/32" and nets[-1] == "2c0f:f248::/32"


@pytest.mark.parametrize(
    "text",
    [
        "10/8",
        "1.2.3/24",
        "01.2.3.4/32",
        "1.2.3.4",
        "1.2.3.0/33",
        "1.2.3.0/24 ",
        "1.2.3.0/255.255.255.0",
        "131.0.72.0/222400:cb00::/32",
        "set_real_ip_from <!DOCTYPE;",
        "2400:cb00::/129",
        "",
    ],
)
def test_parse_cidr_refuses(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_cidr(text)


def test_parse_cidr_refuses_host_bits_and_wrong_family() -> None:
    with pytest.raises(ValidationError, match="host bits"):
        parse_cidr("104.16.0.1/12")
    with pytest.raises(ValidationError, match="IPv4"):
        parse_cidr("2400:cb00::/32", 4)
    with pytest.raises(ValidationError, match="IPv6"):
        parse_cidr("104.16.0.0/12", 6)
    assert parse_cidr("2400:CB00::/32") == N("2400:cb00::/32")


@pytest.mark.parametrize("text", ["010.0.0.0/8", "01.2.3.0/24", "10.00.0.0/16", "1.2.3.00/32"])
def test_a_leading_zero_octet_is_refused_whatever_netaddr_does(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """Debian 12's netaddr 0.8 (the .deb runs on it) reads ``010.0.0.0/8`` as ``10.0.0.0/8``;
    netaddr 1.x refuses it. The refusal is cfallow's own, so it holds on either."""
    from netaddr import IPNetwork as RealNetwork

    def lenient(value: str, version: int | None = None) -> RealNetwork:
        addr, _, plen = value.partition("/")
        if version == 4:
            addr = ".".join(str(int(octet)) for octet in addr.split("."))
        return RealNetwork(f"{addr}/{plen}", version=version)

    monkeypatch.setattr("cfallow.model.IPNetwork", lenient)
    assert parse_cidr("10.0.0.0/8") == RealNetwork("10.0.0.0/8")  # the stand-in parses
    assert parse_cidr("2400:cb00::/32") == RealNetwork("2400:cb00::/32")
    with pytest.raises(ValidationError, match="not a CIDR"):
        parse_cidr(text)


def test_the_etag_travels_with_the_desired_list_and_never_changes_a_diff() -> None:
    ranges = Ranges(
        frozenset(n for n in CURRENT if n.version == 4),
        frozenset(n for n in CURRENT if n.version == 6),
        "live",
        etag="38f79d05",
    )
    desired = ranges.desired
    assert etag_of(desired) == "38f79d05" and etag_of(copy.deepcopy(desired)) == "38f79d05"
    assert desired == CURRENT and hash(desired) == hash(CURRENT)  # a set like any other
    assert etag_of(CURRENT) is None and etag_of(None) is None
    with pytest.raises(AttributeError):
        desired.etag = "other"  # type: ignore[misc]
    assert make_plan("x", desired, OLD) == make_plan("x", Desired(CURRENT, "other"), OLD)
