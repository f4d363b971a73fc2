"""What the host analysis means for iptables' allow mode (pure, over a netfilter ``Host``)."""

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


def recommend(
    host: Host, protocol: str = "tcp", ports: Sequence[PortRange] = DEFAULT_PORTS
) -> str | None:
    """Whether iptables (and which mode) enforces the allowlist on this host, else what does.

    None where it has nothing to say: firewalld decides (the nftables backend
    speaks), or neither nft nor iptables runs here.
    """
    if host.firewalld or (host.nft is None and not host.iptables):
        return None
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
