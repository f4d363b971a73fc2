"""The growth guard cannot be ratcheted: growth is bounded since the list an operator
last accepted, however many fetches it is spread over, and the total is bounded by a
fixed ceiling that no acceptance lifts.

A stand-in source (a local server) grows each fetch by 0.9 times what it already sent:
under max_growth=10 for every single step against the step before, as a hostile source
would pace it, re-sending what it already got merged into wide blocks (the per-range
``min_new_prefix`` check is relaxed here to isolate the growth bound). Everything runs
through the real CLI in a subprocess.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from netaddr import IPNetwork, IPSet, cidr_merge
from pytest_httpserver import HTTPServer
from support.cli_helpers import Result, fixture_text, run_proc, write_config

API = "/client/v4/ips"
CURRENT = json.loads(fixture_text("api-ips.json"))["result"]
SNAPSHOT_V4 = IPSet(CURRENT["ipv4_cidrs"]).size  # the bundled snapshot's IPv4 coverage
SLASH16 = 1 << 16


def api(v4: list[str]) -> str:
    result = {"ipv4_cidrs": v4, "ipv6_cidrs": CURRENT["ipv6_cidrs"], "etag": "ratchet"}
    return json.dumps({"result": result, "success": True, "errors": [], "messages": []})


def ratchet(steps: int) -> list[list[str]]:
    """Each step: the last list plus new /16s worth 0.9 times its coverage, merged."""
    lists, have, next16 = [], list(CURRENT["ipv4_cidrs"]), 45 << 8  # 45.0.0.0/16 onwards
    for _ in range(steps):
        more = int(0.9 * IPSet(have).size) // SLASH16
        new = [IPNetwork(f"{n >> 8}.{n & 255}.0.0/16") for n in range(next16, next16 + more)]
        next16 += more
        have = [str(n) for n in cidr_merge([IPNetwork(h) for h in have] + new)]
        lists.append(have)
    return lists


class Source:
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
            min_new_prefix_v4=4,  # the merged blocks are wide: isolate the growth bound
            **source,
        )

    def cli(self, v4: list[str], *args: str) -> Result:
        self.server.clear()
        self.server.expect_request(API).respond_with_data(api(v4), content_type="application/json")
        base = ("--config", str(self.tmp / "config.toml"), "--state-dir", str(self.tmp / "st"))
        return run_proc(*base, *args)

    def owned_v4(self) -> int:
        owned = json.loads(self.target.read_text())["owned"]
        return IPSet(n for n in owned if ":" not in n).size

    def lkg(self) -> bytes:
        return (self.tmp / "st" / "last-known-good.json").read_bytes()


@pytest.fixture
def source(tmp_path: Path, httpserver: HTTPServer) -> Source:
    return Source(tmp_path, httpserver)


def refused(r: Result, *expect: str) -> None:
    assert r.rc == 4, (r.rc, r.err)
    assert "Traceback" not in r.err
    for text in expect:
        assert text in r.err.splitlines()[0], r.err


def test_each_step_is_small_the_sum_is_refused_at_the_crossing_step(source: Source) -> None:
    source.configure(ceiling_prefix_v4=4)  # isolate the growth bound from the ceiling
    steps = ratchet(5)  # a sixth step would merge into a /7, which validation refuses
    # the source's pace: every step adds 0.9 times the step before (under max_growth=10) ...
    for before, after in zip([CURRENT["ipv4_cidrs"], *steps], steps):
        assert IPSet(after).size - IPSet(before).size <= 0.91 * IPSet(before).size
    # ... and the step whose new coverage since the snapshot first exceeds 10 times it
    grown = [(IPSet(s).size - SNAPSHOT_V4) / SNAPSHOT_V4 for s in steps]
    crossing = next(i for i, g in enumerate(grown) if g > 10)
    assert crossing == 3
    assert source.cli(CURRENT["ipv4_cidrs"], "sync").rc == 0
    for i, v4 in enumerate(steps[:crossing]):
        r = source.cli(v4, "sync")
        assert r.rc == 0, (i, r.err)
    held = source.owned_v4()
    lkg = source.lkg()
    for v4 in steps[crossing:]:  # as many runs as the source likes: each one refused
        for _ in range(2):
            refused(source.cli(v4, "sync"), "IPv4 addresses", "max_growth=10", "cfallow accept")
    assert source.owned_v4() == held
    assert source.lkg() == lkg


def test_accept_moves_the_anchor_and_the_ceiling_holds_after_accept(source: Source) -> None:
    source.configure(ceiling_prefix_v4=7)  # at most 33,554,432 IPv4 addresses
    steps = ratchet(5)
    sizes = [IPSet(s).size for s in steps]
    assert sizes[3] <= 1 << 25 < sizes[4]
    for v4 in steps[:3]:
        assert source.cli(v4, "sync").rc == 0
    refused(source.cli(steps[3], "sync"), "max_growth=10")
    # accept --dry-run shows the difference and records nothing
    r = source.cli(steps[3], "accept", "--dry-run")
    assert r.rc == 0, r.err
    assert r.out.startswith("against the bundled snapshot of ")
    assert f"IPv4: {SNAPSHOT_V4:,} -> {sizes[3]:,} addresses" in r.out
    assert "  +45.0.0.0/" in r.out
    # -q: the comparison per family, not every entry
    q = source.cli(steps[3], "-q", "accept", "--dry-run")
    assert q.rc == 0, q.err
    assert q.out.splitlines() == r.out.splitlines()[:3]
    assert "+45.0.0.0/" not in q.out
    refused(source.cli(steps[3], "sync"), "max_growth=10")
    # accept records it: the next sync takes it, and growth is measured from there
    r = source.cli(steps[3], "accept")
    assert r.rc == 0, r.err
    assert json.loads((source.tmp / "st" / "accepted.json").read_text())["ipv4"] == steps[3]
    assert source.cli(steps[3], "sync").rc == 0
    assert source.owned_v4() == sizes[3]
    r = source.cli(steps[3], "accept", "--dry-run")
    assert r.out.startswith("against the accepted list of ") and "  no change" in r.out
    # 0.4 times more than the accepted list, in /16s after the ratchet's: fine
    first = 45 * 256 + (sizes[3] - SNAPSHOT_V4) // SLASH16
    count = sizes[3] * 4 // 10 // SLASH16
    more = [f"{n >> 8}.{n & 255}.0.0/16" for n in range(first, first + count)]
    assert source.cli([*steps[3], *more], "sync").rc == 0
    # the ceiling: neither accept nor --force lifts it
    ceiling = "more than the ceiling of 33,554,432 (one /7, ceiling_prefix_v4=7)"
    refused(source.cli(steps[4], "sync"), ceiling)
    refused(source.cli(steps[4], "accept"), ceiling)
    refused(source.cli(steps[4], "sync", "--force"), ceiling)
    assert source.owned_v4() == IPSet([*steps[3], *more]).size
    assert json.loads((source.tmp / "st" / "accepted.json").read_text())["ipv4"] == steps[3]


def test_force_is_an_acceptance_and_old_state_dirs_keep_working(source: Source) -> None:
    source.configure(ceiling_prefix_v4=4)
    steps = ratchet(4)
    # a state directory from before the anchor: a last-known-good list, no accepted.json
    assert source.cli(steps[0], "sync").rc == 0
    assert not (source.tmp / "st" / "accepted.json").exists()
    assert source.cli(steps[2], "sync").rc == 0
    refused(source.cli(steps[3], "sync"), "of the bundled snapshot (more than max_growth=10)")
    assert source.cli(steps[3], "sync", "--force").rc == 0
    assert json.loads((source.tmp / "st" / "accepted.json").read_text())["ipv4"] == steps[3]
    assert source.cli(steps[3], "sync").rc == 0


def test_the_default_ceiling_is_one_slash_8_exactly(source: Source) -> None:
    r = source.cli(["45.0.0.0/8"], "sync", "--force")  # exactly at the ceiling
    assert r.rc == 0, r.err
    assert source.owned_v4() == 1 << 24
    ceiling = "covers 16,777,217 IPv4 addresses, more than the ceiling of 16,777,216 (one /8"
    refused(source.cli(["45.0.0.0/8", "46.0.0.1/32"], "sync", "--force"), ceiling)
    assert source.owned_v4() == 1 << 24
