"""iptables-legacy I/O: read with ``*-save``, write one ``*-restore --noflush`` per family.

The whole cycle is held under the xtables lock (``flock``; the restore itself
is pointed at a private lock file, or it would wait for cfallow's own); a
commit the kernel refuses because a lock-ignoring writer moved the table is
started over from a fresh read, a bounded number of times. The batch runs with
``-c`` to set the built-in policies' counters back to what was read (libiptc's
commit would keep what they gained since), and with the mangle guard it is two
commits, filter first. Why each of these: docs/iptables.md, "How it writes".

Legacy x_tables have no ruleset generation; the digest of their blobs
(:func:`cfallow.netfilter.xtables.digest`, counters zeroed) stands in for one:
a plan's table read with its digest under the lock is written from as it is
when the digest under the write's lock is the same (no second ``*-save``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from cfallow.errors import BackendError, CommandFailed
from cfallow.fs import flock_within
from cfallow.runner import Runner

from .diff import Ops
from .rules import FAMILY
from .save import Table, explain, failure, parse_tables

if TYPE_CHECKING:
    from cfallow.netfilter.xtables import Digest

LOCK_PATH = "/run/xtables.lock"
ATTEMPTS = 5
LOCK_WAIT = 30.0
#: How long a read waits for the lock before it reads without it (and keeps nothing).
READ_LOCK_WAIT = 5.0
MODULE = {4: "ip_tables", 6: "ip6_tables"}
NAMES_FILE = {4: "/proc/net/ip_tables_names", 6: "/proc/net/ip6_tables_names"}

__all__ = ["LegacyIO", "Moved", "RestoreWriter", "Writer", "digest", "xtables_lock"]


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


_undigested: list[str] = []


def digest(
    runner: Runner, tables: Iterable[tuple[int, str]], create: Iterable[str] = ()
) -> Digest | None:
    """The digest of legacy ``tables`` (``(version, name)``; ``create``: tables the caller's
    read creates anyway, see :func:`~cfallow.netfilter.xtables.digest`) where ``runner``
    runs its commands (a prefix: ``python -m cfallow.netfilter.xtables`` run there); None
    when it cannot be read (said once)."""
    from cfallow.netfilter import xtables

    wanted, create = list(tables), frozenset(create)
    if runner.prefix:
        named = [f"{v}:{n}{':create' if n in create else ''}" for v, n in wanted]
        try:
            out = runner.run_module("cfallow.netfilter.xtables", *named).stdout
            return xtables.Digest.from_json(out)
        except (BackendError, ValueError) as exc:
            _undigestible(str(exc), "not permitted" in str(exc).lower())
            return None
    try:
        return xtables.digest(wanted, create)
    except OSError as exc:
        _undigestible(str(exc.strerror or exc), exc.errno in (errno.EPERM, errno.EACCES))
        return None


def _undigestible(why: str, denied: bool) -> None:
    """Say once per process that the shortcut is off for want of privilege (the run goes on,
    reading as before). Anything else (a family whose module the save loads first) is
    only a debug line: the save that follows reports a real failure itself."""
    if not denied:
        log.debug("iptables: no digest of the legacy tables: %s", why)
        return
    if _undigested:
        return
    _undigested.append(why)
    log.warning(
        "iptables: cannot read the kernel's legacy tables to tell whether they changed (%s; "
        "needs CAP_NET_RAW, as iptables-legacy-save does): they are read with *-save every run",
        why,
    )


def fresh_counters(table: Table, policies: Mapping[tuple[str, str], tuple[int, int]]) -> Table:
    """``table`` with its built-in chains' policy counters (``[p:b]``) as ``policies`` has them
    (filter's, and mangle's when read): what a read now would print, for a ``-c`` restore."""

    def lines(name: str, found: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for line in found:
            chain, policy = [*line[1:].split(), "", ""][:2]
            got = policies.get((name, chain))
            now = None if got is None else f":{chain} {policy} [{got[0]}:{got[1]}]"
            out.append(now if now is not None and line.endswith("]") else line)
        return tuple(out)

    mangle = table.mangle
    if mangle is not None:
        mangle = replace(mangle, policies=lines("mangle", mangle.policies))
    return replace(table, policies=lines("filter", table.policies), mangle=mangle)


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

    def names(self, version: int) -> list[tuple[int, str]]:
        """The tables a read of ``version`` covers, for :func:`digest` (an absent mangle
        table digests as absent, as it reads as empty)."""
        return [(version, "filter"), *([(version, "mangle")] if self.mangle else [])]

    def digest(self, version: int) -> Digest | None:
        """The digest of what :meth:`read` reads (None: cannot tell); like the read, it
        creates the filter table where there is none yet."""
        return digest(self.runner, self.names(version), create=("filter",))

    @contextlib.contextmanager
    def holding(self, wait: float = READ_LOCK_WAIT) -> Iterator[bool]:
        """The xtables lock for a read, if it can be had within ``wait`` seconds (False:
        the read goes on without it, and what it reads is not kept)."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(xtables_lock(self.lock_path, wait))
                held = True
            except BackendError as exc:
                log.debug("iptables: reading without the xtables lock: %s", exc)
                held = False
            yield held

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
        self,
        version: int,
        compute: Callable[[Table], Ops],
        basis: Table | None = None,
        generation: str | None = None,
    ) -> bool:
        """Under the xtables lock: read, compute, write once; False if nothing to do.

        ``basis``: the table the plan was made from, read under the lock after
        the tables' digest ``generation``; when the digest under this lock is
        the same, the kernel holds exactly those rules and ``basis`` is
        computed from (its policy counters as they are now) instead of a
        second read.
        """
        with xtables_lock(self.lock_path):
            table = None
            if basis is not None and generation is not None:
                now = self.digest(version)
                if now is not None and now.value == generation:
                    table = fresh_counters(basis, now.policies)
            if table is None:
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
