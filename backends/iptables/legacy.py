"""iptables-legacy I/O: read with ``*-save``, write one ``*-restore --noflush`` per family.

The whole cycle is held under the xtables lock (``flock``; the restore itself
is pointed at a private lock file, or it would wait for cfallow's own); a
commit the kernel refuses because a lock-ignoring writer moved the table is
started over from a fresh read, a bounded number of times. The batch runs with
``-c`` to set the built-in policies' counters back to what was read (libiptc's
commit would keep what they gained since), and with the mangle guard it is two
commits, filter first. Why each of these: docs/iptables.md, "How it writes".
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Protocol

from cfallow.errors import BackendError, CommandFailed
from cfallow.fs import flock_within
from cfallow.runner import Runner

from .diff import Ops
from .rules import FAMILY
from .save import Table, explain, failure, parse_tables

LOCK_PATH = "/run/xtables.lock"
ATTEMPTS = 5
LOCK_WAIT = 30.0
MODULE = {4: "ip_tables", 6: "ip6_tables"}
NAMES_FILE = {4: "/proc/net/ip_tables_names", 6: "/proc/net/ip6_tables_names"}

__all__ = ["LegacyIO", "Moved", "RestoreWriter", "Writer", "xtables_lock"]


class Moved(Exception):
    """The table changed between the read and the write (or under the commit)."""


log = logging.getLogger("cfallow")


@contextlib.contextmanager
def xtables_lock(path: str, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold the xtables lock (``flock`` on ``path``), waiting at most ``wait`` seconds."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BackendError(f"cannot open the xtables lock {path}: {exc.strerror}") from None
    try:
        if not flock_within(fd, wait, poll=0.02, what=f"the xtables lock {path}"):
            raise BackendError(f"another program has held the xtables lock {path} for {wait:g} s")
        yield
    finally:
        os.close(fd)


class Writer(Protocol):
    """Writes one family's transaction; the caller holds the xtables lock."""

    def write(self, version: int, ops: Ops, table: Table) -> None:
        """Apply ``ops`` (computed from ``table``, read under the lock) atomically, or raise."""


def policy_lines(table: Table) -> list[str]:
    """``:CHAIN POLICY [p:b]`` of the built-in chains, as read (for a ``-c`` restore)."""
    return [line for line in table.policies if line.endswith("]")]


class RestoreWriter:
    """``ip(6)tables-legacy-restore --noflush -c``: the same batch the nft path writes."""

    def __init__(self, runner: Runner, restore: Mapping[int, str]) -> None:
        self.runner = runner
        self.restore = restore

    def write(self, version: int, ops: Ops, table: Table) -> None:
        """One restore batch (on failure the caller re-reads: a moved table, or an error)."""
        policies = {"filter": policy_lines(table)}
        if table.mangle is not None:
            policies["mangle"] = policy_lines(table.mangle)
        script = ops.restore_script(policies)
        tool = self.restore[version]
        import tempfile  # only when writing

        fd, private = tempfile.mkstemp(prefix="cfallow-xtables-", suffix=".lock")
        os.close(fd)
        try:
            self.runner.run(
                [tool, "--noflush", "-c"], input=script, env={"XTABLES_LOCKFILE": private}
            )
        except CommandFailed as exc:
            raise _Failed(explain(tool, exc.stderr, MODULE[version])) from None
        except BackendError as exc:
            raise failure(tool, exc, MODULE[version]) from None
        finally:
            os.unlink(private)


class _Failed(BackendError):
    """The restore refused the batch: the table moved, or a real error (decided by a re-read)."""


def audited(version: int, table: Table, chain: str) -> Table:
    """``table`` with each rule of ``chain`` whose kernel entry is not what its text says marked.

    ``*-save`` prints a rule with a wrong interface mask exactly like a right
    one; the former python-iptables writer left cfallow's IPv6
    ``-i lo -j RETURN`` that way on hosts it ran on. The raw entries are read
    only when the chain has an ``-i`` rule (lockdown), so an allow-mode run
    never imports python-iptables. A marked rule is foreign to the diff, so
    the chain is rewritten.
    """
    specs = table.rules(chain)
    if not specs or not any(" -i " in f" {s}" for s in specs):
        return table
    from .entries import wrong_masks

    try:
        wrong = wrong_masks(version, chain, specs)
    except OSError as exc:
        _unchecked(version, chain, exc)
        return table
    if not wrong:
        return table
    fixed = tuple(
        f"{s} (kernel interface mask {wrong[i]}: matches more than the name)" if i in wrong else s
        for i, s in enumerate(specs)
    )
    chains = tuple((n, fixed if n == chain else r) for n, r in table.chains)
    return replace(table, chains=chains)


_warned: set[int] = set()


def _unchecked(version: int, chain: str, exc: OSError) -> None:
    """Say once per family and process that the mask check could not run (the run goes on)."""
    if version in _warned:
        return
    _warned.add(version)
    log.warning(
        "iptables: %s: cannot read the kernel's raw filter entries (%s; needs CAP_NET_RAW, as "
        "iptables-legacy-save does): the interface masks of %s's -i rules are not checked, so "
        "a rule whose mask matches more than its name (as the former python-iptables writer "
        "left them) would be kept",
        FAMILY[version],
        exc.strerror or exc,
        chain,
    )


class LegacyIO:
    """Reads one family's filter table with the legacy save tool; writes it through ``writer``."""

    kind = "legacy"

    def __init__(
        self,
        runner: Runner,
        save: Mapping[int, str],
        restore: Mapping[int, str],
        *,
        chain: str = "CFALLOW",
        lock_path: str | None = None,
        attempts: int = ATTEMPTS,
        mangle: bool = False,
    ) -> None:
        self.runner = runner
        self.mangle = mangle  # read the mangle table too (parent DOCKER-USER)
        self.save = save
        env = runner.env or {}
        self.lock_path = (
            lock_path or env.get("XTABLES_LOCKFILE") or os.environ.get("XTABLES_LOCKFILE")
        ) or LOCK_PATH
        self.attempts = attempts
        self.chain = chain
        self.retries = 0
        #: The seam: what writes a batch (a test puts the former python-iptables writer here).
        self.writer: Writer = RestoreWriter(runner, restore)

    def read(self, version: int) -> str:
        """``iptables-legacy-save -c -t filter`` (it reads the kernel's table; it takes no
        lock), then ``-t mangle`` when asked and the namespace has that table (asking for
        one it does not have creates it; an absent one reads as empty)."""
        tool = self.save[version]
        names = ["filter"]
        if self.mangle and "mangle" in self._tables(version):
            names.append("mangle")
        try:
            return "".join(self.runner.run([tool, "-c", "-t", name]).stdout for name in names)
        except BackendError as exc:
            raise failure(tool, exc, MODULE[version]) from None

    def _tables(self, version: int) -> list[str]:
        try:
            return self.runner.run(["cat", NAMES_FILE[version]]).stdout.split()
        except BackendError:
            return []

    def parse(self, version: int, text: str) -> Table:
        """Parse a read, with cfallow's own rules checked against the kernel's entries.

        The entries are this process's namespace's: with a runner prefix
        (``nsenter`` into another one) the check is left out.
        """
        table = parse_tables(text, self.mangle)
        return table if self.runner.prefix else audited(version, table, self.chain)

    def transact(
        self, version: int, compute: Callable[[Table], Ops], basis: Table | None = None
    ) -> bool:
        """Under the xtables lock: read, compute, write once; False if nothing to do.

        ``basis`` is ignored: only a read under the lock is current.
        """
        with xtables_lock(self.lock_path):
            table = self.parse(version, self.read(version))
            for attempt in range(self.attempts):
                ops = compute(table)
                if ops.empty:
                    return False
                try:
                    self.writer.write(version, ops, table)
                    return True
                except (Moved, _Failed) as exc:
                    fresh = self.parse(version, self.read(version))
                    if isinstance(exc, _Failed) and fresh.same_rules(table):
                        raise  # the table did not move: the batch itself failed
                    table = fresh
                    self.retries += 1
                    time.sleep(0.01 * 2**attempt)
        raise BackendError(
            f"{FAMILY[version]}: the filter table changed under every one of {self.attempts} "
            "commits; something writes it without taking the xtables lock"
        )
