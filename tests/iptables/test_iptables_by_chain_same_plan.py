"""A read by chain plans what a whole read plans (iptables-nft, 2,500 admin rules).

Each case puts something odd into the namespace's ``ip filter`` / ``ip6 filter``
tables (a goto, native nft rules iptables prints lossily or not at all, verdict
maps, a binding chain, an incompatible base chain, an admin's chain under
cfallow's name, cfallow's chain in one family only), then plans twice: as a run
does (by chain where the kernel's counts prove it), and with the whole table
read. The plans (drift, notes, the restore batches, the error) must be the same;
where the counts cannot prove the rest holds no jump into the chain, the read
must have fallen back to the whole table.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cfallow.backends.iptables import bychain
from support import namespace, ns_exec, sh
from support.cfdata import CURRENT, OLD
from support.iptables.helpers import Fw
from support.iptables.traffic import CF, OLD_ONLY, OUTSIDE, POLICY_DROP, pair, reach
from test_iptables_by_chain import admin_chain

from cfallow.engine import run_backend
from cfallow.model import Networks
from cfallow.netfilter.save import parse_save

pytestmark = [pytest.mark.root, pytest.mark.slow]

NFT = "nft"
V4 = "iptables-nft"
V6 = "ip6tables-nft"
JUMPS = [
    "-p tcp -m conntrack --ctorigdstport 80 -m comment --comment cfallow -j CFALLOW",
    "-p tcp -m conntrack --ctorigdstport 443 -m comment --comment cfallow -j CFALLOW",
    "-p tcp -m multiport --dports 80,443 -m conntrack --ctstate UNTRACKED -m comment "
    "--comment cfallow -j CFALLOW",
]


def nft(words: str, *tail: str) -> list[str]:
    """``nft WORDS... TAIL...`` (a tail item is one argument: a set or map in braces)."""
    return [NFT, *words.split(), *tail]


def _drop_v4_chain() -> list[list[str]]:
    out = [[V4, "-D", "INPUT", *j.split()] for j in JUMPS]
    return [*out, [V4, "-F", "CFALLOW"], [V4, "-X", "CFALLOW"]]


def _admins_chain(jump_from: str) -> list[list[str]]:
    """The admin's chain ``SSH`` (cfallow's chain in these cases' config), jumped to from
    ``jump_from``."""
    return [
        [V4, "-N", "SSH"],
        [V4, "-A", "SSH", "-s", "10.0.0.0/8", "-j", "ACCEPT"],
        [V4, "-A", jump_from, "-p", "tcp", "--dport", "22", "-j", "SSH"],
    ]


#: name -> (commands after cfallow's first sync, config, desired, read by chain?)
CASES: dict[str, tuple[list[list[str]], dict[str, object], Networks | None, bool]] = {
    "goto from INPUT": (
        [[V4, "-A", "INPUT", "-p", "tcp", "--dport", "8080", "-g", "CFALLOW"]],
        {},
        CURRENT,
        True,
    ),
    "a native nft rule in INPUT jumping in": (
        [nft("add rule ip filter INPUT tcp dport 8080 jump CFALLOW")],
        {},
        CURRENT,
        True,
    ),
    "a native rule iptables prints lossily, above the jumps": (
        [nft("insert rule ip filter INPUT tcp dport", "{ 80, 443 }", "accept")],
        {},
        CURRENT,
        True,
    ),
    "a verdict map in INPUT (iptables prints no jump)": (
        [nft("add rule ip filter INPUT tcp dport vmap", "{ 8080 : jump CFALLOW }")],
        {},
        CURRENT,
        False,
    ),
    "a verdict map in the admin's chain": (
        [nft("add rule ip filter ADMIN tcp dport vmap", "{ 8080 : goto CFALLOW }")],
        {},
        CURRENT,
        False,
    ),
    "a named verdict map no rule uses": (
        [
            nft("add map ip filter m", "{ type inet_service : verdict; }"),
            nft("add element ip filter m", "{ 8080 : jump CFALLOW }"),
        ],
        {},
        CURRENT,
        False,
    ),
    "a binding chain jumping in": (
        [nft("add rule ip filter ADMIN tcp dport 8080 jump", "{ jump CFALLOW; }")],
        {},
        CURRENT,
        False,
    ),
    "an incompatible base chain in ip filter": (
        [nft("add chain ip filter mine", "{ type filter hook input priority -10; }")],
        {},
        CURRENT,
        True,
    ),
    "cfallow's chain in IPv6 only": (_drop_v4_chain(), {}, CURRENT, True),
    "a stray jump in IPv6 only, ipv6 = false": (
        [[V6, "-N", "ADMIN"], [V6, "-A", "ADMIN", "-j", "CFALLOW"]],
        {"ipv6": False},
        CURRENT,
        True,
    ),
    "lockdown with Docker's chain and FORWARD DROP": (
        [[V4, "-N", "DOCKER-USER"], [V4, "-P", "FORWARD", "DROP"], [V6, "-N", "ufw6-x"]],
        {"mode": "lockdown"},
        CURRENT,
        True,
    ),
    "removal": ([], {}, None, True),
    "an admin's chain under the configured name, jumped to from their chain": (
        _admins_chain("ADMIN"),
        {"chain": "SSH"},
        CURRENT,
        False,
    ),
    "an admin's chain under the configured name, jumped to from INPUT": (
        _admins_chain("INPUT"),
        {"chain": "SSH"},
        CURRENT,
        True,
    ),
    "the same, adopt_chain = true": (
        _admins_chain("INPUT"),
        {"chain": "SSH", "adopt_chain": True},
        CURRENT,
        True,
    ),
}


def _plan(fw: Fw, section: dict[str, object], desired: Networks | None) -> tuple[object, ...]:
    fw.runner.calls.clear()
    result = run_backend(fw.backend(**section), desired, dry_run=True)
    if result.error is not None or result.plan is None:
        return ("error", str(result.error))
    plan = result.plan
    steps = tuple((s.version, s.script) for s in plan.steps)
    return (sorted(plan.drift), list(plan.notes), steps, sorted(map(str, plan.current)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_read_by_chain_plans_what_a_whole_read_plans(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands, section, desired, by_chain = CASES[case]
    with namespace("bysame") as ns:
        fw = Fw(ns, "nft", tmp_path)
        for version in (4, 6):
            fw.restore(version, POLICY_DROP[version])
        fw.restore(4, admin_chain())
        result = run_backend(fw.backend(), CURRENT, dry_run=False)
        assert result.error is None, result.error
        for argv in commands:
            sh(ns_exec(ns, *argv))
        ours = _plan(fw, section, desired)
        listed = sum(1 for argv in fw.runner.calls if argv[1:2] == ("-S",))
        saved = sum(
            1 for a in fw.runner.calls if a[0].endswith("-save") and a[1:3] == ("-t", "filter")
        )
        assert listed > 0, "the counts were asked and INPUT listed"
        if by_chain:
            assert saved == (0 if section.get("ipv6", True) else 1), fw.runner.calls
        else:
            assert saved >= 2, "the counts do not add up: the whole table is read"
        monkeypatch.setattr(bychain, "AT_LEAST", 10**9)
        whole = _plan(fw, section, desired)
        assert not any(argv[1:2] == ("-S",) for argv in fw.runner.calls)
        assert ours == whole


def test_config_changes_over_a_kept_read_by_chain(tmp_path: Path) -> None:
    """``cfallow sync`` as the timer runs it, the config changed between runs while the
    state directory keeps a read by chain (and its analysis): mode, then the chain's name.
    Each run after a change finds it in sync, its kept text holding the kernel's INPUT
    and chain, and the traffic follows the
    config: allow lets outsiders in (policy ACCEPT), lockdown stops them, the new chain
    holds the new list."""
    from test_iptables_by_chain import commit
    from test_iptables_carry import Host

    with pair() as p:
        fw = Fw(p.server, "nft", tmp_path)
        fw.restore(4, admin_chain())
        host = Host(fw, "")
        for networks in (CURRENT, CURRENT):
            assert host.sync(networks).returncode == 0
        commit(fw, 0)
        steps = [
            ("", OLD, "CFALLOW", {CF[0]: True, OUTSIDE[0]: True, CF[1]: True, OUTSIDE[1]: True}),
            ('mode = "lockdown"\n', OLD, "CFALLOW", None),
            ('mode = "lockdown"\nchain = "CFNEW"\n', CURRENT, "CFNEW", None),
            # allow again: the old lockdown chain, left with its jumps by the rename, still
            # drops outsiders below the new chain's jumps (as a whole read plans it too)
            ('chain = "CFNEW"\n', OLD, "CFNEW", None),
        ]
        for i, (config, networks, chain, open_to) in enumerate(steps):
            host.conf.write_text(f'[backends.iptables]\nvariant = "nft"\n{config}')
            proc = host.sync(networks)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            if i == 0:
                assert host.calls("-save") == 0, "read by chain"
            again = host.sync(networks)  # what it keeps now is under the kernel's generation
            assert again.returncode == 0 and "in sync" in again.stdout, again.stdout + again.stderr
            for version, kept in zip((4, 6), host.kept()):
                whole, ours = parse_save(fw.save(version)), parse_save(kept)
                for name in ("INPUT", chain):
                    assert ours.rules(name) == whole.rules(name), (i, version, name)
            want = open_to or {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}
            assert reach(p) == want, (i, config)
            assert p.can_connect(OLD_ONLY) is (networks == OLD), (i, config)
