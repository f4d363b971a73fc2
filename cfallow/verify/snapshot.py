"""The host's side of a verify: read-only snapshots of its network and its netfilter state."""

from __future__ import annotations

import json
from dataclasses import dataclass

from cfallow.errors import BackendError, CommandNotFound
from cfallow.netfilter import xtables
from cfallow.netfilter.save import SAVE
from cfallow.runner import Runner
from cfallow.verify import ipsets as ipsetmod
from cfallow.verify import recent as recentmod
from cfallow.verify.overlap import together


@dataclass(frozen=True)
class Interface:
    """One host interface: name and addresses (``ADDR/PREFIX``, link-local left out)."""

    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class HostNet:
    """The host's interfaces and which one is the uplink (the default route's)."""

    interfaces: tuple[Interface, ...]
    uplink: str

    def address(self, version: int) -> str | None:
        """The uplink's first address of ``version`` (no prefix), if it has one."""
        for iface in self.interfaces:
            if iface.name == self.uplink:
                for a in iface.addresses:
                    if (":" in a) == (version == 6):
                        return a.split("/")[0]
        return None


@dataclass(frozen=True)
class Snapshot:
    """Everything a scratch origin needs to be the host's firewall."""

    net: HostNet
    ruleset: str  # ``nft list ruleset``
    ipsets: str  # ``ipset save`` (sets are per namespace; x_tables rules name them)
    legacy: tuple[xtables.Blob, ...]
    #: each set's index on the host (a legacy rule's blob names its set by it)
    ipset_index: tuple[tuple[str, int], ...] = ()
    #: the ``-m recent`` lists (addresses and hits), state beside the rules
    recent: recentmod.Lists = ()


def _json(runner: Runner, argv: list[str]) -> list[dict[str, object]]:
    out = runner.run(argv).stdout.strip()
    return json.loads(out) if out else []


def read_net(runner: Runner, uplink: str | None = None) -> HostNet:
    """The host's interfaces (``ip -j addr``) and uplink (default route; else the first one)."""
    ifaces = []
    for link in _json(runner, ["ip", "-j", "addr", "show"]):
        name = str(link["ifname"])
        if name == "lo":
            continue
        addrs = tuple(
            f"{a['local']}/{a['prefixlen']}"
            for a in link.get("addr_info", [])  # type: ignore[attr-defined]
            if a.get("family") in ("inet", "inet6") and a.get("scope") != "link"
        )
        ifaces.append(Interface(name.split("@", maxsplit=1)[0], addrs))
    if not ifaces:
        raise BackendError("verify: the host has no network interface besides lo")
    names = [i.name for i in ifaces]
    if uplink is None:
        for argv in (
            ["ip", "-j", "route", "show", "default"],
            ["ip", "-j", "-6", "route", "show", "default"],
        ):
            routes = [r for r in _json(runner, argv) if r.get("dev") in names]
            if routes:
                uplink = str(routes[0]["dev"])
                break
        else:
            with_addr = [i.name for i in ifaces if i.addresses]
            uplink = (with_addr or names)[0]
    if uplink not in names:
        raise BackendError(f"verify: the host has no interface {uplink!r}")
    return HostNet(tuple(ifaces), uplink)


def xt_nft(runner: Runner) -> dict[int, str]:
    """iptables-nft's own save text per family (read only when the ruleset will not load)."""
    out = {}
    for version, tool in SAVE["nft"].items():
        try:
            out[version] = _optional(runner, [tool])
        except BackendError:
            out[version] = ""
    return out


def _optional(runner: Runner, argv: list[str]) -> str:
    try:
        return runner.run(argv).stdout
    except CommandNotFound:
        return ""


def read(runner: Runner, uplink: str | None = None) -> Snapshot:
    """Snapshot the host read-only: interfaces, ``nft list ruleset``, legacy x_tables blobs."""
    net, ruleset, ipsets = together(
        lambda: read_net(runner, uplink),
        lambda: _optional(runner, ["nft", "list", "ruleset"]),
        lambda: _optional(runner, ["ipset", "save"]),
    )
    try:
        legacy = tuple(xtables.read_all())
    except OSError as exc:
        raise BackendError(
            f"verify: cannot read the legacy x_tables: {exc.strerror or exc}"
        ) from None
    try:  # read where the x_tables are: in this process's namespace
        index = tuple(sorted(ipsetmod.indexes(ipsetmod.names(ipsets)).items()))
    except OSError as exc:
        raise BackendError(
            f"verify: cannot read the numbers of the host's ipsets: {exc.strerror or exc}"
        ) from None
    return Snapshot(net, ruleset, ipsets, legacy, index, recentmod.read())
