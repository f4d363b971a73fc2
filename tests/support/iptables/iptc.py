"""python-iptables (libiptc over ctypes): the import, and the former legacy writer.

cfallow no longer writes through python-iptables: its ``Rule6.in_interface``
writes the interface mask as bytes ``0x01`` instead of ``0xff`` (upstream
ldx/python-iptables issue 244), so an IPv6 ``-i lo`` also matches ``bond0``,
``tun0``, ``veth0``, ... :class:`IptcWriter` is that writer, kept (in the tests only) for
the :class:`~cfallow.backends.iptables.legacy.LegacyIO` ``writer`` seam, so a test (the
byte-level oracle, ``tests/iptables/test_iptables_oracle.py``) can put it
back and show that the oracle catches it. The kernel's raw entries are read
without it (:mod:`cfallow.backends.iptables.entries`): python-iptables is published only as
a source distribution with a C extension, so it is no dependency of cfallow
(the ``test`` extra brings it for those tests).
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import sys
from typing import Any

from cfallow.backends.iptables.diff import Ops
from cfallow.backends.iptables.legacy import Moved
from cfallow.backends.iptables.rules import FAMILY, OwnRule
from cfallow.backends.iptables.save import Table, target_of

from cfallow.errors import BackendError

XTABLES_DIRS = ("/usr/lib64/xtables", "/usr/lib/xtables", "/usr/libexec/xtables")
BUILTIN_FILTER = ("INPUT", "FORWARD", "OUTPUT")


def _xtables_dir() -> str | None:
    for path in (*sorted(glob.glob("/usr/lib/*-linux-*/xtables")), *XTABLES_DIRS):
        if os.path.isdir(path):
            return path
    return None


def load_iptc() -> Any:
    """Import python-iptables.

    Its import runs ``ldconfig -N -v`` unless ``XTABLES_LIBDIR`` names the
    extension directory (libxtables reads it too), and compilers and linkers
    to find its own helper library unless ``IPTABLES_LIBDIR`` names the
    directory it is in: both are set here when unset (about 0.1 s).
    """
    if "iptc" in sys.modules:
        return sys.modules["iptc"]
    if "XTABLES_LIBDIR" not in os.environ:
        found = _xtables_dir()
        if found:
            os.environ["XTABLES_LIBDIR"] = found
    spec = importlib.util.find_spec("iptc")
    if "IPTABLES_LIBDIR" not in os.environ and spec and spec.origin:
        os.environ["IPTABLES_LIBDIR"] = os.path.dirname(os.path.dirname(spec.origin))
    try:
        return importlib.import_module("iptc")
    except ModuleNotFoundError:
        raise BackendError(
            "python-iptables is not installed (only the former writer, kept for tests, uses it: "
            f"apt install python3-iptables, or {sys.executable} -m pip install "
            "'python-iptables>=1.0' with a C compiler)"
        ) from None
    except Exception as exc:  # python-iptables raises its own errors when libxtables is missing
        raise BackendError(f"python-iptables cannot load libxtables/libiptc: {exc}") from None


def _targets(table: Any, chain: str) -> list[str]:
    out = []
    entry = table.first_rule(chain)
    while entry:
        name = table.get_target(entry)
        out.append(name.decode() if name else "")
        entry = table.next_rule(entry)
    return out


def _rule(iptc: Any, version: int, spec: OwnRule) -> Any:
    rule = iptc.Rule6() if version == 6 else iptc.Rule()
    if spec.source:
        rule.src = spec.source
    if spec.in_iface:
        rule.in_interface = spec.in_iface
    if spec.protocol:
        rule.protocol = spec.protocol
    if spec.dports:
        rule.create_match("multiport").dports = spec.dports
    if spec.ctstate:
        rule.create_match("conntrack").ctstate = spec.ctstate
    if spec.origport:
        rule.create_match("conntrack").ctorigdstport = spec.origport
    if spec.comment:
        rule.create_match("comment").comment = spec.comment
    # Target(rule, "CHAIN") would open every table to find out CHAIN is a chain
    # (creating nat, mangle, raw, security): start from a verdict and rename it.
    target = iptc.Target(rule, "ACCEPT")
    if spec.target != "ACCEPT":
        target.standard_target = spec.target
    rule.target = target
    return rule


class IptcWriter:
    """The former writer: one python-iptables commit (autocommit off) in this process's netns.

    The caller holds the xtables lock. Rules are deleted by position, so the
    handle is checked against the read first (:class:`Moved` if it differs);
    an EAGAIN commit is :class:`Moved` too. Not used by ``sync``: see the
    module docstring.
    """

    def write(self, version: int, ops: Ops, table: Table) -> None:
        """Apply ``ops`` (computed from ``table``) in one commit: the filter part only (this
        former writer predates the mangle guard, which it leaves out)."""
        iptc = load_iptc()
        handle = (iptc.Table6 if version == 6 else iptc.Table)("filter", autocommit=False)
        try:
            handle.refresh()
            self._verify(handle, table, ops)
            self._modify(iptc, handle, ops)
            try:
                handle.commit()
            except iptc.IPTCError as exc:
                if "temporarily unavailable" in str(exc):  # EAGAIN: the table moved
                    raise Moved() from None
                raise
        except iptc.IPTCError as exc:
            raise BackendError(f"python-iptables ({FAMILY[version]}): {exc}") from None
        finally:
            handle.close()

    @staticmethod
    def _verify(handle: Any, parsed: Table, ops: Ops) -> None:
        if bool(handle.is_chain(ops.chain)) != (parsed.rules(ops.chain) is not None):
            raise Moved()
        for chain in {loc.chain for loc in ops.delete}:
            want = [target_of(s) or "" for s in parsed.rules(chain) or ()]
            if _targets(handle, chain) != want:
                raise Moved()

    @staticmethod
    def _modify(iptc: Any, handle: Any, ops: Ops) -> None:
        lib = handle._iptc  # python-iptables has no delete-by-number wrapper
        for loc in sorted(ops.delete, key=lambda loc: (loc.chain, -loc.index)):
            if lib.iptc_delete_num_entry(loc.chain.encode(), loc.index, handle._handle) != 1:
                raise iptc.IPTCError(f"can't delete rule {loc.index + 1} of {loc.chain}")
        if ops.declare:
            if handle.is_chain(ops.chain):
                handle.flush_entries(ops.chain)
            else:
                handle.create_chain(ops.chain)
        chain = iptc.Chain(handle, ops.chain)
        for spec in ops.append:
            chain.append_rule(_rule(iptc, ops.version, spec))
        for i, spec in enumerate(ops.insert):
            chain.insert_rule(_rule(iptc, ops.version, spec), i)
        for i, jump in enumerate(ops.jumps):
            iptc.Chain(handle, ops.parent).insert_rule(_rule(iptc, ops.version, jump), i)
        if ops.drop_chain:
            handle.flush_entries(ops.chain)
            handle.delete_chain(ops.chain)
        # libiptc's commit leaves a built-in chain's policy counters at what they
        # gained since the read: set them back.
        for name in BUILTIN_FILTER:
            if handle.builtin_chain(name):
                policy, counters = handle.get_policy(name)
                handle.set_policy(name, policy, counters)
