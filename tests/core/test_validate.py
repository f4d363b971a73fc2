"""Validation rules and the shrink guard."""

from __future__ import annotations

import pytest
from support.cfdata import CURRENT, OLD

from cfallow.errors import GuardRefused, ValidationError
from cfallow.fetch.guard import check_shrink
from cfallow.fetch.ranges import Ranges
from cfallow.fetch.validate import check_lists, parse_family, parse_text_list


def _ranges(nets: frozenset) -> Ranges:  # type: ignore[type-arg]
    return Ranges(
        frozenset(n for n in nets if n.version == 4),
        frozenset(n for n in nets if n.version == 6),
        "live",
    )


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("0.0.0.0/0", "default route"),
        ("0.0.0.0/8", "'this network'"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.1.0/24", "private"),
        ("100.64.0.0/10", "CGNAT"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("192.0.2.0/24", "documentation"),
        ("203.0.113.0/24", "documentation"),
        ("8.0.0.0/7", "shorter than /8"),
        ("9.0.0.0/8", None),
    ],
)
def test_ipv4_rules(entry: str, reason: str | None) -> None:
    if reason is None:
        assert parse_family([entry], 4, "t")
        return
    with pytest.raises(ValidationError, match=reason.replace("(", r"\(")):
        parse_family(["173.245.48.0/20", entry], 4, "t")


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("::/0", "default route"),
        ("::1/128", "loopback"),
        ("fc00::/7", "unique local"),
        ("fd00:1::/32", "unique local"),
        ("fe80::/10", "link-local"),
        ("ff02::/16", "multicast"),
        ("2001:db8::/32", "documentation"),
        ("2400::/12", "shorter than /16"),
        ("4000::/16", "outside global unicast"),
        ("::ffff:0:0/96", "IPv4-mapped"),
    ],
)
def test_ipv6_rules(entry: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        parse_family(["2400:cb00::/32", entry], 6, "t")


def test_lists_must_be_non_empty_and_bounded() -> None:
    v4 = parse_family(["173.245.48.0/20"], 4, "t")
    v6 = parse_family(["2400:cb00::/32"], 6, "t")
    check_lists(v4, v6)
    with pytest.raises(ValidationError, match="IPv4 list is empty"):
        check_lists(frozenset(), v6)
    with pytest.raises(ValidationError, match="IPv6 list is empty"):
        check_lists(v4, frozenset())
    many = parse_family([f"45.{i // 256}.{i % 256}.0/24" for i in range(1001)], 4, "t")
    with pytest.raises(ValidationError, match="more than 1000"):
        check_lists(many, v6)


def test_text_list_without_final_newline() -> None:
    assert len(parse_text_list("173.245.48.0/20\n103.21.244.0/22", 4, "t")) == 2
    with pytest.raises(ValidationError):
        parse_text_list("173.245.48.0/20\n131.0.72.0/222400:cb00::/32", 4, "t")


def test_guard_allows_the_2021_split_and_refuses_a_collapse() -> None:
    check_shrink(_ranges(CURRENT), _ranges(OLD), 0.5)  # one of 14 lost
    check_shrink(_ranges(OLD), _ranges(CURRENT), 0.5)  # a split is not a loss
    shrunk = _ranges(frozenset(sorted(CURRENT, key=str)[:2]) | frozenset(_ranges(CURRENT).ipv6))
    assert len(shrunk.ipv4) == 2
    with pytest.raises(GuardRefused, match="13 of 15 known IPv4"):
        check_shrink(shrunk, _ranges(CURRENT), 0.5)
    check_shrink(shrunk, None, 0.5)  # nothing known yet: nothing to compare
    check_shrink(shrunk, _ranges(CURRENT), 0.9)
