"""The growth guard and the transition-space refusals, end to end through the CLI.

A hostile list that only adds (215 public /8s, 84 % of IPv4) passes validation
and the shrink guard; the growth guard refuses it against the accepted list (the
bundled snapshot until an operator accepts another: see test_ratchet.py). Cloudflare's real changes
pass with the defaults: the 2021-04-08 change (fixtures) both ways, and the
older steps. The lists before 2021 other than the fixtures are the ones public
code of the time carried (2013: 14 IPv4 ranges; 2014: + 104.16.0.0/12).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support.cli_helpers import Result, fixture_text, run_proc, write_config

from cfallow.errors import ValidationError
from cfallow.fetch.validate import parse_family

API = "/client/v4/ips"
CURRENT = json.loads(fixture_text("api-ips.json"))["result"]
OLD_2021 = json.loads(fixture_text("api-ips-2021-03.json"))["result"]
V4_2013 = [
    "204.93.240.0/24",
    "204.93.177.0/24",
    "199.27.128.0/21",
    "173.245.48.0/20",
    "103.21.244.0/22",
    "103.22.200.0/22",
    "103.31.4.0/22",
    "141.101.64.0/18",
    "108.162.192.0/18",
    "190.93.240.0/20",
    "188.114.96.0/20",
    "197.234.240.0/22",
    "198.41.128.0/17",
    "162.158.0.0/15",
]
V4_2014 = [*V4_2013, "104.16.0.0/12"]
V6_EARLY = ["2400:cb00::/32", "2606:4700::/32", "2803:f800::/32", "2405:b500::/32"]
SPECIAL_FIRST_OCTETS = {0, 10, 100, 127, 169, 172, 192, 198, 203}
PUBLIC_EIGHTS = [f"{i}.0.0.0/8" for i in range(224) if i not in SPECIAL_FIRST_OCTETS]


def api(v4: list[str], v6: list[str]) -> str:
    return json.dumps(
        {
            "result": {"ipv4_cidrs": v4, "ipv6_cidrs": v6, "etag": "test"},
            "success": True,
            "errors": [],
            "messages": [],
        }
    )


class Box:
    def __init__(self, tmp: Path, server: HTTPServer) -> None:
        self.tmp, self.server = tmp, server
        self.target = tmp / "target.json"
        self.configure()

    def configure(self, **source: object) -> None:
        write_config(
            self.tmp / "config.toml",
            self.server.url_for("").rstrip("/"),
            backends=f'[backends.fake]\npath = "{self.target}"\n',
            attempts=1,
            **source,
        )

    def sync(self, body: str, *args: str) -> Result:
        self.server.clear()
        self.server.expect_request(API).respond_with_data(body, content_type="application/json")
        return run_proc(
            "--config",
            str(self.tmp / "config.toml"),
            "--state-dir",
            str(self.tmp / "st"),
            "sync",
            *args,
        )

    def owned(self) -> set[str]:
        return set(json.loads(self.target.read_text())["owned"])

    def refused(self, r: Result, *expect: str) -> str:
        """Exit 4, one line on stderr naming ``expect`` (and, when a last-known-good list
        exists, the line saying the backends were held at it); returns the first line."""
        assert r.rc == 4, r.err
        assert "Traceback" not in r.err
        line, *held = r.err.splitlines()
        assert len(held) <= 1, r.err
        assert all("backends held at the last-known-good list of" in h for h in held), r.err
        for text in expect:
            assert text in line, line
        return line


@pytest.fixture
def box(tmp_path: Path, httpserver: HTTPServer) -> Box:
    return Box(tmp_path, httpserver)


def test_215_public_eights_and_6to4_are_refused_exit_4_one_line(box: Box) -> None:
    assert len(PUBLIC_EIGHTS) == 215
    assert box.sync(fixture_text("api-ips.json")).rc == 0
    before = box.target.read_bytes()
    lkg = (box.tmp / "st" / "last-known-good.json").read_bytes()
    hostile = api([*CURRENT["ipv4_cidrs"], *PUBLIC_EIGHTS], [*CURRENT["ipv6_cidrs"], "2002::/16"])
    box.refused(box.sync(hostile), "'2002::/16' overlaps 6to4 transition space 2002::/16")
    # Without the 6to4 entry the list validates; the growth guard refuses it.
    only_v4 = api([*CURRENT["ipv4_cidrs"], *PUBLIC_EIGHTS], CURRENT["ipv6_cidrs"])
    box.refused(box.sync(only_v4), "215 new IPv4 range(s) wider than /12", "--force")
    assert box.target.read_bytes() == before
    assert (box.tmp / "st" / "last-known-good.json").read_bytes() == lkg


def test_on_a_first_run_the_bundled_snapshot_is_the_baseline(box: Box) -> None:
    box.configure(min_new_prefix_v4=8)  # let the /8s through the per-range check
    hostile = api([*CURRENT["ipv4_cidrs"], *PUBLIC_EIGHTS], CURRENT["ipv6_cidrs"])
    box.refused(
        box.sync(hostile),
        "it adds 3,606,133,760 IPv4 addresses, 2,365.1 times the 1,524,736",
        "of the bundled snapshot (more than max_growth=10)",
    )
    assert not box.target.exists()
    assert not (box.tmp / "st" / "last-known-good.json").exists()


def test_back_to_the_full_list_after_a_forced_shrink_needs_no_force(box: Box) -> None:
    tiny = api(["173.245.48.0/20"], ["2400:cb00::/32"])
    assert box.sync(tiny, "--force").rc == 0
    assert box.owned() == {"173.245.48.0/20", "2400:cb00::/32"}
    r = box.sync(fixture_text("api-ips.json"))
    assert r.rc == 0, r.err
    assert len(box.owned()) == 22
    # Growth beyond both the shrunk list and the bundled snapshot is still refused.
    wide = api([*CURRENT["ipv4_cidrs"], "45.0.0.0/11"], CURRENT["ipv6_cidrs"])
    box.refused(box.sync(wide), "new IPv4 range(s) wider than /12 (first: 45.0.0.0/11")


def test_force_accepts_what_the_growth_guard_refuses(box: Box) -> None:
    assert box.sync(fixture_text("api-ips.json")).rc == 0
    wide = api([*CURRENT["ipv4_cidrs"], "45.0.0.0/11"], CURRENT["ipv6_cidrs"])
    box.refused(box.sync(wide), "new IPv4 range(s) wider than /12 (first: 45.0.0.0/11")
    r = box.sync(wide, "--force")
    assert r.rc == 0, r.err
    assert "45.0.0.0/11" in box.owned()


def test_a_wide_new_ipv6_range_is_refused_and_the_keys_are_configurable(box: Box) -> None:
    assert box.sync(fixture_text("api-ips.json")).rc == 0
    wide = api(CURRENT["ipv4_cidrs"], [*CURRENT["ipv6_cidrs"], "2a10::/28"])
    box.refused(box.sync(wide), "1 new IPv6 range(s) wider than /29", "min_new_prefix_v6=29")
    box.configure(min_new_prefix_v6=28)
    assert box.sync(wide).rc == 0
    assert "2a10::/28" in box.owned()


def test_cloudflares_real_changes_pass_with_the_defaults(box: Box) -> None:
    steps = [
        ("2013", api(V4_2013, V6_EARLY)),
        ("2014: + 104.16.0.0/12, 4.9 times the IPv4 coverage", api(V4_2014, V6_EARLY)),
        ("2021-03", fixture_text("api-ips-2021-03.json")),
        ("2021-04-08", fixture_text("api-ips.json")),
        ("back to 2021-03", fixture_text("api-ips-2021-03.json")),
        ("2013 again", api(V4_2013, V6_EARLY)),
        ("2013 straight to today: 6.1 times", fixture_text("api-ips.json")),
    ]
    for what, body in steps:
        r = box.sync(body, "--json")
        assert r.rc == 0, f"{what}: {r.err}"
    assert box.owned() == set(CURRENT["ipv4_cidrs"]) | set(CURRENT["ipv6_cidrs"])


def test_max_growth_is_configurable(box: Box) -> None:
    # The baseline is the accepted list (none yet) together with the bundled snapshot
    # (1,524,736 IPv4 addresses): seven new /12s add 4.8 times that.
    seven = [f"45.{16 * i}.0.0/12" for i in range(7)]
    grown = api([*CURRENT["ipv4_cidrs"], *seven], CURRENT["ipv6_cidrs"])
    box.configure(max_growth=4)
    assert box.sync(fixture_text("api-ips.json")).rc == 0
    box.refused(box.sync(grown), "4.8 times", "max_growth=4")
    box.configure()
    assert box.sync(grown).rc == 0


@pytest.mark.parametrize(
    ("entry", "what"),
    [
        ("2002::/16", "6to4"),
        ("2002:c000:204::/48", "6to4"),
        ("2001::/32", "Teredo"),
        ("2001:0:4136:e378::/64", "Teredo"),
        ("64:ff9b::/96", "NAT64 (well-known prefix)"),
        ("64:ff9b:1::/48", "local-use NAT64"),
    ],
)
def test_transition_space_is_refused(entry: str, what: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(f"overlaps {what}")):
        parse_family([entry], 6, "test")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_growth", -1),
        ("min_new_prefix_v4", 33),
        ("min_new_prefix_v6", 129),
        ("max_growth", "x"),
    ],
)
def test_bad_growth_settings_are_config_errors(box: Box, key: str, value: object) -> None:
    box.configure(**{key: value})
    r = box.sync(fixture_text("api-ips.json"))
    assert r.rc == 2 and f"[source] {key}" in r.err and len(r.err.splitlines()) == 1
