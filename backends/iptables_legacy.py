"""iptables-legacy I/O: read with ``*-save``, write with python-iptables, one commit per family.

A legacy table is replaced as a whole blob (one ``IPT_SO_SET_REPLACE``), so
one python-iptables commit with autocommit off is atomic. python-iptables does
not take the xtables lock itself: cfallow holds ``/run/xtables.lock`` (or
``$XTABLES_LOCKFILE``, as iptables does) with ``flock`` around refresh, read,
modify and commit, so the iptables tools wait for it instead of racing it. A
writer that ignores the lock makes the kernel refuse the commit with EAGAIN;
cfallow then starts over from a fresh read, a bounded number of times.

libiptc's commit would leave the built-in chains' policy counters at what
they gained since the read; cfallow sets them back to the values it read.

Rules are deleted by position, so before any change the handle is checked
against the text that was read: the chains it deletes from must hold the same
targets in the same order, else the table moved and the attempt starts over.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from cfallow.errors import BackendError, CommandError
from cfallow.fs import flock_within
from cfallow.runner import Runner

from .iptables_diff import Ops
from .iptables_rules import FAMILY, OwnRule, Table, explain, parse_save, target_of

LOCK_PATH = "/run/xtables.lock"
ATTEMPTS = 5
LOCK_WAIT = 30.0
MODULE = {4: "ip_tables", 6: "ip6_tables"}
BUILTIN_FILTER = ("INPUT", "FORWARD", "OUTPUT")
XTABLES_DIRS = ("/usr/lib64/xtables", "/usr/lib/xtables", "/usr/libexec/xtables")


class Moved(Exception):
    """The table changed between the read and the handle (or under the commit)."""


@contextlib.contextmanager
def xtables_lock(path: str, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold the xtables lock (``flock`` on ``path``), waiting at most ``wait`` seconds."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BackendError(f"cannot open the xtables lock {path}: {exc.strerror}") from None
    try:
        if not flock_within(fd, wait, poll=0.02):
            raise BackendError(f"another program has held the xtables lock {path} for {wait:g} s")
        yield
    finally:
        os.close(fd)


def _xtables_dir() -> str | None:
    for path in (*sorted(glob.glob("/usr/lib/*-linux-*/xtables")), *XTABLES_DIRS):
        if os.path.isdir(path):
            return path
    return None


def load_iptc() -> Any:
    """Import python-iptables (only when a legacy write happens).

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
            "python-iptables is not installed (pip install 'cfallow[iptables]'); "
            "the legacy variant writes through it"
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
    # Matches in the order iptables-save prints them, so a re-read compares equal.
    if spec.dports:
        rule.create_match("multiport").dports = spec.dports
    if spec.ctstate:
        rule.create_match("conntrack").ctstate = spec.ctstate
    if spec.comment:
        rule.create_match("comment").comment = spec.comment
    # Target(rule, "CHAIN") would open every table to find out CHAIN is a chain
    # (creating nat, mangle, raw, security): start from a verdict and rename it.
    target = iptc.Target(rule, "ACCEPT")
    if spec.target != "ACCEPT":
        target.standard_target = spec.target
    rule.target = target
    return rule


class LegacyIO:
    """Reads one family's filter table with the legacy save tool; writes it with python-iptables."""

    kind = "legacy"
    #: Test seam: called between modify and commit (races a writer that ignores the lock).
    before_commit: Callable[[], None] | None = None

    def __init__(
        self,
        runner: Runner,
        save: dict[int, str],
        *,
        lock_path: str | None = None,
        attempts: int = ATTEMPTS,
    ) -> None:
        self.runner = runner
        self.save = save
        env = runner.env or {}
        self.lock_path = (
            lock_path or env.get("XTABLES_LOCKFILE") or os.environ.get("XTABLES_LOCKFILE")
        ) or LOCK_PATH
        self.attempts = attempts
        self.retries = 0

    def read(self, version: int) -> str:
        """``iptables-legacy-save -t filter`` (it reads the kernel's table; it takes no lock)."""
        tool = self.save[version]
        try:
            return self.runner.run([tool, "-t", "filter"]).stdout
        except CommandError as exc:
            raise BackendError(explain(tool, exc.stderr, MODULE[version])) from None
        except BackendError as exc:
            if "command not found" in str(exc):
                raise BackendError(
                    f"{tool}: command not found (install the iptables package)"
                ) from None
            raise

    def transact(
        self, version: int, compute: Callable[[Table], Ops], basis: Table | None = None
    ) -> bool:
        """Under the xtables lock: read, compute, modify, commit once; False if nothing to do.

        ``basis`` is ignored: positions are only valid for a read under the lock.
        """
        iptc = load_iptc()
        with xtables_lock(self.lock_path):
            for attempt in range(self.attempts):
                table = (iptc.Table6 if version == 6 else iptc.Table)("filter", autocommit=False)
                try:
                    table.refresh()
                    parsed = parse_save(self.read(version))
                    ops = compute(parsed)
                    if ops.empty:
                        return False
                    self._verify(table, parsed, ops)
                    self._modify(iptc, table, ops)
                    if self.before_commit is not None:
                        self.before_commit()
                    self._commit(iptc, table)
                    return True
                except Moved:
                    self.retries += 1
                    time.sleep(0.01 * 2**attempt)
                except iptc.IPTCError as exc:
                    raise BackendError(f"python-iptables ({FAMILY[version]}): {exc}") from None
                finally:
                    table.close()
        raise BackendError(
            f"{FAMILY[version]}: the filter table changed under every one of {self.attempts} "
            "commits; something writes it without taking the xtables lock"
        )

    @staticmethod
    def _commit(iptc: Any, table: Any) -> None:
        try:
            table.commit()
        except iptc.IPTCError as exc:
            # EAGAIN: the kernel's table is not the one this handle was read from.
            if "temporarily unavailable" in str(exc):
                raise Moved() from None
            raise

    @staticmethod
    def _verify(table: Any, parsed: Table, ops: Ops) -> None:
        if bool(table.is_chain(ops.chain)) != (parsed.rules(ops.chain) is not None):
            raise Moved()
        for chain in {loc.chain for loc in ops.delete}:
            want = [target_of(s) or "" for s in parsed.rules(chain) or ()]
            if _targets(table, chain) != want:
                raise Moved()

    @staticmethod
    def _modify(iptc: Any, table: Any, ops: Ops) -> None:
        lib = table._iptc  # python-iptables has no delete-by-number wrapper
        if ops.create_parent:
            table.create_chain(ops.parent)
            iptc.Chain(table, "FORWARD").insert_rule(
                _rule(iptc, ops.version, OwnRule(ops.parent)), 0
            )
        for loc in sorted(ops.delete, key=lambda loc: (loc.chain, -loc.index)):
            if lib.iptc_delete_num_entry(loc.chain.encode(), loc.index, table._handle) != 1:
                raise iptc.IPTCError(f"can't delete rule {loc.index + 1} of {loc.chain}")
        if ops.declare:
            if table.is_chain(ops.chain):
                table.flush_entries(ops.chain)
            else:
                table.create_chain(ops.chain)
        chain = iptc.Chain(table, ops.chain)
        for spec in ops.append:
            chain.append_rule(_rule(iptc, ops.version, spec))
        for i, spec in enumerate(ops.insert):
            chain.insert_rule(_rule(iptc, ops.version, spec), i)
        if ops.jump:
            iptc.Chain(table, ops.parent).insert_rule(_rule(iptc, ops.version, ops.jump), 0)
        if ops.drop_chain:
            table.flush_entries(ops.chain)
            table.delete_chain(ops.chain)
        # libiptc's commit leaves a built-in chain's policy counters at what they
        # gained since the read (iptables-legacy -A does the same): set them back.
        for name in BUILTIN_FILTER:
            if table.builtin_chain(name):
                policy, counters = table.get_policy(name)
                table.set_policy(name, policy, counters)
