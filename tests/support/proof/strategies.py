"""Hypothesis strategies: CIDR-ish text, lists, Cloudflare-API-shaped documents."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import strategies as st

from support.proof.oracle import is_grey, parse_entry

ALPHABET = "0123456789abcdefABCDEF:./ \t%-x\n"
BITS = {4: 32, 6: 128}
_V6_GLOBAL = (0x2000 << 112, (0x4000 << 112) - 1)

# Any JSON value (NaN and infinities too: Python's json reads them).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)

# Arbitrary text, non-ASCII digits included (str.isdigit() takes them; a CIDR does not).
_chars = st.characters(exclude_categories=["Cs"]) | st.sampled_from("0123456789")
any_text = st.text(_chars, max_size=16)
unicode_digits = st.text(st.characters(categories=["Nd"]), min_size=1, max_size=3)


@st.composite
def net_text(draw: st.DrawFn, version: int | None = None, host_bits: bool = True) -> str:
    """``addr/prefix`` text, mostly well formed, sometimes with host bits set."""
    v = version or draw(st.sampled_from([4, 6]))
    bits = BITS[v]
    addr = draw(
        st.integers(*_V6_GLOBAL) | st.integers(0, 2**bits - 1)
        if v == 6
        else st.integers(0, 2**bits - 1)
    )
    plen = draw(st.integers(8 if v == 4 else 16, bits) | st.integers(0, bits))
    if not (host_bits and draw(st.booleans())):
        addr &= ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)
    return f"{ipaddress.ip_address(addr) if v == 4 else ipaddress.IPv6Address(addr)}/{plen}"


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A CIDR with one to three characters inserted, deleted or replaced."""
    text = draw(net_text())
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        c = draw(st.sampled_from(ALPHABET))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        if op == "insert":
            text = text[:i] + c + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1 :]
        else:
            text = text[:i] + c + text[i + 1 :]
    return text


@st.composite
def odd_forms(draw: st.DrawFn) -> str:
    """Spellings a sloppy parser might take: upper case, zero padding, netmasks, zones."""
    text = draw(net_text(host_bits=False))
    addr, _, plen = text.partition("/")
    form = draw(
        st.sampled_from(
            [
                "upper",
                "pad-prefix",
                "pad-octet",
                "netmask",
                "zone",
                "mapped",
                "no-prefix",
                "space",
                "digits",
            ]
        )
    )
    if form == "upper":
        return text.upper()
    if form == "pad-prefix":
        return f"{addr}/{'0' * draw(st.integers(1, 3))}{plen}"
    if form == "pad-octet":
        return "0" + text
    if form == "netmask" and ":" not in addr:
        return f"{addr}/{ipaddress.ip_network(text).netmask}"
    if form == "zone" and ":" in addr:
        return f"{addr}%eth0/{plen}"
    if form == "mapped" and ":" not in addr:
        return f"::ffff:{addr}/{96 + int(plen)}"
    if form == "no-prefix":
        return addr
    if form == "digits":
        return f"{addr}/{draw(unicode_digits)}"
    return f" {text}"


entry = net_text() | mutated() | odd_forms() | st.text(ALPHABET, max_size=40) | any_text
junk_entry = entry | st.integers() | st.none() | st.lists(st.text(max_size=3), max_size=2)


def clean(version: int) -> st.SearchStrategy[str]:
    """Entries the rules accept, away from grey blocks: a real list looks like this."""
    bits = BITS[version]
    # Leading octet/hextet drawn away from special space, so little is filtered.
    lead = (
        st.sampled_from([o for o in range(1, 224) if o not in (10, 100, 127, 169, 172, 192, 198)])
        if version == 4
        else st.integers(0x2003, 0x3FFE)
    )

    def text(first: int, rest: int, plen: int) -> str:
        addr = (first << (bits - (8 if version == 4 else 16))) | rest
        addr &= ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)
        return (
            f"{ipaddress.ip_address(addr) if version == 4 else ipaddress.IPv6Address(addr)}/{plen}"
        )

    def ok(text: str) -> bool:
        net = parse_entry(text, version)
        return net is not None and not is_grey(net)

    prefixes = st.integers(8, 32) if version == 4 else st.integers(16, 64) | st.integers(16, 128)
    rest = st.integers(0, 2 ** (bits - (8 if version == 4 else 16)) - 1)
    return st.builds(text, lead, rest, prefixes).filter(ok)


@st.composite
def clean_list(draw: st.DrawFn, version: int, bad: bool = False) -> list[Any]:
    """A valid family list; with ``bad``, one entry the rules refuse put anywhere in it."""
    items: list[Any] = draw(st.lists(clean(version), min_size=1, max_size=12))
    if bad:
        wrong = draw(junk_entry.filter(lambda e: parse_entry(e, version) is None))
        items.insert(draw(st.integers(0, len(items))), wrong)
    return items


def family(version: int) -> st.SearchStrategy[Any]:
    good = clean_list(version)
    return (
        good
        | good
        | good
        | clean_list(version, bad=True)
        | st.lists(junk_entry, max_size=6)
        | json_values
    )


@st.composite
def api_doc(draw: st.DrawFn) -> dict[str, Any]:
    """Cloudflare-API-shaped documents, mostly right, each part possibly wrong."""
    result: dict[str, Any] = {
        "ipv4_cidrs": draw(family(4)),
        "ipv6_cidrs": draw(family(6)),
        "etag": draw(st.text(max_size=8) | json_values),
    }
    if draw(st.booleans()):
        mixed = draw(clean_list(4)) + draw(clean_list(6))
        result["jdcloud_cidrs"] = draw(st.permutations(mixed) | family(4) | json_values)
    for key in list(result):
        if draw(st.integers(0, 9)) == 0:
            del result[key]
    doc: dict[str, Any] = {
        "result": result if draw(st.integers(0, 9)) else draw(json_values),
        "success": True if draw(st.integers(0, 5)) else draw(json_values),
        "errors": [] if draw(st.integers(0, 5)) else draw(json_values),
        "messages": [],
    }
    for key in list(doc):
        if draw(st.integers(0, 14)) == 0:
            del doc[key]
    return doc
