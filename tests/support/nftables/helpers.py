"""The nftables backend bound to a test namespace, read back independently with ``nft -j``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from netaddr import IPNetwork

from cfallow.backend import AnyBackend, Context, build
from cfallow.runner import Runner
from cfallow.testing import Harness, Nets
from support import need_tool, ns_exec, sh

#: Debian's /etc/nftables.conf style: policy drop, loopback, established, ICMP, ssh.
ADMIN_DROP = """table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		iif "lo" accept
		ct state established,related accept
		ct state invalid drop
		meta l4proto ipv6-icmp accept
		meta l4proto icmp accept
		tcp dport 22 accept
%s	}
	chain forward {
		type filter hook forward priority filter; policy drop;
	}
	chain output {
		type filter hook output priority filter; policy accept;
	}
}
"""
#: The admin's rules that let the sets in (sets mode).
SET_RULES = (
    "\t\tip saddr @cloudflare_v4 tcp dport { 80, 443 } accept\n"
    "\t\tip6 saddr @cloudflare_v6 tcp dport { 80, 443 } accept\n"
)
#: The admin accepts 443 (and 80) for everyone.
OPEN_443 = "\t\ttcp dport { 80, 443 } accept\n"


def admin_ruleset(rules: str = "", include_sets: Path | None = None) -> str:
    """The admin's ``inet filter`` (optionally including cfallow's sets inside the block)."""
    text = ADMIN_DROP % rules
    if include_sets is not None:
        text = text.replace(
            "table inet filter {\n", f'table inet filter {{\n\tinclude "{include_sets}"\n', 1
        )
    return text


class Nft:
    """``nft`` inside one namespace."""

    def __init__(self, ns: str) -> None:
        need_tool("nft")
        self.ns = ns

    def __call__(self, *args: str, input: str | None = None) -> str:
        return sh(ns_exec(self.ns, "nft", *args), input=input)

    def load(self, text: str) -> None:
        """``nft -f -`` of ``text``."""
        self("-f", "-", input=text)

    def ruleset(self) -> str:
        """``nft list ruleset`` text."""
        return self("list", "ruleset")

    def items(self) -> list[dict[str, Any]]:
        """``nft -j list ruleset`` items (no metainfo)."""
        doc = json.loads(self("-j", "list", "ruleset"))["nftables"]
        return [i for i in doc if "metainfo" not in i]

    def elements(self, family: str, table: str, name: str) -> Nets:
        """A set's elements as networks (empty when the set is missing)."""
        proc = subprocess.run(
            ns_exec(self.ns, "nft", "-j", "list", "set", family, table, name),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            return frozenset()
        (body,) = [i["set"] for i in json.loads(proc.stdout)["nftables"] if "set" in i]
        out = set()
        for e in body.get("elem", []):
            if isinstance(e, str):
                out.add(IPNetwork(e).cidr)
            else:
                out.add(IPNetwork(f"{e['prefix']['addr']}/{e['prefix']['len']}").cidr)
        return frozenset(out)


class NftHarness(Harness):
    """The contract's harness: the nftables backend in one mode inside ``ns``."""

    def __init__(self, ns: str, tmp: Path, mode: str, **extra: object) -> None:
        self.nft = Nft(ns)
        self.tmp = tmp
        self.mode = mode
        self.file = tmp / "cfallow.nft"
        self.runner = Runner(prefix=ns_exec(ns))
        self.extra = {k: v for k, v in extra.items() if k != "table" or mode == "sets"}
        self.table = ("inet", "cfallow") if mode == "lockdown" else ("inet", "filter")
        self._stat: tuple[int, int] | None = None
        self._file_writes = 0
        if mode == "sets":
            self.nft.load(
                "table inet filter {\n\tchain input {\n\t\ttype filter hook input "
                "priority filter; policy accept;\n\t}\n}\n"
            )

    def section(self) -> dict[str, object]:
        return {"mode": self.mode, "file": str(self.file), **self.extra}

    def backend(self) -> AnyBackend:
        (self.tmp / "state").mkdir(exist_ok=True)  # as the CLI has: the memos are kept there
        ctx = Context(runner=self.runner, state_dir=self.tmp / "state")
        return build("nftables", self.section(), ctx)

    def owned(self) -> Nets:
        fam, table = self.table
        return self.nft.elements(fam, table, "cloudflare_v4") | self.nft.elements(
            fam, table, "cloudflare_v6"
        )

    def add_foreign(self) -> None:
        self.nft.load(
            "table inet filter {\n\tset admin_v4 { type ipv4_addr; flags interval; "
            "elements = { 104.16.0.0/13, 10.0.0.0/8 } }\n"
            "\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n"
            "\t\ttcp dport 22 accept\n\t\tip saddr @admin_v4 tcp dport 443 accept\n\t}\n}\n"
        )

    def foreign(self) -> object:
        ours = {"cloudflare_v4", "cloudflare_v6"}
        out = []
        for item in self.nft.items():
            body = next(iter(item.values()))
            if (body.get("family"), body.get("table", body.get("name"))) == ("inet", "cfallow"):
                continue
            if "set" in item and body["name"] in ours:
                continue
            out.append(item)
        return out

    def writes(self) -> int:
        try:
            st = os.stat(self.file)
            now: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            now = None
        if now != self._stat:
            self._file_writes += 1
            self._stat = now
        nft_writes = sum(1 for c in self.runner.calls if c[:2] == ("nft", "-f"))
        return nft_writes + self._file_writes


def cli(ns: str, tmp: Path, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m cfallow --config C --state-dir S ARGS`` inside ``ns``."""
    conf = tmp / "config.toml"
    conf.write_text(config)
    argv = [sys.executable, "-m", "cfallow", "--config", str(conf), "--state-dir", str(tmp / "st")]
    return subprocess.run(
        ns_exec(ns, *argv, *args), capture_output=True, text=True, timeout=120, check=False
    )
