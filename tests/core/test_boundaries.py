"""Every limit of the pure core, tested exactly at the limit and one step past it.

Mutation testing (bench/mutate.py) found limits no test pinned down: ``>`` could
become ``>=`` at the shrink and growth guards' limits and at the 1,000-entry cap,
``>=`` could become ``>`` at the retry time, the jitter cap could grow sixfold, a
world-writable sticky leaf directory could be trusted, and the state directory's
creation could go, all without a failing test.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from netaddr import IPNetwork
from support import need_root

from cfallow import trust
from cfallow.errors import ConfigError, GuardRefused, ValidationError
from cfallow.fetch import cadence, http
from cfallow.fetch.guard import check_ceiling, check_growth, check_shrink
from cfallow.fetch.ranges import Ranges
from cfallow.fetch.validate import MAX_ENTRIES, check_lists, parse_family
from cfallow.model import (
    FAMILIES,
    FAMILY_NAME,
    Networks,
    as_strings,
    by_family,
    combine,
    family,
    make_plan,
    parse_cidr,
)

V6 = frozenset({IPNetwork("2400:cb00::/32")})
PREFIXES = {4: 12, 6: 29}


def nets(*cidrs: str) -> Networks:
    return frozenset(IPNetwork(c) for c in cidrs)


def v4(*cidrs: str, kind: str = "live") -> Ranges:
    return Ranges(nets(*cidrs), V6, kind)


# -- the shrink guard: more than max_shrink of the known ranges lost ------------------

KNOWN = v4("45.0.0.0/16", "46.0.0.0/16", "47.0.0.0/16", "49.0.0.0/16")


def test_shrink_exactly_at_max_shrink_is_accepted() -> None:
    check_shrink(v4("45.0.0.0/16", "46.0.0.0/16"), KNOWN, 0.5)  # 2 of 4 lost: exactly 0.5


def test_shrink_one_past_max_shrink_is_refused() -> None:
    with pytest.raises(GuardRefused, match="3 of 4 known IPv4 ranges would disappear"):
        check_shrink(v4("45.0.0.0/16"), KNOWN, 0.5)


def test_shrink_checks_ipv6_too_and_nothing_known_is_no_shrink() -> None:
    known = Ranges(KNOWN.ipv4, nets("2400:cb00::/32", "2606:4700::/32"), "live")
    with pytest.raises(GuardRefused, match="2 of 2 known IPv6 ranges"):
        check_shrink(Ranges(KNOWN.ipv4, nets("2a06:98c0::/29"), "live"), known, 0.5)
    check_shrink(v4("45.0.0.0/16"), None, 0.0)


# -- the growth guard: new coverage more than max_growth times the baseline's --------

BASE = v4("45.0.0.0/16", kind="bundled")  # 65,536 addresses


def test_growth_exactly_at_max_growth_is_accepted() -> None:
    check_growth(v4("45.0.0.0/16", "46.0.0.0/16"), BASE, 1.0, PREFIXES)  # 1.0 times


def test_growth_one_address_past_max_growth_is_refused() -> None:
    grown = v4("45.0.0.0/16", "46.0.0.0/16", "47.0.0.0/32")
    with pytest.raises(GuardRefused, match=r"adds 65,537 IPv4 addresses, 1\.0 times the 65,536"):
        check_growth(grown, BASE, 1.0, PREFIXES)


def test_a_new_range_exactly_min_new_prefix_is_accepted_one_bit_wider_refused() -> None:
    check_growth(v4("45.0.0.0/16", "48.0.0.0/12"), BASE, 100.0, PREFIXES)
    with pytest.raises(GuardRefused, match=r"1 new IPv4 range\(s\) wider than /12"):
        check_growth(v4("45.0.0.0/16", "48.0.0.0/11"), BASE, 100.0, PREFIXES)


def test_a_range_the_baseline_covers_is_not_new_however_wide() -> None:
    base = v4("48.0.0.0/12", "48.16.0.0/12", kind="accepted")
    check_growth(v4("48.0.0.0/11"), base, 0.0, PREFIXES)  # the same addresses, merged


def test_growth_is_measured_per_family() -> None:
    base = Ranges(nets("45.0.0.0/16"), nets("2400:cb00::/32"), "accepted")
    grown = Ranges(nets("45.0.0.0/16"), nets("2400:cb00::/32", "2606:4700::/32"), "live")
    check_growth(grown, base, 1.0, PREFIXES)
    with pytest.raises(GuardRefused, match=r"IPv6 addresses.*accepted list with the snapshot"):
        check_growth(grown, base, 0.99, PREFIXES)


# -- the ceiling: never more than one /ceiling_prefix in all ---------------------------


def test_ceiling_exactly_one_prefix_is_accepted_one_address_more_refused() -> None:
    check_ceiling(v4("45.0.0.0/8"), {4: 8, 6: 24})
    with pytest.raises(GuardRefused, match="16,777,217 IPv4 addresses"):
        check_ceiling(v4("45.0.0.0/8", "46.0.0.1/32"), {4: 8, 6: 24})
    six = Ranges(nets("45.0.0.0/16"), nets("2400::/24", "2a06:98c0::/29"), "live")
    with pytest.raises(GuardRefused, match="IPv6 addresses, more than the ceiling"):
        check_ceiling(six, {4: 8, 6: 24})
    check_ceiling(Ranges(nets("45.0.0.0/16"), nets("2400::/24"), "live"), {4: 8, 6: 24})


# -- validation: the 1,000-entry cap and the shortest prefix ---------------------------


def _v4_entries(n: int) -> Networks:
    return frozenset(IPNetwork(f"45.{i >> 8}.{i & 255}.0/24") for i in range(n))


def test_exactly_max_entries_is_accepted_one_more_refused() -> None:
    assert MAX_ENTRIES == 1000
    check_lists(_v4_entries(999), V6)
    with pytest.raises(ValidationError, match="1001 entries: more than 1000"):
        check_lists(_v4_entries(1000), V6)


def test_the_shortest_prefix_is_accepted_one_bit_shorter_refused() -> None:
    assert parse_family(["45.0.0.0/8"], 4, "t") == nets("45.0.0.0/8")
    with pytest.raises(ValidationError, match="shorter than /8"):
        parse_family(["44.0.0.0/7"], 4, "t")
    assert parse_family(["2a00::/16"], 6, "t") == nets("2a00::/16")
    with pytest.raises(ValidationError, match="shorter than /16"):
        parse_family(["2a00::/15"], 6, "t")


@pytest.mark.parametrize("entries", ["45.0.0.0/8", None, {"45.0.0.0/8": 1}, 7])
def test_a_family_that_is_not_a_list_is_refused_as_such(entries: object) -> None:
    with pytest.raises(ValidationError, match=r"^t: expected a list of CIDRs$"):
        parse_family(entries, 4, "t")  # type: ignore[arg-type]


# -- the cadence: retry time, refresh age, jitter --------------------------------------

T = 1_800_000_000.0


def test_a_failed_fetch_is_retried_exactly_at_the_retry_time() -> None:
    failed = cadence.FetchLog(T, True, T + 300)
    assert cadence.fetch_due(failed, T - 60, T + 300, 6 * 3600) == (
        True,
        "retrying the failed fetch",
    )
    due, why = cadence.fetch_due(failed, T - 60, T + 299, 6 * 3600)
    assert not due and why == "last fetch failed; next retry in 1 s"


def test_a_failure_at_the_same_instant_as_the_known_list_counts_as_failed() -> None:
    failed = cadence.FetchLog(T, True, T + 300)  # attempted_at == the list's own time
    assert cadence.fetch_due(failed, T, T + 300, 6 * 3600)[0]
    assert not cadence.fetch_due(failed, T, T + 299, 6 * 3600)[0]
    # a failure older than the list does not hold a fresh list back, nor force a fetch
    assert not cadence.fetch_due(failed, T + 1, T + 300, 6 * 3600)[0]


def test_refresh_is_due_exactly_at_its_age() -> None:
    ok = cadence.FetchLog(T, False)
    assert cadence.fetch_due(ok, T, T + 3600, 3600)[0]
    assert not cadence.fetch_due(ok, T, T + 3599, 3600)[0]
    assert cadence.fetch_due(None, None, T, 3600) == (True, "no last-known-good list")


def test_with_a_point_the_fetch_is_due_at_that_point_of_each_period() -> None:
    ok, point = cadence.FetchLog(T, False), 0.25  # a quarter into each hour
    at = T + 900  # T is on the hour: this hour's point
    assert not cadence.fetch_due(ok, T, at - 1, 3600, point)[0]
    assert cadence.fetch_due(ok, T, at, 3600, point)[0]
    assert cadence.fetch_due(ok, T, at + cadence.WINDOW - 1, 3600, point)[0]
    assert not cadence.fetch_due(ok, T, at + cadence.WINDOW, 3600, point)[0]  # missed
    assert cadence.fetch_due(ok, T, at + 3600, 3600, point)[0]  # the next one
    late = T + cadence.MAX_AGE * 3600  # overdue: the point comes every 900 s (225 s in)
    assert not cadence.fetch_due(ok, T, late, 3600, point)[0]
    assert cadence.fetch_due(ok, T, late + 225, 3600, point)[0]
    assert not cadence.fetch_due(ok, T, late + 225 + cadence.WINDOW, 3600, point)[0]
    assert cadence.fetch_due(ok, T, late + 225 + 900, 3600, point)[0]
    assert cadence.fetch_due(ok, T, T + cadence.MAX_AGE * 2400, 2400, point)[0]  # 600 s: always


def test_the_retry_jitter_is_up_to_the_wait_again() -> None:
    random.seed(23)
    waits = [cadence.failed_at(T, 300, "x").next_retry - T for _ in range(400)]  # type: ignore[operator]
    assert all(300 <= w <= 300 * (1 + cadence.JITTER) for w in waits)
    assert min(waits) < 300 * 1.05 and max(waits) > 300 * 1.95  # the whole range is used
    entry = cadence.failed_at(T, 300, "HTTP 500")
    assert entry.attempted_at == T and entry.failed and entry.error == "HTTP 500"
    assert entry.failures == 1


def test_failures_in_a_row_double_the_wait_up_to_refresh_and_retry_after_wins() -> None:
    random.seed(5)
    entry, bases = None, []
    for _ in range(8):
        entry = cadence.failed_at(T, 300, "x", refresh=6 * 3600, previous=entry)
        bases.append((entry.next_retry or 0) - T)
    assert [entry.failures] == [8]
    limits = [min(300 * 2**n, 6 * 3600) for n in range(8)]
    assert all(b <= w <= b * (1 + cadence.JITTER) for w, b in zip(bases, limits)), bases
    ok = cadence.FetchLog(T, False)  # a success in between starts again from retry
    assert cadence.failed_at(T, 300, "x", previous=ok).failures == 1
    told = cadence.failed_at(T, 300, "x", retry_after=7200)
    assert (told.next_retry or 0) - T >= 7200
    huge = cadence.failed_at(T, 300, "x", retry_after=10**9)
    assert (huge.next_retry or 0) - T <= cadence.MAX_RETRY_AFTER


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("120", 120.0), (" 0 ", 0.0), ("", None), ("soon", None), ("-5", None)],
)
def test_retry_after_is_read_as_seconds(header: str, seconds: float | None) -> None:
    assert http.retry_after(header) == seconds


def test_retry_after_as_an_http_date() -> None:
    from email.utils import formatdate

    assert http.retry_after(formatdate(T + 600, usegmt=True), now=T) == 600
    assert http.retry_after(formatdate(T - 600, usegmt=True), now=T) == 0


@pytest.fixture
def umask0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_write_log_creates_the_state_directory_0755_and_reads_back(
    tmp_path: Path, umask0: None
) -> None:
    state = tmp_path / "a" / "state"
    entry = cadence.FetchLog(T, True, T + 300, "HTTP 500", T - 5)
    cadence.write_log(state, entry)
    assert (state.stat().st_mode & 0o777) == 0o755
    assert cadence.read_log(state) == entry
    (tmp_path / "file").write_text("")
    cadence.write_log(tmp_path / "file", entry)  # cannot write: not worth failing the run
    assert cadence.read_log(tmp_path / "file") is None


# -- trust: a world-writable sticky leaf directory, a file swapped while read ----------


def test_a_world_writable_sticky_leaf_directory_is_not_trusted(tmp_path: Path) -> None:
    need_root()
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    os.chown(tmp_path, 0, 0)
    tmp_path.chmod(0o755)
    metrics.chmod(0o1777)  # like /tmp: sticky, world-writable, root's
    with pytest.raises(ConfigError, match=r"metrics_file .*metrics is writable by group or oth"):
        trust.check_output_dir(metrics / "cfallow.prom", "metrics_file")
    metrics.chmod(0o755)
    trust.check_output_dir(metrics / "cfallow.prom", "metrics_file")


def test_a_file_replaced_while_it_was_read_is_refused(tmp_path: Path) -> None:
    need_root()
    os.chown(tmp_path, 0, 0)
    tmp_path.chmod(0o755)
    conf = tmp_path / "config.toml"
    conf.write_text("a = 1\n")
    conf.chmod(0o644)
    with conf.open("rb") as fh:
        trust.check_open_file(fh.fileno(), conf, "config")
        (tmp_path / "new.toml").write_text("a = 2\n")
        (tmp_path / "new.toml").chmod(0o644)
        os.replace(tmp_path / "new.toml", conf)
        with pytest.raises(ConfigError, match=r"config .*config\.toml changed while it was read"):
            trust.check_open_file(fh.fileno(), conf, "config")


def test_a_stamp_exactly_now_is_not_in_the_future(caplog: pytest.LogCaptureFixture) -> None:
    ok = cadence.FetchLog(T, False)
    assert cadence.fetch_due(ok, T, T, 3600) == (
        False,
        "last-known-good list is 0 s old (refresh 3600 s)",
    )
    assert caplog.records == []
    due, why = cadence.fetch_due(ok, T + 1, T, 3600)
    assert due and why.startswith("the last-known-good list is stamped 1 s in the future")
    due, why = cadence.fetch_due(cadence.FetchLog(T + 2, True, T + 302), T - 1, T, 3600)
    assert due and why.startswith("the last fetch attempt is stamped 2 s in the future")
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]


def test_a_fetch_log_with_wrong_types_keeps_what_it_can(tmp_path: Path) -> None:
    (tmp_path / cadence.FETCH_LOG).write_text(
        '{"attempted_at": 5, "failed": 1, "next_retry": "soon", "error": 7, "changed_at": "x"}'
    )
    # no failure count (a log from before there was one): a failed attempt counts as one
    assert cadence.read_log(tmp_path) == cadence.FetchLog(5.0, True, None, None, None, 1)
    (tmp_path / cadence.FETCH_LOG).write_text('{"failed": false}')
    assert cadence.read_log(tmp_path) is None
    (tmp_path / cadence.FETCH_LOG).write_text("[]")
    assert cadence.read_log(tmp_path) is None


def test_the_clock_is_the_wall_clock_unless_faked(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.delenv("CFALLOW_NOW", raising=False)
    before = time.time()
    assert before <= cadence.now() <= time.time()
    monkeypatch.setenv("CFALLOW_NOW", "12.5")
    assert cadence.now() == 12.5


# -- the model: CIDR parsing limits, ordering, families, plans ------------------------


def test_a_three_digit_prefix_is_the_longest_spelling() -> None:
    assert parse_cidr("2400:cb00::1/128") == IPNetwork("2400:cb00::1/128")
    assert parse_cidr("45.0.0.0/8") == IPNetwork("45.0.0.0/8")  # version from the text
    for text in ("45.0.0.0/0008", "45.0.0.0/-8", "45.0.0.0/", "45.0.0.0/\uff18", " 45.0.0.0/8"):
        with pytest.raises(ValidationError, match=r"^not a CIDR: "):
            parse_cidr(text)


def test_each_family_is_spelled_its_own_way() -> None:
    with pytest.raises(ValidationError, match=r"^not an IPv4 CIDR"):
        parse_cidr("::ffff:1.2.3.0/120", 4)
    with pytest.raises(ValidationError, match=r"^not an IPv4 CIDR"):
        parse_cidr("1.2.3.0.0/24", 4)
    with pytest.raises(ValidationError, match=r"^not an IPv6 CIDR"):
        parse_cidr("1.2.3.0/24", 6)
    assert parse_cidr("2400:cb00::/32", 6) == IPNetwork("2400:cb00::/32")
    assert parse_cidr("2400:cb00::/32").version == 6


def test_order_families_and_names() -> None:
    mixed = [IPNetwork(c) for c in ("2400::/16", "45.0.0.0/16", "45.0.0.0/8", "9.0.0.0/8")]
    assert as_strings(mixed) == ["9.0.0.0/8", "45.0.0.0/8", "45.0.0.0/16", "2400::/16"]
    assert family(mixed, 6) == nets("2400::/16")
    assert by_family(mixed) == {4: frozenset(mixed[1:]), 6: nets("2400::/16")}
    assert by_family([]) == {4: frozenset(), 6: frozenset()}
    assert FAMILIES == (4, 6) and FAMILY_NAME == {4: "IPv4", 6: "IPv6"}


def test_plans_made_and_combined() -> None:
    a, b, c = nets("45.0.0.0/16"), nets("46.0.0.0/16"), nets("47.0.0.0/16")
    plan = make_plan("x", a | b, b | c, covered=a, notes=["n"], steps=["s"])
    assert (plan.add, plan.remove, plan.kept, plan.after) == (frozenset(), c, b, b)
    assert plan.changed and plan.notes == ("n",) and plan.steps == ("s",)
    assert plan.summary() == "x: +0 -1 =1"
    quiet = make_plan("x", b, b)
    assert not quiet.changed and quiet.summary() == "x: +0 -0 =1"
    both = combine("y", [plan, make_plan("z", a, frozenset())], drift=["d"], steps=[1])
    assert (both.current, both.add, both.remove) == (b | c, a, c)
    assert both.drift == ("d",) and both.steps == (1,) and both.backend == "y"


@pytest.fixture
def rootdir(tmp_path: Path) -> Path:
    need_root()
    os.chown(tmp_path, 0, 0)
    tmp_path.chmod(0o755)
    return tmp_path


def test_an_absent_output_directory_is_judged_by_the_nearest_existing_one(rootdir: Path) -> None:
    trust.check_output_dir(rootdir / "a" / "b", "metrics_file")
    (rootdir / "open").mkdir()
    (rootdir / "open").chmod(0o775)  # group-writable, not sticky
    with pytest.raises(ConfigError, match=r"metrics_file .*/open is writable by group or others"):
        trust.check_output_dir(rootdir / "open" / "a" / "b", "metrics_file")
    os.chown(rootdir / "open", 65534, 0)
    (rootdir / "open").chmod(0o755)
    with pytest.raises(ConfigError, match="owned by uid 65534, not root"):
        trust.check_output_dir(rootdir / "open" / "a", "metrics_file")


def test_the_error_names_the_file_or_the_directory_above_it(rootdir: Path) -> None:
    tool = rootdir / "bin" / "tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o775)
    with pytest.raises(ConfigError, match=r"^client .*/bin/tool is writable by group or others"):
        trust.check_executable(str(tool), "client")
    tool.chmod(0o755)
    trust.check_executable(str(tool), "client")
    tool.parent.chmod(0o777)
    with pytest.raises(ConfigError, match=r"^client .*/bin/tool: directory .*/bin is writable"):
        trust.check_executable(str(tool), "client")
    tool.parent.chmod(0o1777)  # sticky and root's: trusted above a root-owned file
    trust.check_executable(str(tool), "client")


def test_a_command_that_cannot_be_found_is_left_to_the_backend(rootdir: Path) -> None:
    trust.check_executable("cfallow-no-such-command-anywhere", "client")
    trust.check_executable(str(rootdir / "missing" / "tool"), "client")


def test_not_running_as_root_checks_nothing() -> None:
    need_root()
    # under /tmp itself, so the unprivileged user can reach it (pytest's tmp is root's 0700)
    with tempfile.TemporaryDirectory(dir="/tmp") as top:
        Path(top).chmod(0o755)
        loose = Path(top) / "loose"
        loose.mkdir()
        loose.chmod(0o777)
        conf = loose / "config.toml"
        conf.write_text("")
        conf.chmod(0o666)
        with conf.open("rb") as fh:
            os.seteuid(65534)
            try:
                assert not trust.running_as_root()
                trust.check_open_file(fh.fileno(), conf, "config")
                trust.check_executable(str(conf), "client")
                trust.check_output_dir(loose, "metrics_file")
            finally:
                os.seteuid(0)
        assert trust.running_as_root()
        for check in (
            lambda: trust.check_executable(str(conf), "client"),
            lambda: trust.check_output_dir(loose, "metrics_file"),
        ):
            with pytest.raises(ConfigError, match="writable by group or others"):
                check()


def test_an_entry_that_is_not_a_string_is_named() -> None:
    for entry in (5, None, ["45.0.0.0/8"]):
        with pytest.raises(ValidationError, match=f"^t: entry {re.escape(repr(entry))} is not a"):
            parse_family([entry], 4, "t")  # type: ignore[list-item]


def test_the_fetch_log_and_the_plan_are_values() -> None:
    entry = cadence.FetchLog(T, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.failed = True  # type: ignore[misc]
    plan = make_plan("x", nets("45.0.0.0/16"), frozenset())
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.add = frozenset()  # type: ignore[misc]
    assert hash(plan) == hash(make_plan("x", nets("45.0.0.0/16"), frozenset()))
