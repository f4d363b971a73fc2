"""What the host analysis means for each mode: the lines the plan, ``status`` and
``cfallow backends`` print (pure functions over a :class:`cfallow.netfilter.host.Host`)."""

from __future__ import annotations

from collections.abc import Sequence

from cfallow.model import FAMILY_NAME
from cfallow.netfilter.host import IPTABLES_TABLES, Host, outcome, ports_text
from cfallow.section import PortRange

DEFAULT_PORTS = (PortRange(80, 80), PortRange(443, 443))
NFT_HINT = (
    'enable [backends.nftables] with mode = "sets" (your rule references the set) or "lockdown"'
)


def iptables_allow(
    host: Host,
    families: Sequence[int],
    protocol: str,
    ports: Sequence[PortRange],
    chain: str,
) -> tuple[str | None, tuple[str, ...]]:
    """iptables allow mode: (the one-line error when its accept cannot take effect, notes)."""
    own = IPTABLES_TABLES  # where the accept goes (its INPUT chain comes from iptables-save)
    what = ports_text(protocol, ports)
    notes: list[str] = []
    open_to_all: list[str] = []
    for version in families:
        fam = FAMILY_NAME[version]
        cf = outcome(host, version, protocol, ports, cloudflare=True, skip_tables=own)
        if cf.verdict == "drop":
            return (
                f"allow mode cannot take effect here: {cf.why} still drops {what} from "
                f"Cloudflare after iptables' accept ({fam}); {NFT_HINT}",
                (),
            )
        if cf.verdict == "unknown":
            notes.append(f"cannot tell whether iptables' accept takes effect ({fam}): {cf.why}")
        out = outcome(host, version, protocol, ports, cloudflare=False, skip_jumps={chain})
        if out.verdict == "accept":
            open_to_all.append(fam)
    if open_to_all:
        fams = "" if len(open_to_all) == len(families) else f" ({', '.join(open_to_all)})"
        notes.append(
            f"allow mode: INPUT policy is ACCEPT and nothing later drops {what}{fams} — "
            'outsiders still get in; mode = "lockdown" restricts'
        )
    return None, tuple(notes)


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


def describe(host: Host) -> list[str]:
    """The host's firewall, one line per finding."""
    lines = []
    if host.iptables:
        lines.append(f"iptables: {'nf_tables' if host.iptables == 'nft' else 'legacy'} variant")
    else:
        lines.append("iptables: not installed")
    if host.nft is None:
        lines.append(f"nftables: cannot read the ruleset ({host.nft_error})")
    else:
        hooked = [c for c in host.nft.chains if c.hook in ("input", "forward")]
        native = [c for c in hooked if (c.family, c.table) not in IPTABLES_TABLES]
        for c in native:
            lines.append(
                f"nftables: {c.where} (hook {c.hook}, priority {c.priority}, "
                f"policy {c.policy}, {len(c.rules)} rules)"
            )
        if not native:
            lines.append("nftables: no native base chain on input or forward")
    for c in host.inputs:
        lines.append(f"iptables: {c.family} filter INPUT policy {c.policy}, {len(c.rules)} rules")
    lines.append(f"firewalld: {'running' if host.firewalld else 'not running'}")
    lines.append(f"ufw: {'active' if host.ufw else 'not active'}")
    lines.append(f"docker: {'present' if host.docker else 'not present'}")
    lines.append("enforces the allowlist here: " + recommend(host))
    return lines


def recommend(host: Host, protocol: str = "tcp", ports: Sequence[PortRange] = DEFAULT_PORTS) -> str:
    """Which cfallow backend (and mode) can enforce the allowlist on this host."""
    if host.firewalld:
        return (
            'nftables mode = "lockdown" (firewalld is running: its zones decide what is '
            "accepted; lockdown restricts whatever they accept)"
        )
    if host.nft is None and not host.iptables:
        return "nothing found: neither nft nor iptables can be run here"
    error, notes = iptables_allow(host, (4, 6), protocol, ports, "CFALLOW")
    if error is not None:
        return f'nftables (mode = "sets" or "lockdown"); {error.split("; ")[0]}'
    if any(n.startswith("allow mode:") for n in notes):
        return (
            'iptables mode = "lockdown" or nftables (lockdown): nothing on this host drops '
            f"{ports_text(protocol, ports)}, so allow mode restricts nothing"
        )
    if notes:
        return f"cannot tell ({notes[0]}); nftables lockdown restricts on any host"
    return "iptables (allow or lockdown) or nftables"
