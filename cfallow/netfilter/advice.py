"""The host's firewall as ``cfallow backends`` and a verbose run describe it.

What it means for a mode is the backend's word (its ``host_advice``).
"""

from __future__ import annotations

import logging

from cfallow import backend
from cfallow.netfilter.host import IPTABLES_TABLES, Host

log = logging.getLogger("cfallow")


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


def recommend(host: Host) -> str:
    """Which cfallow backend (and mode) can enforce the allowlist on this host.

    Each installed backend answers for its own modes
    (:meth:`cfallow.backend.Backend.host_advice`); the first answer is the line.
    """
    for name in backend.installed():
        try:
            line = backend.load_class(name).host_advice(host)
        except Exception as exc:  # a broken plugin must not hide the host's facts
            log.debug("%s: no host advice: %s: %s", name, type(exc).__name__, exc)
            continue
        if line:
            return line
    if host.nft is None and not host.iptables:
        return "nothing found: neither nft nor iptables can be run here"
    return "cannot tell: no installed backend judges this host"
