"""From what cfallow owns in one family's table to the one transaction that fixes it (pure).

:func:`assess` compares an :class:`~.rules.Owned` family with the
config and the desired ranges and returns the drift it found and the
:class:`Ops` of one transaction. A well-formed chain gets only the range diff
(kept rules keep their counters); a chain edited by hand is rewritten whole;
unless the jumps into the chain are exactly the configured ones at the top of
the parent, in order, they are all deleted and the right ones inserted, in the
same transaction. With parent
``DOCKER-USER``, FORWARD's ``-j DOCKER-USER`` must be its rule 1 too, which
Docker ensures on start for IPv4 but Docker 20.10 not for IPv6 (its own
IPv6 rules are inserted above it): it is moved there the same way.

With parent ``DOCKER-USER`` in lockdown, the same chain also lives in the
``mangle`` table, jumped to first from mangle's ``FORWARD`` (:func:`assess_guard`):
Docker never touches mangle, so the lockdown holds while Docker's own
``FORWARD`` rules sit above ``-j DOCKER-USER`` (Docker 20.10, IPv6, after
each start). It is written in the same restore batch, after the filter part.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from netaddr import IPNetwork

from cfallow.errors import BackendError
from cfallow.model import family, ordered

from .rules import (
    ALSO_COMMENT,
    FAMILY,
    LOCKDOWN_TAIL,
    Located,
    Owned,
    OwnRule,
    Settings,
    accept,
    accept_source,
    foreign_chain,
)

MAX_SHOWN = 5


DOCKER_USER = "DOCKER-USER"


@dataclass(frozen=True)
class Ops:
    """One family's transaction, in the order it runs.

    ``declare`` creates the chain or flushes it (inside the transaction);
    ``delete`` removes rules found in the table (jumps anywhere, ranges in the
    chain); ``append`` and ``insert`` fill the chain (inserts go to the top, in
    order); ``jumps`` go to the top of the parent, in order; ``drop_chain`` flushes
    and deletes the chain once nothing jumps into it. ``table`` is the table
    the lines are for; ``guard`` is the mangle table's part of the same batch.
    """

    version: int
    chain: str
    parent: str
    declare: bool = False
    delete: tuple[Located, ...] = ()
    append: tuple[OwnRule, ...] = ()
    insert: tuple[OwnRule, ...] = ()
    jumps: tuple[OwnRule, ...] = ()
    drop_chain: bool = False
    create_parent: bool = False
    forward_deletes: int = 0
    forward_jump: bool = False
    table: str = "filter"
    guard: Ops | None = None

    @property
    def empty(self) -> bool:
        """Nothing to write."""
        return self._empty and (self.guard is None or self.guard.empty)

    @property
    def _empty(self) -> bool:
        return not (
            self.declare
            or self.delete
            or self.append
            or self.insert
            or self.jumps
            or self.drop_chain
            or self.create_parent
            or self.forward_jump
        )

    def restore_script(self, policies: Mapping[str, Sequence[str]] | None = None) -> str:
        """The transaction as ``iptables-restore --noflush`` input (a declared chain is flushed).

        One section per table that changes (filter, then mangle); ``policies``:
        lines to put right after a table's header (the legacy writer's counters).
        """
        parts = [] if self._empty else [self._section(policies or {})]
        if self.guard is not None and not self.guard.empty:
            parts.append(self.guard.restore_script(policies))
        return "".join(parts)

    def _section(self, policies: Mapping[str, Sequence[str]]) -> str:
        lines = [f"*{self.table}", *policies.get(self.table, ())]
        if self.create_parent:
            lines.append(f":{self.parent} - [0:0]")
        lines += [f"-D FORWARD -j {self.parent}"] * self.forward_deletes
        if self.forward_jump:
            lines.append(f"-I FORWARD 1 -j {self.parent}")
        if self.declare:
            lines.append(f":{self.chain} - [0:0]")
        lines += [f"-D {loc.chain} {loc.spec}" for loc in self.delete]
        lines += [f"-A {self.chain} {rule.spec()}" for rule in self.append]
        lines += [f"-I {self.chain} {i} {rule.spec()}" for i, rule in enumerate(self.insert, 1)]
        lines += [f"-I {self.parent} {i} {j.spec()}" for i, j in enumerate(self.jumps, 1)]
        if self.drop_chain:
            lines += [f"-F {self.chain}", f"-X {self.chain}"]
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def _shown(items: list[str]) -> list[str]:
    if len(items) <= MAX_SHOWN:
        return items
    return [*items[:MAX_SHOWN], f"and {len(items) - MAX_SHOWN} more"]


def _chain_problems(obs: Owned, settings: Settings) -> list[str]:
    """Why the chain is not ranges-then-tail exactly as configured (empty: well-formed)."""
    specs = list(obs.chain or ())
    head = 0
    while head < len(specs) and accept_source(specs[head], obs.version, None) is not None:
        head += 1
    rest = specs[head:]
    want = [r.spec() for r in settings.tail(obs.version)]
    problems: list[str] = []
    dups = [s for s, n in Counter(specs[:head]).items() if n > 1]
    problems += [f"duplicate rule: {s}" for s in dups]
    if rest == want:
        return problems
    has_lockdown = any(s in LOCKDOWN_TAIL for s in rest)
    if has_lockdown != (settings.mode == "lockdown"):
        was = "lockdown" if has_lockdown else "allow"
        problems.append(f"mode: chain is {was}, config says {settings.mode}")
    elif has_lockdown and tuple(rest[-len(LOCKDOWN_TAIL) :]) != LOCKDOWN_TAIL:
        problems.append("lockdown rules incomplete or out of order")
    found_also = [accept_source(s, obs.version, ALSO_COMMENT) for s in rest]
    have = {n for n in found_also if n is not None}
    wanted = set(family(settings.also_allow, obs.version))
    if have != wanted:
        problems.append(
            "also_allow: chain has "
            + (", ".join(str(n) for n in ordered(have)) or "none")
            + ", config says "
            + (", ".join(str(n) for n in ordered(wanted)) or "none")
        )
    known = set(LOCKDOWN_TAIL)
    foreign = [
        s
        for s, also in zip(rest, found_also)
        if also is None and s not in known and accept_source(s, obs.version, None) is None
    ]
    problems += _shown([f"foreign rule: {s}" for s in foreign])
    misplaced = [s for s in rest if accept_source(s, obs.version, None) is not None]
    problems += _shown([f"misplaced rule: {s}" for s in misplaced])
    if not problems:
        problems.append("rules out of order")
    return problems


def _jump_problems(obs: Owned, settings: Settings) -> list[str]:
    want = tuple(Located(settings.parent, i, j.spec()) for i, j in enumerate(settings.jumps()))
    if obs.jumps == want:
        return []
    if not obs.jumps:
        return [f"no jump from {settings.parent}"] if obs.chain is not None else []
    problems: list[str] = []
    if len(obs.jumps) != len(want):
        problems.append(f"{len(obs.jumps)} jumps into {settings.chain}, {len(want)} wanted")
    specs = [w.spec for w in want]
    for j in obs.jumps:
        if j.chain != settings.parent:
            problems.append(f"stray jump in {j.chain}: {j.spec}")
        elif j.spec not in specs:
            problems.append(
                f"jump differs from config: is {j.spec}; config wants " + " and ".join(specs)
            )
        elif j.index != specs.index(j.spec):
            problems.append(
                f"jump at position {j.index + 1} of {j.chain}, not {specs.index(j.spec) + 1}"
            )
    return _shown(problems or ["jumps out of order"])


def _forward_problems(obs: Owned, settings: Settings, create_parent: bool) -> list[str]:
    """Parent DOCKER-USER: FORWARD must jump there first (what Docker does on start)."""
    if settings.parent != DOCKER_USER or create_parent or obs.forward == (0,):
        return []
    if not obs.forward:
        return [f"no jump from FORWARD to {DOCKER_USER} (inserted at the top, as Docker does)"]
    at = ", ".join(str(i + 1) for i in obs.forward)
    return [f"FORWARD jumps to {DOCKER_USER} at position {at}, not 1 (moved to the top)"]


def assess(obs: Owned, settings: Settings, desired: frozenset[IPNetwork]) -> tuple[list[str], Ops]:
    """Drift found in one family, and the transaction that brings it to ``desired``."""
    fam = FAMILY[obs.version]
    refused = foreign_chain(obs, settings)
    if refused:
        raise BackendError(refused)
    create_parent = not obs.parent_exists and settings.parent == DOCKER_USER
    if not obs.parent_exists and not create_parent:
        raise BackendError(
            f"{fam}: parent chain {settings.parent} does not exist in the filter table"
        )
    base = Ops(obs.version, settings.chain, settings.parent)
    chain_problems = _chain_problems(obs, settings) if obs.chain is not None else []
    jump_problems = _jump_problems(obs, settings)
    forward_problems = _forward_problems(obs, settings, create_parent)
    drift = [f"{fam}: {p}" for p in chain_problems + jump_problems + forward_problems]
    if create_parent:
        drift.append(f"{fam}: no {DOCKER_USER} chain yet (created, as Docker would)")
    delete: list[Located] = []
    append: tuple[OwnRule, ...] = ()
    insert: tuple[OwnRule, ...] = ()
    declare = obs.chain is None or bool(chain_problems)
    if declare:
        append = settings.chain_rules(obs.version, desired)
    else:
        current = obs.current
        for i, spec in enumerate(obs.chain or ()):
            net = accept_source(spec, obs.version, None)
            if net is not None and net not in desired:
                delete.append(Located(settings.chain, i, spec))
        insert = tuple(accept(n) for n in ordered(desired - current))
    jumps: tuple[OwnRule, ...] = ()
    if jump_problems or not obs.jumps:
        delete += obs.jumps
        jumps = settings.jumps()
    ops = Ops(
        obs.version,
        base.chain,
        base.parent,
        declare=declare,
        delete=tuple(delete),
        append=append,
        insert=insert,
        jumps=jumps,
        create_parent=create_parent,
        forward_deletes=len(obs.forward) if forward_problems else 0,
        forward_jump=create_parent or bool(forward_problems),
    )
    return drift, ops


def assess_removal(obs: Owned, settings: Settings) -> tuple[list[str], Ops]:
    """What removing cfallow from one family deletes (every jump, then the chain)."""
    fam = FAMILY[obs.version]
    refused = foreign_chain(obs, settings)
    if refused:
        raise BackendError(refused)
    ops = Ops(
        obs.version,
        settings.chain,
        settings.parent,
        delete=obs.jumps,
        drop_chain=obs.chain is not None,
    )
    what: list[str] = []
    if obs.jumps:
        what.append(f"{len(obs.jumps)} jump(s)")
    if obs.chain is not None:
        what.append(f"chain {settings.chain} ({len(obs.chain)} rules)")
    return ([f"{fam}: delete " + " and ".join(what)] if what else []), ops


def assess_guard(
    obs: Owned | None,
    settings: Settings,
    desired: frozenset[IPNetwork] | None,
    *,
    first: bool = False,
) -> tuple[list[str], Ops | None]:
    """The mangle part of one family's transaction (``obs``: the mangle table's view).

    Wanted in lockdown with parent ``DOCKER-USER`` (``desired`` not ``None``);
    else whatever cfallow left there is removed. ``obs`` is ``None`` where the
    mangle table was not read (parent ``INPUT``). ``first``: the filter chain
    is new too (a first sync), so a missing guard is no drift.
    """
    if obs is None:
        return [], None
    fam = FAMILY[obs.version]
    guard = settings.guard()
    try:
        if desired is not None and guard is not None:
            found, ops = assess(obs, guard, desired)
        else:
            found, ops = assess_removal(obs, replace(settings, parent="FORWARD"))
    except BackendError as exc:
        raise BackendError(f"mangle table: {exc}") from None
    where = f"{fam} mangle: "
    drift = [where + f.removeprefix(f"{fam}: ") for f in found]
    if guard is not None and desired is not None and obs.chain is None and not first:
        drift.append(
            f"{where}no {settings.chain} chain guarding FORWARD (added: Docker cannot reorder it)"
        )
    return drift, replace(ops, table="mangle")
