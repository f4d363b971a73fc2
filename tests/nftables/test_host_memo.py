"""The host analysis is kept for the ruleset generation it was made for: an unchanged
ruleset is not listed again, and any commit (the admin's or cfallow's) is seen."""

from __future__ import annotations

from pathlib import Path

import pytest
from netaddr import IPNetwork
from support import namespace, ns_exec
from support.nftables.helpers import ADMIN_DROP, OPEN_443, Nft

from cfallow.backend import AnyBackend, Context, build
from cfallow.netfilter import generation
from cfallow.runner import Runner

pytestmark = pytest.mark.root


def admin_reads(runner: Runner) -> list[tuple[str, ...]]:
    """The commands that listed the admin's rules (its table, or one of its chains)."""
    return [
        c
        for c in runner.calls
        if c[:1] == ("nft",)
        and any(
            c[i : i + 3] in {("table", "inet", "filter"), ("chain", "inet", "filter")}
            for i in range(len(c))
        )
    ]


DROPS = "lockdown only restricts: inet filter input: policy drop drops tcp/80,443"


def backend(ns: str, tmp: Path, mode: str) -> tuple[AnyBackend, Runner]:
    runner = Runner(prefix=ns_exec(ns))
    (tmp / "state").mkdir(exist_ok=True)
    ctx = Context(runner=runner, state_dir=tmp / "state")
    return build("nftables", {"mode": mode, "file": str(tmp / "cfallow.nft")}, ctx), runner


def notes(b: AnyBackend) -> tuple[str, ...]:
    return b.diff(b.read(), frozenset()).notes  # type: ignore[no-any-return]


def test_an_unchanged_ruleset_is_not_listed_again_and_a_change_is_seen(tmp_path: Path) -> None:
    with namespace("memo") as ns:
        nft = Nft(ns)
        nft.load(ADMIN_DROP % "")
        b, runner = backend(ns, tmp_path, "lockdown")
        first = notes(b)
        assert any(n.startswith(DROPS) for n in first)
        read = admin_reads(runner)
        assert read and len(set(read)) == len(read)  # listed, each part once
        runner.calls.clear()
        assert notes(b) == first  # the same verdict, from the memo
        assert not admin_reads(runner)
        nft("flush", "ruleset")
        nft.load(ADMIN_DROP % OPEN_443)  # the admin now accepts 80 and 443
        runner.calls.clear()
        after = notes(b)
        assert admin_reads(runner) == read, "a changed ruleset was not read again"
        assert not any(n.startswith(DROPS) for n in after), "a stale verdict was kept"


def test_sets_mode_keeps_the_references_a_removal_names(tmp_path: Path) -> None:
    with namespace("memo") as ns:
        nft = Nft(ns)
        nft.load(ADMIN_DROP % "")
        b, runner = backend(ns, tmp_path, "sets")
        nft.load(
            "table inet filter {\n\tset cloudflare_v4 { type ipv4_addr; flags interval; "
            'comment "cfallow"; elements = { 173.245.48.0/20 }; }\n}\n'
        )
        nft("add", "rule", "inet", "filter", "input", "ip", "saddr", "@cloudflare_v4", "accept")
        first = b.diff(b.read(), None).notes
        runner.calls.clear()
        again = b.diff(b.read(), None).notes
        assert not admin_reads(runner)
        assert again == first and any("still referenced by inet filter input" in n for n in again)


def test_the_generation_names_boot_namespace_and_commit(tmp_path: Path) -> None:
    with namespace("memo") as ns, namespace("memo") as other:
        runner = Runner(prefix=ns_exec(ns))
        before = generation.generation(runner)
        assert before is not None and before == generation.generation(runner)
        Nft(ns).load("table inet t {\n}\n")
        after = generation.generation(runner)
        assert after is not None and after != before
        assert generation.generation(Runner(prefix=ns_exec(other))) not in (before, after)


def test_sets_mode_sees_the_rules_naming_its_sets_change_between_runs(tmp_path: Path) -> None:
    """A rule naming cfallow's set that the admin adds, moves or deletes between two runs
    is seen at the next run (not the analysis kept for the previous ruleset): the removal
    empties a set a rule still names, and deletes the one no rule names any more."""
    with namespace("memo") as ns:
        nft = Nft(ns)
        nft.load(ADMIN_DROP % "")
        b, _ = backend(ns, tmp_path, "sets")
        desired = frozenset({IPNetwork("173.245.48.0/20"), IPNetwork("2400:cb00::/32")})
        b.apply(b.diff(b.read(), desired))
        seen = b.read()
        assert seen.analysis.refs("cloudflare_v4") == seen.analysis.refs("cloudflare_v6") == []
        nft("add", "chain", "inet", "filter", "web")
        nft("add", "rule", "inet", "filter", "web", "ip", "saddr", "@cloudflare_v4", "accept")
        nft("add", "rule", "inet", "filter", "input", "jump", "web")
        seen = b.read()
        (ref,) = seen.analysis.refs("cloudflare_v4")
        assert ref.startswith("inet filter web (rule handle ") and not seen.analysis.refs(
            "cloudflare_v6"
        )
        handle = ref.split("handle ")[1].rstrip(")")
        nft("delete", "rule", "inet", "filter", "web", "handle", handle)
        nft("add", "rule", "inet", "filter", "input", "ip6", "saddr", "@cloudflare_v6", "accept")
        seen = b.read()
        assert seen.analysis.refs("cloudflare_v4") == []
        (ref,) = seen.analysis.refs("cloudflare_v6")
        assert ref.startswith("inet filter input (rule handle ")
        plan = b.diff(seen, None)
        assert any(
            "cloudflare_v6 emptied, not deleted: still referenced by " + ref in n
            for n in plan.notes
        )
        b.apply(plan)
        assert "cloudflare_v4" not in nft.ruleset()  # no rule names it: deleted
        assert nft.elements("inet", "filter", "cloudflare_v6") == frozenset()
        assert "ip6 saddr @cloudflare_v6 accept" in nft.ruleset()  # the admin's rule stays
