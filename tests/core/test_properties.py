"""Property tests: whatever a source sends, the parser and validator either refuse it
with the project's own error or accept a list that obeys every rule.

The rules are checked by an independent oracle (tests/support/proof/oracle.py, built on
the standard library's ``ipaddress``), not by calling the validator again.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer
from support.proof.oracle import MAX_ENTRIES, is_grey, lists_ok, parse_entry, same
from support.proof.strategies import api_doc, clean_list, entry, junk_entry

from cfallow.cli.config import SourceConfig
from cfallow.errors import RangesError, ValidationError
from cfallow.fetch.sources import fetch_live, parse_api
from cfallow.fetch.state import LKG_FILE, State
from cfallow.fetch.validate import check_lists, parse_family, parse_text_list
from cfallow.model import parse_cidr

FAST = settings(max_examples=200, deadline=None, database=None)


@FAST
@given(entry, st.sampled_from([4, 6, None]))
def test_parse_cidr_accepts_only_real_cidrs(text: str, version: int | None) -> None:
    try:
        net = parse_cidr(text, version)
    except ValidationError:
        return
    assert net == net.cidr, "accepted value is not canonical"
    assert version in (None, net.version)
    ref = ipaddress.ip_network(text, strict=True)  # raises if text is no CIDR or has host bits
    assert (ref.version, int(ref.network_address), ref.prefixlen) == (
        net.version,
        net.first,
        net.prefixlen,
    )


@FAST
@given(st.lists(junk_entry, max_size=12), st.sampled_from([4, 6]))
def test_parse_family_random_entries(entries: list[Any], version: int) -> None:
    refs = [parse_entry(e, version) for e in entries]
    try:
        got = parse_family(entries, version, "t")
    except ValidationError:
        # Refusing is right if an entry breaks a rule; tolerable for a grey block or an
        # odd spelling (zero-padded prefix); wrong for a plain canonical public CIDR.
        assert any(r is None or is_grey(r) or e != str(r) for e, r in zip(entries, refs)), (
            f"refused a valid list {entries!r}"
        )
        return
    event("accepted")
    assert all(r is not None for r in refs), f"accepted a bad entry in {entries!r}"
    assert same(got, [r for r in refs if r is not None])


@settings(max_examples=150, deadline=None, database=None)
@given(st.data(), st.sampled_from([4, 6]), st.booleans())
def test_one_bad_entry_refuses_the_whole_list(data: st.DataObject, version: int, bad: bool) -> None:
    entries = data.draw(clean_list(version, bad=bad))
    if not bad:
        got = parse_family(entries, version, "t")
        assert same(got, [parse_entry(e, version) for e in entries])  # type: ignore[misc]
        return
    with pytest.raises(ValidationError):
        parse_family(entries, version, "t")


@FAST
@given(st.lists(entry | st.just("") | st.just("   "), max_size=10), st.data())
def test_text_lists_glued_or_padded(lines: list[str], data: st.DataObject) -> None:
    seps = data.draw(st.lists(st.sampled_from(["\n", "\r\n", "", " ", "\t"]), min_size=len(lines)))
    body = "".join(line + sep for line, sep in zip(lines, seps))
    for version in (4, 6):
        try:
            got = parse_text_list(body, version, "t")
        except ValidationError:
            continue
        refs = [parse_entry(tok, version) for tok in body.split()]
        assert all(r is not None for r in refs), f"accepted a bad line in {body!r}"
        assert same(got, [r for r in refs if r is not None])


@FAST
@given(st.text(max_size=200))
def test_text_lists_random_text(body: str) -> None:
    for version in (4, 6):
        try:
            got = parse_text_list(body, version, "t")
        except ValidationError:
            continue
        refs = [parse_entry(tok, version) for tok in body.split()]
        assert all(r is not None for r in refs) and same(got, [r for r in refs if r])


def _expected_api(doc: Any, china: bool) -> tuple[set[Any], set[Any]] | None:
    """What the rules say an API document yields, or None if it must be refused."""
    if not isinstance(doc, dict) or doc.get("success") is not True:
        return None
    if doc.get("errors") not in ([], None) or not isinstance(doc.get("result"), dict):
        return None
    res = doc["result"]
    fams: dict[int, list[Any]] = {4: [], 6: []}
    for version, key in ((4, "ipv4_cidrs"), (6, "ipv6_cidrs")):
        if not isinstance(res.get(key), list):
            return None
        fams[version] += [(e, version) for e in res[key]]
    if china:
        if not isinstance(res.get("jdcloud_cidrs"), list):
            return None
        for e in res["jdcloud_cidrs"]:
            v = 4 if isinstance(e, str) and ":" not in e else 6
            fams[v].append((e, v))
    nets = {v: [parse_entry(e, ver) for e, ver in items] for v, items in fams.items()}
    if any(n is None for ns in nets.values() for n in ns):
        return None
    ipv4, ipv6 = set(nets[4]), set(nets[6])
    return (ipv4, ipv6) if lists_ok(ipv4, ipv6) else None  # type: ignore[arg-type]


@settings(max_examples=250, deadline=None, database=None)
@given(api_doc() | st.dictionaries(st.text(max_size=8), st.just(1)), st.booleans())
def test_api_documents(doc: Any, china: bool) -> None:
    body = json.dumps(doc)
    expected = _expected_api(doc, china)
    try:
        ipv4, ipv6, etag = parse_api(body, "u", china)
    except ValidationError:
        event("refused")
        return
    event("accepted")
    assert expected is not None, f"accepted {body}"
    assert same(ipv4, expected[0]) and same(ipv6, expected[1])
    assert etag is None or isinstance(etag, str)


@settings(max_examples=100, deadline=None, database=None)
@given(st.data())
def test_valid_api_documents_are_accepted(data: st.DataObject) -> None:
    v4, v6 = data.draw(clean_list(4)), data.draw(clean_list(6))
    doc = {"result": {"ipv4_cidrs": v4, "ipv6_cidrs": v6, "etag": "e"}, "success": True}
    ipv4, ipv6, etag = parse_api(json.dumps(doc), "u", False)
    assert same(ipv4, [parse_entry(e, 4) for e in v4])  # type: ignore[misc]
    assert same(ipv6, [parse_entry(e, 6) for e in v6]) and etag == "e"  # type: ignore[misc]


@settings(max_examples=25, deadline=None, database=None)
@given(st.integers(MAX_ENTRIES - 15, MAX_ENTRIES + 15), st.integers(1, 40))
def test_size_cap_boundary(total: int, n6: int) -> None:
    v4 = [f"1.{i // 256}.{i % 256}.0/24" for i in range(total - n6)]
    v6 = [f"2400:cb00:{i:x}::/48" for i in range(n6)]
    ipv4, ipv6 = parse_family(v4, 4, "t"), parse_family(v6, 6, "t")
    if total <= MAX_ENTRIES:
        check_lists(ipv4, ipv6)
    else:
        with pytest.raises(ValidationError, match="more than 1000"):
            check_lists(ipv4, ipv6)


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.binary(max_size=300) | api_doc().map(lambda d: json.dumps(d).encode()),
    st.sampled_from(["application/json", "text/plain", "text/html", ""]),
)
def test_random_bytes_over_http(httpserver: HTTPServer, body: bytes, ctype: str) -> None:
    """The real fetch path (API, then the text lists), every URL answering ``body``."""
    httpserver.clear()
    for path in ("/api", "/v4", "/v6"):
        httpserver.expect_request(path).respond_with_data(body, content_type=ctype)
    base = httpserver.url_for("").rstrip("/")
    cfg = SourceConfig(f"{base}/api", (f"{base}/v4", f"{base}/v6"), timeout=2, attempts=1)
    try:
        ranges = fetch_live(cfg)
    except RangesError:
        return
    expected = _expected_api(json.loads(body), False)
    assert expected is not None and same(ranges.ipv4, expected[0]), body


@settings(max_examples=80, deadline=None, database=None)
@given(
    st.binary(max_size=200)
    | st.builds(lambda d: json.dumps(d).encode(), api_doc())
    | st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(st.text(max_size=5), junk_entry))
)
def test_state_file_bytes_never_raise(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    state_dir = tmp_path_factory.mktemp("state")
    (state_dir / LKG_FILE).write_bytes(raw)
    known = State(state_dir).load()
    if known is not None:
        assert known.ipv4 and known.ipv6 and len(known.ipv4 | known.ipv6) <= MAX_ENTRIES
        doc = json.loads(raw)
        assert same(known.ipv4, [parse_entry(e, 4) for e in doc["ipv4"]])  # type: ignore[misc]


@pytest.mark.parametrize("text", ["173.245.48.0/\uff12\uff10", "173.245.48.0/\u0662\u0660"])
def test_non_ascii_prefix_digits_are_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_cidr(text, 4)


def test_deeply_nested_api_body_is_refused() -> None:
    with pytest.raises(ValidationError):
        parse_api("[" * 100_000, "u", False)


def test_deeply_nested_state_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / LKG_FILE).write_text("[" * 100_000)
    assert State(tmp_path).load() is None
