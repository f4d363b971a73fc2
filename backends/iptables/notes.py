"""What a plan says about the host around cfallow's chain (pure): a lockdown's gaps, a
table put to sleep, references into the chain that no rule read shows, and chains of
cfallow's that this configuration does not own.

Each is said on every plan while it lasts (or refuses the plan where the configuration
cannot keep its promise at all): none of it is cfallow's to change.
"""

from __future__ import annotations

from collections.abc import Sequence

from cfallow.errors import BackendError

from .rules import Settings, is_own_jump
from .save import Table, target_of

#: The nf_tables family of iptables-nft's tables, per IP version.
FAMILY_NFT = {4: "ip", 6: "ip6"}
Tables = Sequence[tuple[int, Table]]


def tables_written(settings: Settings, families: Sequence[int]) -> tuple[str, ...]:
    """The nf_tables tables a configuration writes: ``ip filter``, ``ip6 mangle``..."""
    names = ("filter", "mangle") if settings.parent == "DOCKER-USER" else ("filter",)
    return tuple(f"{FAMILY_NFT[v]} {n}" for v in families for n in names)


def asleep(dormant: Sequence[str], settings: Settings) -> list[str]:
    """A table put to sleep (``flags dormant``) is on no hook: none of its rules sees a
    packet. A lockdown there lets everyone in (refused); allow mode's accept does
    nothing there (said)."""
    out = []
    for table in dormant:
        what = f"table {table} is dormant (flags dormant): none of its rules sees a packet"
        wake = f"nft add table {table} wakes it"
        if settings.mode == "lockdown":
            raise BackendError(f"{what}, so the lockdown lets everyone in ({wake})")
        out.append(f"{what}, cfallow's accept among them ({wake})")
    return out


def hidden(counts: Sequence[tuple[int, int]], settings: Settings) -> list[str]:
    """Per family, the references into the chain that no rule read shows."""
    return [
        f"IPv{version}: {n} reference(s) into chain {settings.chain} that iptables does not "
        f"show (an nft verdict map or rule in the same table: nft list table "
        f"{FAMILY_NFT[version]} filter shows it): the chain judges that traffic too"
        for version, n in counts
    ]


def elsewhere(tables: Tables, settings: Settings) -> list[str]:
    """Jumps with cfallow's comment from the parent into another chain: a chain of an
    earlier configuration (``chain`` renamed), or of another cfallow configuration on
    this host; left alone."""
    s, out = settings, []
    for version, table in tables:
        targets = (target_of(spec) for spec in table.rules(s.parent) or () if is_own_jump(spec))
        found = {t for t in targets if t is not None and t != s.chain}
        out += [
            f"IPv{version}: {s.parent} jumps to chain {name} with cfallow's comment: not "
            f"this configuration's chain ({s.chain}), so it stays and still judges that "
            "traffic (renamed? `cfallow remove` with the old chain name removes it)"
            for name in sorted(found)
        ]
    return out


def uncovered(
    nat: Sequence[str], tables: Tables, settings: Settings, families: Sequence[int]
) -> list[str]:
    """What a lockdown in this configuration leaves open: the host's DNAT (``nat``, the
    analysis's notes), IPv6 with ``ipv6 = false``, Docker's published ports."""
    s = settings
    if s.mode != "lockdown":
        return []
    out = list(nat)
    if 6 not in families:
        out.append(
            "lockdown covers IPv4 only (ipv6 = false): IPv6 clients still reach "
            f"{s.protocol}/{','.join(map(str, s.ports))} unless something else drops them"
        )
    if s.parent == "INPUT" and any(t.rules("DOCKER-USER") is not None for _, t in tables):
        out.append(
            "Docker is here (DOCKER-USER exists): ports it publishes go through FORWARD, "
            'which a lockdown in INPUT does not cover (parent = "DOCKER-USER" covers them, '
            "not the host's own ports)"
        )
    return out
