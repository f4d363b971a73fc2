"""The nftables backend's reads, removal plan and the one writer (``apply_step``)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from cfallow.errors import BackendError, CommandFailed, CommandNotFound, TargetMoved, Unavailable
from cfallow.files import ManagedFile
from cfallow.model import Networks, as_strings
from cfallow.netfilter import generation
from cfallow.netfilter import host as hostfw
from cfallow.netfilter import nat as hostfw_nat
from cfallow.netfilter.evaluate import Chain
from cfallow.netfilter.host import NftSet, parse_ruleset
from cfallow.netfilter.save import VERSION_MEMO
from cfallow.runner import Runner, missing

from . import render
from .advice import lockdown_notes, sets_notes

Basis = tuple[tuple[str, Optional[tuple[str, ...]]], ...]


@dataclass(frozen=True)
class Analysis:
    """What the host analysis found for this configuration: the plan's notes, and in
    sets mode the admin's rules referencing each set (what a removal cannot delete)."""

    notes: tuple[str, ...]
    referenced: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def of(
        cls,
        host: hostfw.Host,
        nat: tuple[hostfw_nat.NatRule, ...],
        s: render.Settings,
        table: hostfw.Ruleset | None,
    ) -> Analysis:
        """Analyse ``host`` (and its ``nat`` rules) for ``s``; ``table``: the one holding
        the sets."""
        if s.mode == "lockdown":
            hint = (
                "the forward chain (docker = true) guards them"
                if s.docker
                else "docker = true guards DNAT'ed connections in the forward hook"
            )
            notes = lockdown_notes(host, s.families, s.protocol, s.ports, s.table)
            notes += hostfw_nat.notes(nat, s.families, s.protocol, s.ports, forward_hint=hint)
            return cls(notes)
        names = [s.set_name(v) for v in s.families]
        notes = sets_notes(host, s.families, s.protocol, s.ports, names)
        found = referencing(table, names) if table else {}
        refs = tuple((n, tuple(found.get(n, ()))) for n in names) if table else ()
        return cls(notes, refs)

    def refs(self, name: str) -> list[str]:
        """The admin's rules that reference set ``name``."""
        return list(dict(self.referenced).get(name, ()))

    def to_json(self) -> object:
        """A JSON value for :class:`~cfallow.netfilter.generation.Memo`."""
        return {"notes": list(self.notes), "referenced": [[n, list(r)] for n, r in self.referenced]}

    @classmethod
    def from_json(cls, doc: object) -> Analysis | None:
        """The analysis :meth:`to_json` stored (None: absent or not one)."""
        if not isinstance(doc, dict):
            return None
        try:
            notes = tuple(str(n) for n in doc["notes"])
            refs = tuple((str(n), tuple(str(x) for x in r)) for n, r in doc["referenced"])
        except (KeyError, TypeError, ValueError):
            return None
        return cls(notes, refs)


@dataclass(frozen=True)
class Seen:
    """What ``read`` found: the host analysis, cfallow's table or sets, the persistence file."""

    analysis: Analysis | None  # None: the host analysis is off (host_check = false)
    table: bool  # the table exists (cfallow's in lockdown, the admin's in sets mode)
    sets: tuple[NftSet, ...]  # the sets of interest (all of cfallow's table in lockdown)
    chains: tuple[Chain, ...]  # the table's chains (lockdown: cfallow's own)
    file: bytes | None
    #: The ruleset generation and iptables variant the analysis is kept under (None: no memo).
    kept_for: tuple[str, str] | None = None
    #: The table has ``flags dormant``: on no hook, none of its rules sees a packet.
    dormant: bool = False

    def set(self, name: str) -> NftSet | None:
        """The set ``name`` of the table, if read."""
        return next((s for s in self.sets if s.name == name), None)


@dataclass(frozen=True)
class Step:
    """One transaction: ``script`` for ``nft -f -`` ("" = none), then the file's bytes.

    ``basis``: each set's elements as read (None: absent); a set that no longer
    holds them means the target moved, and nothing is written.
    """

    script: str
    file: bytes | None
    basis: Basis


def _list(
    runner: Runner, *what: str, terse: bool = False, trace: list[str] | None = None
) -> hostfw.Ruleset | None:
    """``nft -j list WHAT...`` (``terse``: ``nft -t``, no set's elements; ``trace``: see
    :func:`~cfallow.netfilter.host.parse_ruleset`); None when it does not exist."""
    try:
        text = runner.run(["nft", *("-t",) * terse, "-j", "list", *what]).stdout
        return parse_ruleset(text, trace=trace or ())
    except CommandFailed as exc:
        if "No such file or directory" in exc.stderr:
            return None
        raise


def _sets_only(runner: Runner, fam: str, name: str, wanted: list[str]) -> hostfw.Ruleset | None:
    """Sets mode without the host analysis: cfallow's sets of the table (elements included:
    no other set's elements are read), and whether the table exists."""
    heads = parse_ruleset(runner.run(["nft", "-j", "list", "chains", fam]).stdout, whole=False)
    sets = _own_sets(runner, fam, name, wanted)
    if (fam, name) not in heads.tables and not sets:  # a table of sets only? (no elements)
        listed = _list(runner, "sets", fam, terse=True)
        if listed is None or all(st.table != name for st in listed.sets):
            return None
    return hostfw.Ruleset(((fam, name),), (), sets)


def read_seen(
    runner: Runner,
    s: render.Settings,
    file: ManagedFile,
    *,
    analyse_host: bool,
    memo: generation.Memo | None = None,
) -> Seen:
    """cfallow's table (lockdown) or the admin's sets (sets mode), the host analysis, the file.

    The analysis reads what decides the verdict (:func:`cfallow.netfilter.host.read_nft`;
    in sets mode the admin's table whole for the rules referencing the sets, tersely),
    unless ``memo`` holds it for the ruleset's current generation (nothing committed
    since); then, and after an analysis, cfallow's own table, or the admin's sets of
    cfallow's names, are listed with their elements.
    """
    fam, name = s.table.split(" ")
    analysis: Analysis | None = None
    own: hostfw.Ruleset | None = None
    listed = False
    kept_for = None
    if analyse_host:
        analysis, own, listed, kept_for = _analysed(runner, s, memo)
    wanted = [s.set_name(v) for v in s.families]
    if not listed and s.mode == "sets":
        own = _sets_only(runner, fam, name, wanted)  # cheap: the admin's rules are not listed
    elif not listed:  # not read whole by the analysis (no base chain on input): list it
        try:
            own = _list(runner, "table", fam, name)
        except CommandNotFound:
            raise Unavailable(missing("nft", "nftables")) from None
    sets = own.sets if own is not None else ()
    if s.mode == "sets":
        sets = tuple(st for st in sets if st.name in wanted)
    chains = own.chains if own is not None and s.mode == "lockdown" else ()
    dormant = False
    if own is not None and s.mode == "lockdown":  # the generation names dormant tables
        asleep = generation.asleep(kept_for[0]) if kept_for else generation.dormant(runner)
        dormant = (fam, name) in (asleep or ())
    return Seen(analysis, own is not None, sets, chains, file.read(), kept_for, dormant)


def analysis_key(gen: str | None, s: render.Settings, variant: str) -> str | None:
    """The key the host analysis is kept under for generation ``gen``."""
    return generation.key(gen, "nftables", repr(s), variant)


def _analysed(
    runner: Runner, s: render.Settings, memo: generation.Memo | None
) -> tuple[Analysis, hostfw.Ruleset | None, bool, tuple[str, str] | None]:
    """The analysis (from ``memo`` when nothing changed), the table if it read it whole, and
    the generation and variant it is kept under."""
    variant = ""
    if s.mode == "lockdown":  # NAT: legacy's has no generation
        variant = hostfw.read_variant(runner, memo and memo.sibling(VERSION_MEMO))
    key, kept_for = None, None
    if memo is not None and variant != "legacy":
        gen = generation.generation(runner)
        key = analysis_key(gen, s, variant)
        kept_for = None if gen is None else (gen, variant)
        kept = Analysis.from_json(memo.get(key))
        if kept is not None:
            return kept, None, False, kept_for
    whole = [s.table] if s.mode == "sets" else []  # the rules that reference the sets
    names = [s.set_name(v) for v in s.families] if s.mode == "sets" else []
    host = hostfw.read(runner, iptables=False, whole=whole, trace=names)
    if host.nft is None:
        if "not installed" in host.nft_error:
            raise Unavailable(missing("nft", "nftables"))
        raise BackendError(f"cannot read the nftables ruleset: {host.nft_error}")
    nat = hostfw_nat.read(runner, variant) if s.mode == "lockdown" else ()
    fam, name = s.table.split(" ")
    own = host.nft.table(fam, name)
    if s.mode == "lockdown":  # cfallow's own table (small): its sets with their elements
        own = _list(runner, "table", fam, name)
    elif own is None:  # no base chain on input: the analysis did not list it
        own = _list(runner, "table", fam, name, terse=True, trace=names)
    found = Analysis.of(host, nat, s, own)
    if memo is not None:
        memo.put(key, found.to_json())
    if s.mode == "sets" and own is not None:  # its rules only: cfallow's sets with elements
        own = replace(own, sets=_own_sets(runner, fam, name, names))
    return found, own, True, kept_for


def _own_sets(runner: Runner, fam: str, table: str, names: list[str]) -> tuple[NftSet, ...]:
    """cfallow's sets ``names`` of the table, each listed with its elements (one ``nft -j
    list set`` each: no other set's elements are read); the missing ones left out."""
    return tuple(st for n in names for st in _set(runner, fam, table, n))


def _set(runner: Runner, fam: str, table: str, name: str) -> tuple[NftSet, ...]:
    """``nft -j list set`` (elements included); none when it does not exist."""
    found = _list(runner, "set", fam, table, name)
    return found.sets if found is not None else ()


def basis_of(seen: Seen, names: list[str]) -> Basis:
    """The basis of a step touching ``names``."""
    out = []
    for n in names:
        st = seen.set(n)
        out.append((n, None if st is None else tuple(as_strings(st.elements))))
    return tuple(out)


def references(seen: Seen | hostfw.Ruleset, name: str) -> list[str]:
    """The rules of ``table`` that reference set ``name`` (``inet filter input (handle 5)``)."""
    return referencing(seen, [name]).get(name, [])


def referencing(seen: Seen | hostfw.Ruleset, names: list[str]) -> dict[str, list[str]]:
    """The rules that reference each of ``names`` (:meth:`~cfallow.netfilter.host.Ruleset.
    naming`: from the listing's text where it traced them, else one pass over the rules)."""
    if isinstance(seen, hostfw.Ruleset):
        return seen.naming(names)
    return hostfw.Ruleset(chains=seen.chains).naming(names)


def removal_steps(
    seen: Seen, s: render.Settings, file: ManagedFile
) -> tuple[tuple[Step, ...], Networks, list[str], list[str]]:
    """Steps, current entries, drift and notes of removing everything cfallow owns."""
    cf_names = [s.set_name(v) for v in s.families]
    current = frozenset(n for name in cf_names for n in (seen.set(name) or _EMPTY).elements)
    lines, todo, notes = [], [], []
    if s.mode == "lockdown":
        if seen.table:
            lines.append(f"delete table {s.table}")
            todo.append(f"delete table {s.table}")
    else:
        for name in cf_names:
            st = seen.set(name)
            if st is None:
                continue
            refs = seen.analysis.refs(name) if seen.analysis else references(seen, name)
            if not refs:
                lines.append(f"delete set {s.table} {name}")
                todo.append(f"delete set {s.table} {name}")
            elif st.elements:
                lines.append(f"flush set {s.table} {name}")
                notes.append(
                    f"set {s.table} {name} emptied, not deleted: still referenced by "
                    + ", ".join(refs)
                )
    if seen.file is not None:
        todo.append(f"remove {file.path}")
    drift = [] if current else todo
    if not lines and seen.file is None:
        return (), current, drift, notes
    return (Step(render.script(lines), None, basis_of(seen, cf_names)),), current, drift, notes


_EMPTY = NftSet("", "", "", "", (), frozenset())


def _read_set(runner: Runner, table: str, name: str) -> tuple[str, ...] | None:
    fam, tname = table.split(" ")
    sets = _set(runner, fam, tname, name)
    return tuple(as_strings(sets[0].elements)) if sets else None


def _check(runner: Runner, s: render.Settings) -> Callable[[Path], None]:
    def check(candidate: Path) -> None:
        if s.mode == "lockdown":
            runner.run(["nft", "-c", "-f", str(candidate)])
            return
        # the include belongs inside the admin's table block: check it there
        with tempfile.TemporaryDirectory(prefix="cfallow-nft-") as tmp:
            wrapper = Path(tmp) / "check.nft"
            wrapper.write_text(f"table {s.table} {{\n\tinclude {json.dumps(str(candidate))}\n}}\n")
            runner.run(["nft", "-c", "-f", str(wrapper)])

    return check


def elements_only(s: render.Settings, script: str) -> bool:
    """``script`` only adds or deletes elements of cfallow's own sets (``add element`` of
    one already there is a change too: every such transaction is one generation)."""
    own = {
        f"{verb} element {s.table} {s.set_name(v)} {{"
        for v in s.families
        for verb in ("add", "delete")
    }
    lines = script.splitlines()
    return bool(lines) and all(
        ln[: ln.find("{") + 1] in own and ln.endswith(" }") and ln.count("{") == 1 and ";" not in ln
        for ln in lines
    )


def apply_step(
    runner: Runner, s: render.Settings, file: ManagedFile, step: Step, *, generations: bool = False
) -> tuple[str | None, str | None]:
    """Write one step: the live transaction, then the file (checked with ``nft -c -f``).

    ``generations``: the ruleset generation right before and right after the transaction
    (else, and without a transaction, ``(None, None)``).
    """
    for name, elements in step.basis:
        if _read_set(runner, s.table, name) != elements:
            raise TargetMoved(f"nftables: set {s.table} {name} changed since it was read")
    gens: tuple[str | None, str | None] = (None, None)
    if step.script:
        before = generation.generation(runner) if generations else None
        try:
            runner.run(["nft", "-f", "-"], input=step.script)
        except CommandFailed as exc:
            if "Device or resource busy" not in exc.stderr:
                raise
            raise BackendError(
                f"a set in {s.table} is still referenced by a rule: nothing changed; remove the "
                "rule first (with host_check = true the set is emptied and the rule named)"
            ) from None
        if generations:
            gens = (before, generation.generation(runner))
    check = _check(runner, s)
    file.install(step.file, check_candidate=check if step.file is not None else None)
    return gens
