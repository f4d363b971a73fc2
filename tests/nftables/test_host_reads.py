"""The host analysis reads only what decides the verdict (the input/forward base chains and
the chains they reach; never a set's elements), and decides exactly as a read of the whole
ruleset does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from netaddr import IPNetwork
from support import namespace, ns_exec
from support.nftables.helpers import Nft

from cfallow.backend import Context, build
from cfallow.netfilter import host as hostfw
from cfallow.netfilter.host import Host, outcome, parse_ruleset
from cfallow.runner import Runner
from cfallow.section import PortRange

pytestmark = pytest.mark.root
WEB = (PortRange(80, 80), PortRange(443, 443))
OWN = ("cloudflare_v4", "cloudflare_v6")

#: The admin's table: a set with elements used before anything else, a jump into a chain
#: that goes to another, a verdict map that jumps, and chains no base chain reaches.
ADMIN = """table inet filter {
	set admin_set { type ipv4_addr; flags interval; elements = { 203.0.113.0/24 }; }
	chain deep {
%(deep)s	}
	chain web {
		tcp dport 80 accept
		goto deep
	}
	chain mapped {
%(mapped)s	}
	chain unreached {
		tcp dport 443 drop
	}
	chain input {
		type filter hook input priority 0; policy accept;
		iif "lo" accept
%(first)s		tcp dport vmap { 22 : jump mapped }
		jump web
	}
	chain output {
		type filter hook output priority 0; policy accept;
		jump unreached
	}
}
"""
#: A firewalld-like table: more chains than are listed one by one.
MANY = (
    "table inet many {\n"
    + "".join(f"\tchain c{i} {{\n\t\ttcp dport {1000 + i} accept\n\t}}\n" for i in range(10))
    + "\tchain input {\n\t\ttype filter hook input priority 10; policy accept;\n"
    + "".join(f"\t\tjump c{i}\n" for i in range(10))
    + "%s\t}\n}\n"
)


def verdicts(host: Host) -> list[tuple[str, str]]:
    """Every question the modes ask, for both families, both sources, both hooks."""
    out = []
    for hook in ("input", "forward"):
        for version in (4, 6):
            for cloudflare in (True, False):
                o = outcome(
                    host, version, "tcp", WEB, cloudflare=cloudflare, own_sets=OWN, hook=hook
                )
                out.append((o.verdict, o.why))
    return out


def read_both(ruleset: str) -> tuple[Host, Host, list[tuple[str, ...]]]:
    """The analysis' own read, a read of the whole ruleset, and the commands the first ran."""
    with namespace("hrd") as ns:
        Nft(ns).load(ruleset)
        runner = Runner(prefix=ns_exec(ns))
        host = hostfw.read(runner, iptables=False)
        whole = Host(parse_ruleset(Nft(ns)("-j", "list", "ruleset")))
    return host, whole, runner.calls


def admin(first: str = "", deep: str = "", mapped: str = "") -> str:
    return ADMIN % {"first": first, "deep": deep, "mapped": mapped}


CASES = {
    "a jump then a goto into a chain that drops": (
        admin(deep="\t\ttcp dport 443 drop\n"),
        "drop",
        "inet filter deep: rule handle",
    ),
    "a set referenced in a rule before the drop": (
        admin(first="\t\tip saddr @admin_set accept\n", deep="\t\ttcp dport 443 drop\n"),
        "unknown",
        "inet filter input: a rule this analysis does not understand",
    ),
    "cfallow's set before the drop": (
        "table inet filter {\n\tset cloudflare_v4 { type ipv4_addr; flags interval; }\n}\n"
        + admin(first="\t\tip saddr @cloudflare_v4 accept\n", deep="\t\tdrop\n"),
        "accept",  # from Cloudflare; an outsider's is dropped in deep (the same in both reads)
        "no base chain drops it",
    ),
    "a verdict map of another port into a chain that drops": (
        admin(mapped="\t\tdrop\n"),
        "accept",
        "no base chain drops it",
    ),
    "a verdict map that drops the port": (
        admin(first="\t\ttcp dport vmap { 443 : drop, 8080 : accept }\n"),
        "drop",
        "inet filter input: rule handle",
    ),
    "a verdict map on the connection state": (
        admin(first="\t\tct state vmap { established : accept, invalid : drop }\n"),
        "accept",
        "no base chain drops it",
    ),
    "a named verdict map": (
        "table inet filter {\n\tmap ports { type inet_service : verdict; "
        "elements = { 443 : drop }; }\n}\n" + admin(first="\t\ttcp dport vmap @ports\n"),
        "unknown",
        "inet filter input: a rule this analysis does not understand",
    ),
    "a port match on a named set before the drop": (
        "table inet filter {\n\tset web { type inet_service; elements = { 80, 443 }; }\n}\n"
        + admin(first="\t\ttcp dport @web drop\n"),
        "unknown",
        "inet filter input: a rule this analysis does not understand",
    ),
    "a chain only the output hook reaches": (admin(), "accept", "no base chain drops it"),
    "a table of many chains, one of them dropping": (
        admin() + MANY % "\t\ttcp dport 80 drop\n",
        "drop",
        "inet many input: rule handle",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_the_reads_decide_as_a_read_of_the_whole_ruleset(case: str) -> None:
    ruleset, verdict, why = CASES[case]
    host, whole, calls = read_both(ruleset)
    assert verdicts(host) == verdicts(whole)
    first = outcome(host, 4, "tcp", WEB, cloudflare=True, own_sets=OWN)
    assert first.verdict == verdict and first.why.startswith(why), first
    listed = [c for c in calls if "list" in c]
    assert not [c for c in listed if "ruleset" in c or "set" in c or "sets" in c]
    assert all("-t" in c for c in listed if "table" in c), "a table listed with its elements"
    read = {c[-1] for c in listed if c[3:6] == ("chain", "inet", "filter")}
    assert read == {"input", "web", "deep", "mapped"}  # not output, unreached


def test_sets_mode_after_an_admin_commit_reads_its_own_elements(tmp_path: Path) -> None:
    """The analysis reads every chain of the admin's table (its rules, never a set's
    elements): cfallow's sets are read whole apart, so a run after the admin's commit sees
    the ranges it holds (nothing to change); a run that keeps the analysis reads cfallow's
    sets only, not the admin's elements."""
    with namespace("hrs") as ns:
        nft = Nft(ns)
        nft.load(admin(first="\t\tip saddr @admin_set accept\n"))
        runner = Runner(prefix=ns_exec(ns))
        (tmp_path / "state").mkdir()
        ctx = Context(runner=runner, state_dir=tmp_path / "state")
        b = build("nftables", {"mode": "sets", "file": str(tmp_path / "s.nft")}, ctx)
        desired = frozenset({IPNetwork("173.245.48.0/20"), IPNetwork("2400:cb00::/32")})
        b.apply(b.diff(b.read(), desired))
        nft("add", "element", "inet", "filter", "admin_set", "{ 198.51.100.0/24 }")
        runner.calls.clear()
        plan = b.diff(b.read(), desired)
        chains = {c[-1] for c in runner.calls if c[2:6] == ("list", "chain", "inet", "filter")}
        table = [i["chain"] for i in nft.items() if "chain" in i]
        assert chains == {c["name"] for c in table if c["table"] == "filter"}, "analysed"
        assert not [c for c in runner.calls if "admin_set" in c or "table" in c]
        assert not plan.changed and plan.current == desired
        runner.calls.clear()
        again = b.diff(b.read(), desired)  # the same ruleset: the analysis is kept
        assert not again.changed and again.current == desired
        lists = [c for c in runner.calls if "list" in c]
        assert lists and not [c for c in lists if "admin_set" in c or "table" in c]
        assert all("-t" in c for c in lists if "sets" in c)
        assert nft.elements("inet", "filter", "cloudflare_v4") == {IPNetwork("173.245.48.0/20")}


def test_an_answer_is_shared_between_sources_only_when_no_rule_looks_at_the_source() -> None:
    """The analysis keeps each answer; the other source's answer is the same one only when
    the walk never read the source (a rule on cfallow's set), whichever is asked first."""
    ruleset = (
        "table inet filter {\n\tset cloudflare_v4 { type ipv4_addr; flags interval; }\n"
        "\tchain input {\n\t\ttype filter hook input priority 0; policy drop;\n"
        "\t\tip saddr @cloudflare_v4 tcp dport { 80, 443 } accept\n\t}\n}\n"
    )
    for first in (True, False):
        host, whole, _ = read_both(ruleset)
        asked = [first, not first]
        got = {cf: outcome(host, 4, "tcp", WEB, cloudflare=cf, own_sets=OWN) for cf in asked}
        assert got[True].verdict == "accept" and got[False].verdict == "drop", got
        assert verdicts(host) == verdicts(whole)
    # no rule on the source (IPv6 here: the set is IPv4's): one walk answers both
    host, whole, _ = read_both(ruleset)
    v6 = outcome(host, 6, "tcp", WEB, cloudflare=True, own_sets=OWN)
    assert len(host.answers) == 2 and v6.verdict == "drop"
    assert outcome(host, 6, "tcp", WEB, cloudflare=False, own_sets=OWN) is v6
    assert verdicts(host) == verdicts(whole)


def test_the_rules_referencing_cfallows_sets_are_found_from_the_terse_listing() -> None:
    """Sets mode lists the admin's table tersely; the rules naming cfallow's sets are found
    in it (in any chain, reached or not), and a listing naming none of them is not
    searched rule by rule."""
    from cfallow.backends.nftables.apply import referencing

    sets = (
        "table inet filter {\n\tset cloudflare_v4 { type ipv4_addr; flags interval; }\n"
        "\tset cloudflare_v6 { type ipv6_addr; flags interval; }\n}\n"
    )
    used = admin(first="\t\tip saddr @cloudflare_v4 tcp dport 443 accept\n")
    used += "table inet filter {\n\tchain spare {\n\t\tip6 saddr @cloudflare_v6 accept\n\t}\n}\n"
    with namespace("hrf") as ns:
        for ruleset, expect in ((sets + used, set(OWN)), (sets + admin(), set())):
            Nft(ns).load("flush ruleset\n" + ruleset)
            host = hostfw.read(Runner(prefix=ns_exec(ns)), iptables=False, whole=["inet filter"])
            assert host.nft is not None
            table = host.nft.table("inet", "filter")
            assert table is not None and table.mentions is not None
            found = referencing(table, list(OWN))
            assert set(found) == expect, found
            assert expect <= table.mentions
            for name in expect:
                assert len(found[name]) == 1 and found[name][0].startswith("inet filter ")


#: cfallow's two sets, and an admin set whose name begins with the IPv4 one's.
OWN_SETS = (
    "table inet filter {\n"
    '\tset cloudflare_v4 { type ipv4_addr; flags interval; comment "cfallow"; }\n'
    '\tset cloudflare_v6 { type ipv6_addr; flags interval; comment "cfallow"; }\n'
    "\tset cloudflare_v4_old { type ipv4_addr; flags interval; }\n}\n"
)
SPARE = "table inet filter {\n\tchain spare {\n%s\t}\n}\n"
NAMING = {
    # case: (ruleset, {set: chains of the rules naming it}, names not traced from the text)
    "no rule names them": (admin(), {}, ()),
    "a rule in the input base chain": (
        admin(first="\t\tip saddr @cloudflare_v4 tcp dport 443 accept\n"),
        {"cloudflare_v4": ["input"]},
        (),
    ),
    "a rule in a chain reached by jump then goto": (
        admin(deep="\t\tip6 saddr @cloudflare_v6 accept\n"),
        {"cloudflare_v6": ["deep"]},
        (),
    ),
    "a rule in a verdict map's chain": (
        admin(mapped="\t\tip saddr @cloudflare_v4 accept\n"),
        {"cloudflare_v4": ["mapped"]},
        (),
    ),
    "a rule in a chain no hook reaches": (
        admin() + SPARE % "\t\tip6 saddr @cloudflare_v6 accept\n",
        {"cloudflare_v6": ["spare"]},
        (),
    ),
    "a set whose name begins with cfallow's": (
        admin(first="\t\tip saddr @cloudflare_v4_old drop\n"),
        {},
        (),
    ),
    "one rule naming a set twice, and rules in three chains": (
        admin(
            first="\t\tip saddr @cloudflare_v4 ip daddr != @cloudflare_v4 accept\n",
            deep="\t\tip saddr @cloudflare_v4 tcp dport 443 accept\n",
        )
        + SPARE % "\t\tip6 saddr @cloudflare_v6 accept\n\t\tip saddr @cloudflare_v4 accept\n",
        {"cloudflare_v4": ["deep", "input", "spare"], "cloudflare_v6": ["spare"]},
        (),
    ),
    "a rule's comment that is the name (the search counts it)": (
        admin(first='\t\ttcp dport 8080 accept comment "@cloudflare_v4"\n'),
        {"cloudflare_v4": ["input"]},
        (),
    ),
    "a rule's comment that holds the name": (
        admin(first='\t\ttcp dport 8080 accept comment "uses @cloudflare_v4 too"\n'),
        {},
        (),
    ),
    "a set's comment that is the name, a table listed whole: searched rule by rule": (
        "table inet filter {\n"
        '\tset note { type ipv4_addr; comment "@cloudflare_v6"; }\n'
        + "".join(f"\tchain more{i} {{\n\t}}\n" for i in range(hostfw.CHAINS_ONE_BY_ONE))
        + "}\n"
        + admin(
            first="\t\tip saddr @cloudflare_v4 accept\n",
            deep="\t\tip6 saddr @cloudflare_v6 accept\n",
        ),
        {"cloudflare_v4": ["input"], "cloudflare_v6": ["deep"]},
        ("cloudflare_v6",),
    ),
    "a set's comment that is the name, every chain listed: not in a chain's listing": (
        "table inet filter {\n"
        '\tset note { type ipv4_addr; comment "@cloudflare_v6"; }\n}\n'
        + admin(
            first="\t\tip saddr @cloudflare_v4 accept\n",
            deep="\t\tip6 saddr @cloudflare_v6 accept\n",
        ),
        {"cloudflare_v4": ["input"], "cloudflare_v6": ["deep"]},
        (),
    ),
    "as many rules as are traced": (
        admin() + SPARE % ("\t\tip saddr @cloudflare_v4 accept\n" * hostfw.TRACED),
        {"cloudflare_v4": ["spare"] * hostfw.TRACED},
        (),
    ),
    "more rules than are traced: searched rule by rule": (
        admin(first="\t\tip6 saddr @cloudflare_v6 accept\n")
        + SPARE % ("\t\tip saddr @cloudflare_v4 accept\n" * (hostfw.TRACED + 1)),
        {"cloudflare_v4": ["spare"] * (hostfw.TRACED + 1), "cloudflare_v6": ["input"]},
        ("cloudflare_v4",),
    ),
}


@pytest.mark.parametrize("case", NAMING)
def test_the_rules_naming_cfallows_sets_are_those_a_search_of_every_rule_finds(case: str) -> None:
    """Sets mode's analysis traces the rules naming cfallow's sets from the listing's text;
    they are the rules (and in the order) a search of every rule's JSON finds, in this
    read and in an independent read of the whole ruleset. Where the text cannot say (a
    set's comment naming one; more rules than are traced), the search runs instead."""
    ruleset, expect, untraced = NAMING[case]
    with namespace("hrn") as ns:
        nft = Nft(ns)
        nft.load(OWN_SETS + ruleset)
        runner = Runner(prefix=ns_exec(ns))
        host = hostfw.read(runner, iptables=False, whole=["inet filter"], trace=OWN)
        whole = parse_ruleset(nft("-j", "list", "ruleset"))
    assert host.nft is not None
    table = host.nft.table("inet", "filter")
    assert table is not None
    assert {n for n, _ in table.users} == set(OWN) - set(untraced)
    found = table.naming(OWN)
    assert found == replace(table, users=()).naming(OWN) == whole.naming(OWN)
    chains = {n: [w.split(" (")[0].split()[-1] for w in ws] for n, ws in found.items()}
    assert chains == expect
    assert all(
        w.startswith("inet filter ") and "(rule handle " in w for ws in found.values() for w in ws
    )


def test_sets_mode_names_the_rules_of_a_table_no_hook_reaches(tmp_path: Path) -> None:
    """A table without an input or forward base chain is not listed by the analysis: it
    is listed apart, and its rules naming cfallow's sets are found there too."""
    with namespace("hrt") as ns:
        nft = Nft(ns)
        nft.load("table inet filter {\n\tchain spare {\n\t}\n}\n")
        runner = Runner(prefix=ns_exec(ns))
        (tmp_path / "state").mkdir()
        ctx = Context(runner=runner, state_dir=tmp_path / "state")
        b = build("nftables", {"mode": "sets", "file": str(tmp_path / "s.nft")}, ctx)
        b.apply(b.diff(b.read(), frozenset({IPNetwork("173.245.48.0/20")})))
        nft("add", "rule", "inet", "filter", "spare", "ip", "saddr", "@cloudflare_v4", "accept")
        runner.calls.clear()
        seen = b.read()
        assert ("nft", "-t", "-j", "list", "table", "inet", "filter") in runner.calls
        (ref,) = seen.analysis.refs("cloudflare_v4")
        assert ref.startswith("inet filter spare (rule handle ")
        assert not seen.analysis.refs("cloudflare_v6")
