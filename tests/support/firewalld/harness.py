"""The firewalld backend bound to a real private firewalld, read independently of it.

What cfallow owns is read from the kernel (``nft -j list set`` inside the
namespace: what packets meet) and from the permanent XML files (what a reload
or a boot restores); the two must agree. Everything else is the admin's:
compared as the permanent files (firewalld's ``.old`` backups aside, and
cfallow's own rules taken out of the admin's zone file) and as
``firewall-cmd --list-all-zones`` without cfallow's zone and rules.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

from netaddr import IPNetwork

from cfallow.backend import AnyBackend, Context, build
from cfallow.testing import Harness, Nets
from support import ns_exec, sh
from support.firewalld.daemon import BusMonitor, Firewalld, firewalld
from support.iptables.traffic import Pair, pair

SETS = {4: "cloudflare-v4", 6: "cloudflare-v6"}
OURS = re.compile(r'ipset="cloudflare-v[46]"|ipset:cloudflare-v[46]')


def kernel_set(fw: Firewalld, name: str) -> Nets | None:
    """The elements of ``inet firewalld NAME`` in the kernel (None: no such set)."""
    proc = subprocess.run(
        ns_exec(fw.ns, "nft", "-j", "list", "set", "inet", "firewalld", name),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return None
    for item in json.loads(proc.stdout)["nftables"]:
        if "set" in item:
            out = set()
            for elem in item["set"].get("elem", []):
                if isinstance(elem, str):
                    out.add(IPNetwork(elem).cidr)
                else:
                    p = elem["prefix"]
                    out.add(IPNetwork(f"{p['addr']}/{p['len']}").cidr)
            return frozenset(out)
    return None  # pragma: no cover


def file_set(fw: Firewalld, name: str) -> Nets | None:
    """The entries of the permanent ipset file (None: no file)."""
    path = fw.etc / "ipsets" / f"{name}.xml"
    if not path.exists():
        return None
    root = ElementTree.parse(path).getroot()
    return frozenset(IPNetwork(e.text or "").cidr for e in root.findall("entry"))


def owned(fw: Firewalld) -> Nets:
    """cfallow's entries; the kernel's and the permanent file's must be the same."""
    out: set[IPNetwork] = set()
    for name in SETS.values():
        run, perm = kernel_set(fw, name), file_set(fw, name)
        assert (run or frozenset()) == (perm or frozenset()), (
            f"{name}: runtime {run} != permanent {perm}"
        )
        out |= run or frozenset()
    return frozenset(out)


def admin_files(fw: Firewalld) -> dict[str, bytes]:
    """The permanent config without cfallow's files, backups, or cfallow's rule lines."""
    out = {}
    for rel, data in fw.files().items():
        if rel.endswith(".old") or re.match(
            r"(ipsets/cloudflare-v[46]|zones/cloudflare)\.xml$", rel
        ):
            continue
        out[rel] = _without_our_rules(data) if rel.startswith("zones/") else data
    return out


def _without_our_rules(data: bytes) -> bytes:
    root = ElementTree.fromstring(data)
    for rule in root.findall("rule"):
        src = rule.find("source")
        if src is not None and OURS.search(f'ipset="{src.get("ipset", "")}"'):
            root.remove(rule)
    return ElementTree.tostring(root)


def admin_runtime(fw: Firewalld) -> str:
    """``--list-all-zones`` without cfallow's zone, and without cfallow's rich rules."""
    blocks = fw.cmd("--list-all-zones").split("\n\n")
    keep = [b for b in blocks if not b.startswith("cloudflare")]
    return "\n\n".join("\n".join(ln for ln in b.splitlines() if not OURS.search(ln)) for b in keep)


@dataclass
class FwHarness(Harness):
    """Contract harness: one private firewalld, cfallow in ``mode``."""

    fw: Firewalld
    monitor: BusMonitor
    mode: str = "zone"
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        base: dict[str, Any] = {"bus": self.fw.address, "config_dir": str(self.fw.etc)}
        base.update(mode=self.mode, ports=[443])
        if "services" in self.extra:
            del base["ports"]
        return {**base, **self.extra}

    def backend(self) -> AnyBackend:
        return build("firewalld", self.config(), Context())

    def owned(self) -> Nets:
        return owned(self.fw)

    def add_foreign(self) -> None:
        """The admin's own: a port and a rich rule on a Cloudflare address, a trusted source."""
        for args in (
            ("--zone=public", "--add-port=8443/tcp"),
            ("--zone=public", "--add-rich-rule", _ADMIN_RULE),
            ("--zone=trusted", "--add-source=203.0.113.0/24"),
        ):
            self.fw.cmd("--permanent", *args)
            self.fw.cmd(*args)

    def foreign(self) -> object:
        return admin_files(self.fw), admin_runtime(self.fw)

    def writes(self) -> int:
        return self.monitor.count()


_ADMIN_RULE = (
    'rule family="ipv4" source address="104.16.0.0/13" port port="8080" protocol="tcp" accept'
)


@dataclass
class Lab:
    """Namespaces, traffic helpers, a firewalld in the server namespace and a bus monitor."""

    net: Pair
    fw: Firewalld
    monitor: BusMonitor

    def loopback(self, addr: str, port: int = 443) -> bool:
        """A connect from inside the server namespace to its own loopback."""
        code = (
            "import socket,sys;s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else "
            "socket.AF_INET);s.settimeout(0.5);sys.exit(s.connect_ex((sys.argv[1],int(sys.argv[2]))))"
        )
        argv = ns_exec(self.net.server, sys.executable, "-c", code, addr, str(port))
        return subprocess.run(argv, check=False, timeout=10).returncode == 0


@contextlib.contextmanager
def lab(setup: tuple[tuple[str, ...], ...] = ()) -> Iterator[Lab]:
    """Two namespaces, firewalld in the server one; ``setup``: the admin's firewall-cmd args."""
    with pair() as net, firewalld(net.server) as fw:
        for args in setup:
            fw.cmd("--permanent", *args)
            fw.cmd(*args)
        fw.snapshot_pristine()
        monitor = BusMonitor(fw)
        try:
            yield Lab(net, fw, monitor)
        finally:
            monitor.close()


def nft_ruleset(fw: Firewalld) -> str:
    return sh(ns_exec(fw.ns, "nft", "list", "ruleset"))
