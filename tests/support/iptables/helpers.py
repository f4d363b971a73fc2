"""A private iptables target for the iptables backend's tests: one namespace, one variant.

:class:`Fw` reads the namespace's tables with the variant's own ``*-save``
(never through the backend), writes the admin's rules with the variant's own
tools, and builds real :class:`IptablesBackend` instances bound to the
namespace:

* nft: in-process, every command prefixed with ``ip netns exec NS``;
* legacy: python-iptables works on its own process's namespace, so the backend
  runs in a forked child inside the namespace (:mod:`ipt_netns`). The child's
  ``PATH`` starts with a directory where ``iptables`` is the real
  ``iptables-legacy`` binary (what ``update-alternatives`` sets up on a legacy
  host), so the backend's own auto-detection picks legacy. The xtables lock
  is a file private to the test (``XTABLES_LOCKFILE``, honoured by iptables
  and cfallow alike), since the namespace's tables are private too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netaddr import IPNetwork

from cfallow.backend import Backend, Context, build
from cfallow.runner import Runner
from support import need, need_tool, ns_exec, sh
from support.iptables.iptc import load_iptc

VARIANTS = ("nft", "legacy")
CHAIN = "CFALLOW"


def jumps_for(ports: str = "80,443", protocol: str = "tcp") -> tuple[str, ...]:
    """The jumps from INPUT for ``ports`` (one per port, on the port before NAT; untracked)."""
    tail = "-m comment --comment cfallow -j CFALLOW"
    own = [f"-p {protocol} -m conntrack --ctorigdstport {p} {tail}" for p in ports.split(",")]
    untracked = "-m conntrack --ctstate UNTRACKED"
    own.append(f"-p {protocol} -m multiport --dports {ports} {untracked} {tail}")
    return tuple(own)


JUMPS = jumps_for()
_ACCEPT = re.compile(r"^-A CFALLOW -s (\S+) -j ACCEPT$")

#: The admin's own ruleset: a rule in INPUT (same port, another source; and a
#: Cloudflare range), a custom chain with a jump, policy DROP, packet counters.
ADMIN = {
    4: """*filter
:INPUT DROP [5:300]
:ADMIN - [0:0]
[7:420] -A INPUT -i lo -j ACCEPT
[9:540] -A INPUT -s 198.51.100.0/24 -p tcp -m tcp --dport 443 -j ACCEPT
[2:120] -A INPUT -s 173.245.48.0/20 -p tcp -m tcp --dport 443 -j ACCEPT
[3:180] -A INPUT -j ADMIN
[1:60] -A ADMIN -s 10.0.0.0/8 -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
""",
    6: """*filter
:INPUT DROP [4:320]
:ADMIN - [0:0]
[6:480] -A INPUT -p ipv6-icmp -j ACCEPT
[8:640] -A INPUT -s 2001:db8:1::/48 -p tcp -m tcp --dport 443 -j ACCEPT
[3:240] -A INPUT -j ADMIN
[1:80] -A ADMIN -s fd00::/8 -p tcp -m tcp --dport 22 -j ACCEPT
COMMIT
""",
}


def tool(variant: str, version: int, suffix: str = "") -> str:
    """``iptables-nft``, ``ip6tables-legacy-save``, ..."""
    return f"{'ip6tables' if version == 6 else 'iptables'}-{variant}{suffix}"


def rules_only(text: str) -> str:
    """``*-save`` output without its timestamp comments."""
    return "".join(ln + "\n" for ln in text.splitlines() if not ln.startswith("#"))


def legacy_bin(where: Path) -> Path:
    """A directory whose ``iptables``/``ip6tables`` are the legacy binaries."""
    where.mkdir(parents=True, exist_ok=True)
    for name in ("iptables", "ip6tables"):
        link = where / name
        if not link.exists():
            real = shutil.which(f"{name}-legacy")
            assert real is not None
            link.symlink_to(real)
    return where


def need_variant(variant: str) -> None:
    """The variant's tools (and python-iptables for legacy) must be installed."""
    need_tool("ip", *(tool(variant, v, s) for v in (4, 6) for s in ("", "-save", "-restore")))
    if variant == "legacy":
        try:
            # Imported once here so each forked child does not pay for it; the
            # import itself opens no table.
            load_iptc()
        except Exception as exc:  # pragma: no cover - depends on the machine
            need(False, f"python-iptables ({exc})")


@dataclass
class Fw:
    """One namespace, one iptables variant, read and written independently of cfallow."""

    ns: str
    variant: str
    tmp: Path
    runner: Runner = field(init=False)
    made: list[Backend] = field(default_factory=list)

    def __post_init__(self) -> None:
        need_variant(self.variant)
        self.lock = str(self.tmp / "xtables.lock")
        if self.variant == "nft":
            self.runner = Runner(prefix=ns_exec(self.ns))
        else:
            path = f"{legacy_bin(self.tmp / 'legacy-bin')}:{os.environ.get('PATH', '')}"
            self.runner = Runner(env={"PATH": path, "XTABLES_LOCKFILE": self.lock})

    # -- the backend ----------------------------------------------------------------
    def backend(self, **section: Any) -> Backend:
        """A fresh, real iptables backend bound to this namespace."""
        ctx = Context(
            runner=self.runner, firewall_lock=self.tmp / "cfallow.lock", state_dir=self.tmp
        )
        inner = build("iptables", dict(section), ctx)
        if self.variant == "nft":
            self.made.append(inner)
            return inner
        from support.iptables.netns import NetnsBackend

        proxy = NetnsBackend(inner, self.ns, {"XTABLES_LOCKFILE": self.lock})
        self.made.append(proxy)
        return proxy

    def writes(self) -> int:
        """Transactions issued: restore batches (nft, from the argv log) or commits (legacy)."""
        if self.variant == "nft":
            return sum(1 for argv in self.runner.calls if argv[0].endswith("-restore"))
        return sum(int(getattr(b, "writes", 0)) for b in self.made)

    # -- reading the target -------------------------------------------------------------
    def save(self, version: int, counters: bool = False, table: str = "filter") -> str:
        """A table as the variant's own ``*-save`` prints it (comments dropped)."""
        argv = [tool(self.variant, version, "-save"), "-t", table, *(["-c"] if counters else [])]
        return rules_only(sh(ns_exec(self.ns, *argv)))

    def both(self, counters: bool = False) -> str:
        return self.save(4, counters) + self.save(6, counters)

    def chain(self, version: int, name: str = CHAIN, table: str = "filter") -> list[str]:
        """The specs of ``name`` in order."""
        head = f"-A {name} "
        lines = self.save(version, table=table).splitlines()
        return [ln[len(head) :] for ln in lines if ln.startswith(head)]

    def owned(self) -> frozenset[IPNetwork]:
        """Sources of ``-s CIDR -j ACCEPT`` rules in cfallow's chain, both families."""
        found = set()
        for version in (4, 6):
            for line in self.save(version).splitlines():
                m = _ACCEPT.match(line)
                if m:
                    found.add(IPNetwork(m.group(1)).cidr)
        return frozenset(found)

    def jumps(self, version: int) -> list[str]:
        """Every ``-A CHAIN ... -j CFALLOW`` line, in order."""
        return [ln for ln in self.save(version).splitlines() if ln.endswith(f"-j {CHAIN}")]

    def foreign(self) -> tuple[str, str]:
        """Everything but cfallow's chain and jump, with counters and policies, per family."""

        def strip(text: str) -> str:
            keep = [
                ln
                for ln in text.splitlines()
                if not ln.endswith(f"-j {CHAIN}")
                and f"-A {CHAIN} " not in ln
                and not ln.startswith(f":{CHAIN} ")
            ]
            return "\n".join(keep)

        return strip(self.save(4, True)), strip(self.save(6, True))

    # -- the admin's own writes --------------------------------------------------------
    def restore(self, version: int, text: str, *, counters: bool = False) -> None:
        """``*-restore --noflush`` of the admin's own lines (the variant's tool, the lock)."""
        argv = [tool(self.variant, version, "-restore"), "--noflush", *(["-c"] if counters else [])]
        env = dict(os.environ, XTABLES_LOCKFILE=self.lock)
        proc = subprocess.run(
            ns_exec(self.ns, *argv),
            input=text,
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr

    def ipt(self, version: int, *args: str, check: bool = True) -> str | None:
        """One admin command with the variant's ``iptables`` (waits for the xtables lock);
        with ``check=False``, ``None`` when it exits non-zero."""
        env = dict(os.environ, XTABLES_LOCKFILE=self.lock)
        proc = subprocess.run(
            ns_exec(self.ns, tool(self.variant, version), "-w", "10", *args),
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if not check and proc.returncode != 0:
            return None
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def docker_starts(self, version: int) -> None:
        """What dockerd does to DOCKER-USER when it starts, call for call as moby's
        libnetwork ``arrangeUserFilterRule`` makes them: create the chain unless it
        exists (an existing one and its rules are kept), append ``-j RETURN`` unless
        present, and move ``-j DOCKER-USER`` to the top of FORWARD (delete, insert)."""
        if self.ipt(version, "-n", "-L", "DOCKER-USER", check=False) is None:
            self.ipt(version, "-N", "DOCKER-USER")
        if self.ipt(version, "-C", "DOCKER-USER", "-j", "RETURN", check=False) is None:
            self.ipt(version, "-A", "DOCKER-USER", "-j", "RETURN")
        if self.ipt(version, "-C", "FORWARD", "-j", "DOCKER-USER", check=False) is not None:
            self.ipt(version, "-D", "FORWARD", "-j", "DOCKER-USER")
        self.ipt(version, "-I", "FORWARD", "-j", "DOCKER-USER")

    def other_variant(self) -> str:
        """Both families of the other variant, all tables (``*-save`` without ``-t``)."""
        other = "legacy" if self.variant == "nft" else "nft"
        return "".join(rules_only(sh(ns_exec(self.ns, tool(other, v, "-save")))) for v in (4, 6))

    def add_admin(self) -> None:
        """Write :data:`ADMIN` (both families, with counters)."""
        for version in (4, 6):
            self.restore(version, ADMIN[version], counters=True)
