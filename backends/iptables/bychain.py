"""iptables-nft: read only the chains that decide the plan, where the kernel proves the
rest holds nothing of cfallow's.

``iptables-nft-save -t filter`` prints every rule of the table (0.9 s at 100,000 rules
here), most of them in chains cfallow never reads: an admin's, Docker's, Fail2Ban's
``f2b-*`` with a rule per ban (each ban a commit, so each run after one reads again).
A plan needs the parent chain (``INPUT``: cfallow's jumps and what is above them), its
own chain, every jump into that chain from anywhere (one elsewhere is drift), the
chains' names (the host analysis tells ufw, firewalld and Docker by them) and the
built-in chains' policies.

nf_tables counts per chain its rules plus every jump and goto into it (``use``: why a
chain in use cannot be deleted). So, at the ruleset generation the read is keyed by:
every chain with its count (netlink, no rule: asked with the generation, before the
read), ``iptables-nft -S INPUT`` and ``-S CHAIN`` side by side, every chain and count
again. When the generation held throughout and cfallow's chain counts exactly its
rules plus the jumps INPUT holds, nothing else jumps there, and the text is what
``*-save`` prints with the other user chains' rules left out: the same declarations
(built-ins first, then user chains by name) and lines, so an INPUT rule has the line
it has in a whole save (the analysis names a rule by it). Anything else (no filter
table yet, a tool that fails, a count that does not add up, a commit meanwhile) is
``None``: the whole table is read, as before.

The chains whose rules are left out read as empty: only the parent, the own chain and
the names are for reading in such a text. One window is left to timing: a transaction
under way counts its changes before it commits, so one deleting a stray jump and then
failing would have to span both asks (several ms and four processes apart; measured:
such a count is visible for about 0.5 ms of a 150,000-rule batch).
"""

from __future__ import annotations

from collections.abc import Sequence

from cfallow.errors import BackendError
from cfallow.netfilter import generation
from cfallow.netfilter.save import target_of

from .nft import NftIO
from .rules import Settings, observe
from .save import Table

#: nf_tables' family numbers (NFPROTO_IPV4, NFPROTO_IPV6) per IP version.
FAMILY = {4: 2, 6: 10}
PARENT = "INPUT"
BUILTINS = ("INPUT", "FORWARD", "OUTPUT")  # the filter table's, as ``*-save`` prints them
HEADER = "# iptables-nft -S by chain (cfallow): rules of the other user chains not read"
#: Rules (and jumps) in the other chains below which the whole table is read: listing
#: two chains is four processes, each fetching every rule from the kernel, where one
#: ``*-save`` per family prints them all; the listings win once many rules are not printed.
AT_LEAST = 2000


Snapshot = tuple[str, list[generation.Chain]]  # a generation and the chains at it


def read(io: NftIO, families: Sequence[int], chain: str, snap: Snapshot) -> list[str] | None:
    """Each family's filter table as ``*-save`` text with only ``INPUT``'s and ``chain``'s
    rules, read at the generation of ``snap`` (taken before); None: read the whole table
    (also where the other chains hold fewer than :data:`AT_LEAST` rules)."""
    kernel: dict[int, list[generation.Chain]] = {}
    for version in families:
        mine = [c for c in snap[1] if c.family == FAMILY[version] and c.table == "filter"]
        if not mine:  # no filter table: reading all of it costs nothing
            return None
        kernel[version] = mine
    others = sum(c.use for cs in kernel.values() for c in cs if c.name not in (PARENT, chain))
    if others < AT_LEAST:
        return None
    from concurrent.futures import ThreadPoolExecutor  # only a read needs the threads

    jobs = [(v, PARENT) for v in families]
    jobs += [(v, chain) for v in families if any(c.name == chain for c in kernel[v])]
    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            listed = dict(zip(jobs, pool.map(lambda job: io.list_chain(*job), jobs)))
    except BackendError:
        return None
    if generation.chains(io.runner) != snap:  # a commit (or a transaction under way)
        return None
    texts = []
    for version in families:
        text = _text(
            kernel[version], listed[(version, PARENT)], listed.get((version, chain)), chain
        )
        if text is None:
            return None
        texts.append(text)
    return texts


def _rules(listing: str, chain: str, head: str) -> list[str] | None:
    """``-S CHAIN``'s rule lines, its first line checked (``-P INPUT ACCEPT``, ``-N X``)."""
    lines = listing.splitlines()
    if not lines or not lines[0].startswith(head):
        return None
    rules = lines[1:]
    if any(not line.startswith(f"-A {chain} ") for line in rules):
        return None
    return rules


def _text(kernel: list[generation.Chain], parent: str, own: str | None, chain: str) -> str | None:
    """The save text of one family, or None where the counts do not prove it whole."""
    parent_rules = _rules(parent, PARENT, f"-P {PARENT} ")
    if parent_rules is None:
        return None
    policy = parent.split("\n", 1)[0].split()[2]
    own_rules: list[str] = []
    found = [c for c in kernel if c.name == chain]
    if found:
        got = None if own is None else _rules(own, chain, f"-N {chain}")
        if got is None or found[0].policy is not None:
            return None
        own_rules = got
        jumps = sum(1 for line in parent_rules if target_of(line[3 + len(PARENT) :]) == chain)
        if found[0].use != len(own_rules) + jumps:  # a jump from elsewhere (or a map)
            return None
    policies = {c.name: c.policy for c in kernel if c.policy is not None}
    policies[PARENT] = policy
    lines = [HEADER, "*filter"]
    lines += [f":{name} {policies.get(name, 'ACCEPT')} [0:0]" for name in BUILTINS]
    users = sorted(c.name for c in kernel if c.policy is None)
    lines += [f":{name} - [0:0]" for name in users]
    lines += [*parent_rules, *own_rules, "COMMIT", ""]
    return "\n".join(lines)


def unshown(
    tables: Sequence[tuple[int, Table]], settings: Settings, snap: Snapshot
) -> list[tuple[int, int]]:
    """Per family, how many references into cfallow's chain the rules read do not show:
    the kernel's count (rules plus every jump and goto into it, at ``snap``) beyond the
    chain's rules and the jumps found in ``tables`` (an nft verdict map or rule in the
    same table: ``tcp dport vmap { 8080 : jump CFALLOW }`` prints as ``-A INPUT -p tcp``)."""
    out = []
    for version, table in tables:
        where = (FAMILY[version], "filter", settings.chain)
        count = next((c.use for c in snap[1] if (c.family, c.table, c.name) == where), None)
        own = table.rules(settings.chain)
        if count is None or own is None:
            continue
        shown = len(observe(table, version, settings).jumps)
        if count > len(own) + shown:
            out.append((version, count - len(own) - shown))
    return out
