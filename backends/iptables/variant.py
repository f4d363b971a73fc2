"""Which iptables a host uses (``iptables --version``), and the reader/writer for it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cfallow.errors import BackendError, CommandNotFound, NotInstalled
from cfallow.netfilter.generation import Memo
from cfallow.netfilter.save import RESTORE, SAVE, detect, version_text
from cfallow.runner import Runner

from .legacy import LegacyIO, Writer
from .nft import NftIO

MISSING = "no iptables command found (install the iptables package)"
#: A host without iptables: its tables are empty to cfallow, which cannot write them.
EMPTY_FILTER = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"


@dataclass(frozen=True)
class Variant:
    """Which iptables this host uses, and how cfallow reads and writes it."""

    kind: str  # "nft", "legacy", or "none" (not installed: plans only, see NONE)
    legacy_tools: bool  # legacy hosts of iptables >= 1.8 have the *-legacy-* names
    note: str | None = None  # an explicit variant the host's own iptables does not use


#: No iptables on this host (``variant = "auto"``): a plan against empty tables, no write
#: (the backend's read uses it when its check finds no ``iptables`` command).
NONE = Variant(
    "none",
    False,
    "no iptables command here: planned against an empty ruleset; "
    "a real sync needs the iptables package installed first",
)


def probe(runner: Runner, wanted: str, log: logging.Logger, memo: Memo | None = None) -> Variant:
    """The variant to use: what the host's ``iptables`` is, or ``wanted`` (with a warning
    naming the truth when the host uses the other one)."""
    try:
        text = version_text(runner, memo)
        detected, legacy_tools = detect(text)
    except CommandNotFound:
        if wanted == "auto":
            raise NotInstalled(MISSING) from None
        text, detected, legacy_tools = "", wanted, True
    except BackendError:
        if wanted == "auto":
            raise
        text, detected, legacy_tools = "", wanted, True
    kind = detected if wanted == "auto" else wanted
    legacy_tools = legacy_tools or detected != "legacy"  # pre-1.8 hosts have no *-legacy-*
    note = None
    if kind != detected:
        note = (
            f"variant = {kind}, but this host's iptables is {detected} ({text.strip()}): "
            f"rules in the {kind} tables are enforced (their DROPs drop; their ACCEPTs "
            f"cannot undo a DROP in the {detected} tables) but the admin's iptables "
            "command does not list them"
        )
        log.warning("iptables: %s", note)
    return Variant(kind, legacy_tools, note)


def io_for(
    runner: Runner,
    variant: Variant,
    chain: str,
    writer: Writer | None = None,
    *,
    mangle: bool = False,
) -> NftIO | LegacyIO:
    """A reader/writer for ``variant`` (``writer``: the legacy writer seam; ``mangle``:
    read the mangle table beside filter)."""
    if variant.kind == NONE.kind:
        raise NotInstalled(MISSING)
    if variant.kind == "nft":
        return NftIO(runner, mangle=mangle)
    names = "legacy" if variant.legacy_tools else "old"
    tools = (SAVE[names], RESTORE[names])
    io = LegacyIO(runner, *tools, chain=chain, mangle=mangle)
    if writer is not None:
        io.writer = writer
    return io
