"""What the host analysis means for the nftables modes (pure, over a netfilter ``Host``)."""

from __future__ import annotations

from collections.abc import Sequence

from cfallow.model import FAMILY_NAME
from cfallow.netfilter.host import Host, outcome, ports_text
from cfallow.section import PortRange


def _joined(found: list[tuple[int, str]], line: str) -> tuple[str, ...]:
    """One line per distinct reason, naming the families it holds for."""
    out: dict[str, list[str]] = {}
    for version, why in found:
        out.setdefault(why, []).append(FAMILY_NAME[version])
    return tuple(line.format(why=why, fams=", ".join(fams)) for why, fams in out.items())


def lockdown_notes(
    host: Host, families: Sequence[int], protocol: str, ports: Sequence[PortRange], table: str
) -> tuple[str, ...]:
    """nftables lockdown only restricts: say when nothing else accepts the ports at all."""
    fam, name = table.split(" ", 1)
    found = []
    for version in families:
        cf = outcome(host, version, protocol, ports, cloudflare=True, skip_tables={(fam, name)})
        if cf.verdict == "drop":
            found.append((version, cf.why))
    what = ports_text(protocol, ports)
    return _joined(
        found,
        "lockdown only restricts: {why} drops " + what + " from Cloudflare too ({fams}); "
        "accept the ports in your own ruleset",
    )


def sets_notes(
    host: Host,
    families: Sequence[int],
    protocol: str,
    ports: Sequence[PortRange],
    sets: Sequence[str],
) -> tuple[str, ...]:
    """nftables sets mode: say when the admin's rules do not let the set's sources in."""
    blocked, open_ = [], []
    for version in families:
        cf = outcome(host, version, protocol, ports, cloudflare=True, own_sets=sets)
        if cf.verdict == "drop":
            blocked.append((version, cf.why))
        out = outcome(host, version, protocol, ports, cloudflare=False, own_sets=sets)
        if out.verdict == "accept":
            open_.append((version, "-"))
    what = ports_text(protocol, ports)
    return _joined(
        blocked,
        "sets mode: {why} drops " + what + f" from Cloudflare ({{fams}}); "
        f"does a rule accept 'saddr @{sets[0]}'?",
    ) + _joined(
        open_,
        "sets mode: nothing drops " + what + " from outsiders ({fams}): the sets restrict "
        'nothing; mode = "lockdown" restricts',
    )


def recommend(host: Host) -> str | None:
    """Where firewalld runs, its zones decide what is accepted: lockdown restricts them."""
    if not host.firewalld:
        return None
    return (
        'nftables mode = "lockdown" (firewalld is running: its zones decide what is '
        "accepted; lockdown restricts whatever they accept)"
    )
