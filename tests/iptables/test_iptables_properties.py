"""Property: the iptables backend's pure diff, applied to the table it read, gives the wanted chain.

Random tables (cfallow's chain built for one list, then hand-edited: owned
rules deleted, foreign ranges inserted into the chain, the admin's rules in
INPUT), random desired lists, both modes. The plan's restore batch is applied
to the table in a pure model of ``iptables-restore --noflush``; afterwards
cfallow owns exactly the desired ranges, there are its jumps, the admin's INPUT
rules are untouched, and a second diff is empty.
"""

from __future__ import annotations

from typing import Any

from cfallow.backends.iptables.backend import Seen, Variant
from cfallow.backends.iptables.rules import observe
from cfallow.backends.iptables.save import Table
from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import IPNetwork
from support.cfdata import CURRENT, OLD

from cfallow.backend import Context, build

POOL = sorted(CURRENT | OLD | {IPNetwork("198.18.0.0/24"), IPNetwork("2001:db8::/48")}, key=str)
ADMIN = ["-p tcp -m tcp --dport 22 -j ACCEPT", "-s 192.0.2.0/24 -j DROP", "-i lo -j ACCEPT"]
NFT = Variant("nft", False)


def restore(table: Table, script: str) -> Table:
    """``iptables-restore --noflush`` of ``script`` on ``table``, as a pure function."""
    chains = {name: list(rules) for name, rules in table.chains}
    for line in script.splitlines():
        if line in ("*filter", "COMMIT"):
            continue
        if line.startswith(":"):
            chains[line[1:].split()[0]] = []
            continue
        op, chain, rest = line.split(" ", 2) if line.count(" ") >= 2 else (*line.split(" "), "")
        if op == "-D":
            chains[chain].remove(rest)
        elif op == "-A":
            chains[chain].append(rest)
        elif op == "-I":
            pos, spec = rest.split(" ", 1)
            chains[chain].insert(int(pos) - 1, spec)
        elif op == "-F":
            chains[chain] = []
        elif op == "-X":
            del chains[chain]
        else:
            raise AssertionError(f"unexpected restore line {line!r}")
    return Table(tuple((n, tuple(r)) for n, r in chains.items()), table.policies)


def step(backend: Any, table: Table, version: int, desired: Any) -> tuple[Table, Any]:
    plan = backend.diff(Seen(NFT, ((version, table),)), desired)
    for s in plan.steps:
        table = restore(table, s.script)
    return table, plan


nets = st.frozensets(st.sampled_from(POOL))


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["allow", "lockdown"]),
    st.sampled_from([4, 6]),
    nets,
    nets,
    st.lists(st.integers(0, 30), max_size=4),
    st.lists(st.sampled_from(POOL), max_size=3),
    st.lists(st.sampled_from(ADMIN), max_size=3),
)
def test_plan_applied_to_the_read_gives_exactly_the_desired_chain(
    mode: str,
    version: int,
    first: frozenset[IPNetwork],
    desired: frozenset[IPNetwork],
    deletions: list[int],
    strays: list[IPNetwork],
    admin: list[str],
) -> None:
    backend: Any = build("iptables", {"mode": mode, "ipv6": version == 6}, Context())
    fam = frozenset(n for n in desired if n.version == version)
    empty = Table((("INPUT", ()), ("FORWARD", ()), ("OUTPUT", ())))
    table, _ = step(backend, empty, version, frozenset(n for n in first if n.version == version))
    # hand edits: owned rules deleted, stray range accepts at the top, the admin's rules
    chains = {n: list(r) for n, r in table.chains}
    for i in deletions:
        ranges = [r for r in chains["CFALLOW"] if r.startswith("-s ")]
        if ranges:
            chains["CFALLOW"].remove(ranges[i % len(ranges)])
    for net in strays:
        if net.version == version:
            chains["CFALLOW"].insert(0, f"-s {net} -j ACCEPT")
    chains["INPUT"] += admin
    table = Table(tuple((n, tuple(r)) for n, r in chains.items()))

    after, plan = step(backend, table, version, fam)
    assert backend.diff(Seen(NFT, ((version, table),)), fam) == plan  # pure
    obs = observe(after, version, backend.settings)
    assert obs.current == fam
    inputs = dict(after.chains)["INPUT"]
    assert [r for r in inputs if "cfallow" in r and "-j CFALLOW" in r][:1] == [inputs[0]]
    assert sum("-j CFALLOW" in r for r in inputs) == len(backend.settings.jumps())
    assert [r for r in inputs if "-j CFALLOW" not in r] == admin
    again = backend.diff(Seen(NFT, ((version, after),)), fam)
    assert not again.changed, again

    gone, _ = step(backend, after, version, None)
    assert "CFALLOW" not in dict(gone.chains)
    assert dict(gone.chains)["INPUT"] == tuple(admin)


def test_a_lockdown_says_what_it_leaves_open() -> None:
    docker = Table((("INPUT", ()), ("FORWARD", ()), ("OUTPUT", ()), ("DOCKER-USER", ())))
    v4_only: Any = build("iptables", {"mode": "lockdown", "ipv6": False}, Context())
    notes = v4_only.diff(Seen(NFT, ((4, docker),)), CURRENT).notes
    assert any(n.startswith("lockdown covers IPv4 only (ipv6 = false)") for n in notes), notes
    assert any("ports it publishes go through FORWARD" in n for n in notes), notes
    both: Any = build("iptables", {"mode": "lockdown", "parent": "DOCKER-USER"}, Context())
    plain = Table((("INPUT", ()), ("FORWARD", ()), ("OUTPUT", ()), ("DOCKER-USER", ())))
    assert both.diff(Seen(NFT, ((4, plain), (6, plain))), CURRENT).notes == ()
    allow: Any = build("iptables", {"ipv6": False}, Context())
    assert allow.diff(Seen(NFT, ((4, docker),)), CURRENT).notes == (
        "IPv6 ranges left alone (ipv6 = false)",
    )
