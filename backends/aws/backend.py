"""The ``aws`` backend: security-group ingress rules (or managed prefix lists) owned by tag.

Per group it reads the rules once (paginated), authorizes every missing CIDR x
port in one call, then revokes the stale owned rules in one call by rule id.
cfallow owns a rule when it is tagged ``managed-by=cfallow`` and its
description starts with ``cfallow``; any other rule is never revoked, and one
for the same CIDR and port counts as present. The per-family quota is checked
before any write. Credentials come from boto3's standard chain only; boto3 is
imported when this backend first talks to AWS, never at import.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from netaddr import IPNetwork

from cfallow.backend import Backend, Context
from cfallow.errors import BackendError, ConfigError, Unavailable
from cfallow.install import extra_hint
from cfallow.model import Networks, Plan, combine, diff, make_plan
from cfallow.section import Section, parse_ports

from . import cadence
from . import groups as sg
from . import prefixlists as pls
from .cadence import interval
from .client import Ec2, aws_errors, error_code, make_client
from .rules import (
    FAMILIES,
    PENDING,
    GroupChange,
    GroupUnreadable,
    Key,
    Rule,
    explain,
    group_change,
    open_to_all,
    quota,
)
from .targets import Clients, Target, counts_line, each, parse_endpoint, parse_targets

INSTALL_HINT = extra_hint("aws", "boto3>=1.28")
log = logging.getLogger("cfallow")
#: In the state dir: this host made cfallow's prefix lists (``remove`` looks for them).
LISTS_MARK = "aws.prefix-lists"
SG_ID = re.compile(r"sg-[0-9a-f]{8}(?:[0-9a-f]{9})?")
# Prefix-list mode is no way to fit: AWS counts each reference as the list's
# MaxEntries, never fewer than the ranges it holds.
_WAYS = "fewer ports, a security group for cfallow alone, or a quota increase"
FIT_HINT = f"to fit: {_WAYS} (then set rules_per_group)"
FIT_HINT_LISTS = (
    f"to fit: a smaller prefix_list_max_entries (new lists), {_WAYS} (then set rules_per_group)"
)


@dataclass(frozen=True)
class AwsSeen:
    """What one read found: rules per group, unreadable groups, cfallow's prefix lists
    (by family), and ``{list id: (family, MaxEntries)}`` of other referenced lists."""

    rules: Mapping[str, list[Rule]]
    failed: tuple[GroupUnreadable, ...]
    lists: Mapping[str, pls.PrefixList]
    sizes: Mapping[str, tuple[str, int]]
    notes: tuple[str, ...]
    #: why AWS was not read at all (a scheduled run before ``interval`` is due)
    skipped: str = ""
    #: with ``targets``: each target's own read (or why it could not be read)
    parts: tuple[tuple[Target, AwsSeen | str], ...] = ()


@dataclass(frozen=True)
class AwsWork:
    """Everything one apply does, in its order: lists, groups, list deletions."""

    lists: tuple[pls.ListChange, ...]
    groups: tuple[GroupChange, ...]
    unreadable: tuple[GroupUnreadable, ...]
    deletes: tuple[pls.DeleteList, ...]
    #: with ``targets``: the target this work is for
    target: Target | None = None

    @property
    def empty(self) -> bool:
        """Nothing to write and nothing to report."""
        return not (self.lists or self.groups or self.unreadable or self.deletes)


class AwsBackend(Backend[AwsSeen, AwsWork]):
    """Keep Cloudflare's ranges in AWS security groups (``[backends.aws]``)."""

    name: ClassVar[str] = "aws"
    #: Lives in AWS, not in this host's kernel: nothing to restore at boot, and
    #: ``sync --offline`` (no network) leaves it out.
    needs_network: ClassVar[bool] = True
    #: Retry and polling knobs (class attributes so tests can shorten them).
    attempts: ClassVar[int] = 6
    backoff: ClassVar[float] = 0.5
    poll_interval: ClassVar[float] = 2.0
    poll_timeout: ClassVar[float] = 300.0
    #: Groups of one target read at once (1 where a stubbed client answers in order).
    read_workers: ClassVar[int] = 8

    def __init__(self, section: Section, ctx: Context) -> None:
        """Read ``[backends.aws]``; no AWS call happens here."""
        super().__init__(section, ctx)
        where = section.where
        #: ``targets = [...]`` (regions, accounts): each read and written on its own
        self.targets: tuple[Target, ...] = ()
        if "targets" in section.data:
            self.targets = parse_targets(section, "security_group_ids", SG_ID, "security group")
            self.region, self.groups = self.targets[0].region, self.targets[0].ids
        else:
            self.region = section.get_str("region", "")
            groups = section.get_strings("security_group_ids", [])
            if not groups:
                raise ConfigError(f"[{where}] security_group_ids: name at least one security group")
            for group in groups:
                if not SG_ID.fullmatch(group):
                    raise ConfigError(f"[{where}] security_group_ids: not a group id: {group!r}")
            self.groups = tuple(dict.fromkeys(groups))
        self.ports = parse_ports(section)
        self.protocol = section.get_choice("protocol", "tcp", ("tcp", "udp"))
        self.endpoint_url = parse_endpoint(section)
        self.rules_per_group = section.get_int("rules_per_group", 60, minimum=1)
        self.prefix_lists = section.get_bool("prefix_lists", False)
        self.max_entries = section.get_int("prefix_list_max_entries", 30, minimum=1)
        self.interval = interval(section)
        if self.max_entries > 1000:
            raise ConfigError(f"[{where}] prefix_list_max_entries: at most 1000 (AWS limit)")
        self._ec2: Ec2 | None = None
        self.mark = LISTS_MARK
        self.clients = Clients(self.endpoint_url, attempts=self.attempts, backoff=self.backoff)
        self._parts: dict[Target, AwsBackend] = {}

    def set_client(self, client: Any) -> None:
        """Use this boto3 EC2 client (tests: a stubbed client; embedding)."""
        self._ec2 = Ec2(client, attempts=self.attempts, backoff=self.backoff)

    def ec2(self) -> Ec2:
        """The EC2 client, created on first use from boto3's standard chain."""
        if self._ec2 is None:
            self.set_client(make_client(self.region, self.endpoint_url))
        assert self._ec2 is not None
        return self._ec2

    def check(self) -> None:
        """boto3, a region and credentials (no API call)."""
        if importlib.util.find_spec("boto3") is None:
            raise Unavailable(f"boto3 is not installed ({INSTALL_HINT})")
        self.ec2()

    # -- read and diff ---------------------------------------------------------

    def part(self, target: Target) -> AwsBackend:
        """The backend of one target: its region, groups, client (role assumed), prefix lists."""
        if target not in self._parts:
            sub = copy.copy(self)
            sub.targets, sub._parts = (), {}
            sub.region, sub.groups = target.region, target.ids
            sub.mark = f"{LISTS_MARK}.{target.label.replace('/', '.')}"
            sub._ec2 = self.clients.get(target, "ec2")
            self._parts[target] = sub
        return self._parts[target]

    def read(self) -> AwsSeen:
        """Each group's rules (one paginated describe), cfallow's prefix lists, and the
        sizes of the other prefix lists the groups reference (they count against the quota).

        With ``targets``: every target concurrently, each read failing alone.
        """
        why = cadence.not_due(self.ctx, self.name, self.interval)
        if why:
            return AwsSeen({}, (), {}, {}, (), why)
        if self.targets:
            outcomes = each(self.targets, lambda t: self.part(t).read_one())
            parts = tuple((o.target, o.value or o.error or "?") for o in outcomes)
            if self.ctx.scheduled and all(isinstance(p, AwsSeen) for _, p in parts):
                cadence.stamp(self.ctx.state_dir, self.name)
            log.debug("aws: read %s", counts_line(self.clients.calls, self.targets))
            return AwsSeen({}, (), {}, {}, (), parts=parts)
        seen = self.read_one()
        if self.ctx.scheduled and not seen.failed:
            cadence.stamp(self.ctx.state_dir, self.name)
        return seen

    def read_one(self) -> AwsSeen:
        """:meth:`read` for this backend's one region and its groups."""
        reads, failed, attach_notes = sg.read(self.ec2(), self.groups, workers=self.read_workers)
        mark = self.ctx.state_dir / self.mark
        # Prefix lists off: look for cfallow's lists only while a rule still references one
        # or this host made one (so `remove` finds them): one call less per run.
        look = (
            self.prefix_lists
            or mark.exists()
            or any(r.owned and r.key.kind == "prefix-list" for rs in reads.values() for r in rs)
        )
        lists = pls.find_lists(self.ec2()) if look else {}
        if lists and not mark.exists():
            _mark(mark, True)
        known = {pl.list_id for pl in lists.values()}
        referenced = {
            r.key.target
            for rules in reads.values()
            for r in rules
            if r.key.kind == "prefix-list" and r.key.target not in known | set(PENDING.values())
        }
        sizes, notes = pls.sizes(self.ec2(), referenced)
        return AwsSeen(reads, tuple(failed), lists, sizes, (*attach_notes, *notes))

    def diff(self, observed: AwsSeen, desired: Networks | None) -> Plan[AwsWork]:
        """Quota-checked plan: lists first, then each group (authorize, then revoke).

        A group over its quota is left out and named in ``Plan.failed``: it fails
        alone, the other groups are written.
        """
        if observed.skipped:
            return Plan(self.name, notes=(observed.skipped,))
        if self.targets:
            return self._diff_targets(observed, desired)
        if desired is None:
            return self._removal(observed)
        seen = observed
        lists = seen.lists if self.prefix_lists else {}
        wanted = self._wanted(desired, lists)
        if self.prefix_lists:
            current = frozenset(IPNetwork(c) for pl in lists.values() for c in pl.entries)
            covered: Networks = frozenset()
        else:
            current = _owned_cidrs(seen.rules.values())
            covered = self._covered(seen, desired)
        sized = {pl.list_id: (pl.family, pl.max_entries) for pl in seen.lists.values()}
        sized.update({PENDING[f]: (f, self.max_entries) for f in FAMILIES})
        sized.update(seen.sizes)
        changes, errors, notes = [], [], list(seen.notes)
        for group, rules in seen.rules.items():
            change, error = quota(
                group_change(group, rules, wanted), rules, sized, self.rules_per_group
            )
            if error:  # this group fails alone: the others are still written
                errors.append(error)
            else:
                changes.append(change)
            left = sum(1 for r in rules if not r.owned and r.key in wanted)
            if left:
                notes.append(f"{group}: {left} wanted rule(s) already present, not cfallow's")
            notes += open_to_all(group, rules, self.protocol, self.ports)
        hint = FIT_HINT_LISTS if self.prefix_lists else FIT_HINT
        failed = ["; ".join(errors) + "; " + hint] if errors else []
        add, remove = diff(desired, current, covered)
        todo = tuple(c for c in changes if c.authorize or c.revoke)
        drift = explain(todo, add, remove) + _unreadable(seen.failed)
        list_changes = pls.plan_lists(lists, desired, self.max_entries) if self.prefix_lists else []
        work = AwsWork(tuple(list_changes), todo, seen.failed, ())
        return make_plan(
            self.name,
            desired,
            current,
            covered=covered,
            drift=drift,
            notes=notes,
            steps=[work] if not work.empty else [],
            failed=failed,
        )

    def _diff_targets(self, observed: AwsSeen, desired: Networks | None) -> Plan[AwsWork]:
        """Every target's own plan, combined; a target that cannot be read or planned fails
        alone (``Plan.failed``, named by its label)."""
        plans: list[Plan[Any]] = []
        steps: list[AwsWork] = []
        failed: list[str] = []
        for target, seen in observed.parts:
            if not isinstance(seen, AwsSeen):
                why = seen if " " in seen else f"{seen} (describe)"  # a bare AWS error code
                failed.append(f"{target.label}: {why}")
                continue
            try:
                plan = self.part(target).diff(seen, desired)
            except BackendError as exc:
                failed.append(f"{target.label}: {exc}")
                continue
            plans.append(plan)
            steps += [dataclasses.replace(step, target=target) for step in plan.steps]
            failed += [f"{target.label}: {f}" for f in plan.failed]
        combined: Plan[AwsWork] = combine(
            self.name,
            plans,
            drift=[d for p in plans for d in p.drift],
            notes=[n for p in plans for n in p.notes],
            steps=steps,
        )
        return dataclasses.replace(combined, failed=tuple(failed))

    def _wanted(self, desired: Networks, lists: Mapping[str, pls.PrefixList]) -> set[Key]:
        if not self.prefix_lists:
            targets = {str(n) for n in desired}
        else:
            families = {f"IPv{n.version}" for n in desired}
            targets = {lists[f].list_id if f in lists else PENDING[f] for f in families}
        return {Key(self.protocol, p.first, p.last, t) for p in self.ports for t in targets}

    def _covered(self, seen: AwsSeen, desired: Networks) -> Networks:
        """Ranges every group already allows through a rule that is not cfallow's."""
        unowned = {g: {r.key for r in rules if not r.owned} for g, rules in seen.rules.items()}
        return frozenset(
            n
            for n in desired
            if all(
                Key(self.protocol, p.first, p.last, str(n)) in unowned[g]
                for g in seen.rules
                for p in self.ports
            )
        )

    def _removal(self, seen: AwsSeen) -> Plan[AwsWork]:
        """Revoke every owned rule in the configured groups; delete cfallow's prefix lists."""
        todo = tuple(c for c in (group_change(g, r, ()) for g, r in seen.rules.items()) if c.revoke)
        current = _owned_cidrs(seen.rules.values()) | frozenset(
            IPNetwork(c) for pl in seen.lists.values() for c in pl.entries
        )
        deletes = tuple(pls.DeleteList(pl.list_id) for pl in seen.lists.values())
        drift = (
            explain(todo, frozenset(), current)
            + [f"delete prefix list {d.list_id}" for d in deletes]
            + _unreadable(seen.failed)
        )
        work = AwsWork((), todo, seen.failed, deletes)
        return make_plan(
            self.name, frozenset(), current, drift=drift, steps=[work] if not work.empty else []
        )

    # -- apply -------------------------------------------------------------------

    def apply(self, plan: Plan[AwsWork]) -> None:
        """Lists first, then each group (authorize, then revoke), then list deletions.

        A failing group does not stop the others; every failure is named in
        one line at the end (group, AWS error code, operation).
        """
        if self.targets:
            self._apply_targets(plan)
            return
        self.apply_one(plan.steps, plan.failed)

    def _apply_targets(self, plan: Plan[AwsWork]) -> None:
        by_target: dict[Target, list[AwsWork]] = {}
        for work in plan.steps:
            assert work.target is not None
            by_target.setdefault(work.target, []).append(work)
        outcomes = each(
            list(by_target), lambda t: self.part(t).apply_one(by_target[t], plan.failed)
        )
        log.debug("aws: %s", counts_line(self.clients.calls, self.targets))
        failures = [f"{o.target.label}: {o.error}" for o in outcomes if o.error]
        if failures:
            raise BackendError("; ".join(failures))

    def apply_one(self, steps: Iterable[AwsWork], failed: Iterable[str] = ()) -> None:
        """:meth:`apply` for this backend's one region."""
        try:
            failures = self._apply_steps(steps)
        except Exception:  # a prefix list not written: the next scheduled run reads again
            cadence.forget(self.ctx.state_dir, self.name)
            raise
        if failures or tuple(failed):
            cadence.forget(self.ctx.state_dir, self.name)
        if failures:
            raise BackendError("; ".join(failures))

    def _apply_steps(self, steps: Iterable[AwsWork]) -> list[str]:
        failures: list[str] = []
        for work in steps:
            if any(change.list_id is None for change in work.lists):
                _mark(self.ctx.state_dir / self.mark, True)  # before: a kill keeps the mark
            created = self._apply_lists(work.lists)
            failures += [f"{u.group}: {u.code} (describe)" for u in work.unreadable]
            for change in work.groups:
                failure = self._apply_group(change, created)
                if failure:
                    failures.append(failure)
            for delete in work.deletes:
                try:
                    pls.delete(self.ec2(), delete.list_id)
                except aws_errors() as exc:
                    failures.append(f"{delete.list_id}: {error_code(exc)} (delete prefix list)")
            if work.deletes and not failures:
                _mark(self.ctx.state_dir / self.mark, False)
        return failures

    def _apply_lists(self, changes: Iterable[pls.ListChange]) -> dict[str, str]:
        created: dict[str, str] = {}
        for change in changes:
            try:
                created[PENDING[change.family]] = pls.apply_change(
                    self.ec2(), change, interval=self.poll_interval, timeout=self.poll_timeout
                )
            except aws_errors() as exc:
                raise BackendError(
                    f"{change.family} prefix list {change.list_id or '(new)'}: {error_code(exc)}"
                    " (nothing changed in the groups)"
                ) from exc
        return created

    def _apply_group(self, change: GroupChange, created: dict[str, str]) -> str | None:
        keys = tuple(
            Key(k.protocol, k.from_port, k.to_port, created.get(k.target, k.target))
            for k in change.authorize
        )
        phases = [("authorize", keys), ("revoke", change.revoke)]
        if change.revoke_first:
            phases.reverse()
        for op, items in phases:
            if not items:
                continue
            try:
                if op == "authorize":
                    sg.authorize(self.ec2(), change.group, keys)
                else:
                    sg.revoke(self.ec2(), change.group, change.revoke)
            except aws_errors() as exc:
                return f"{change.group}: {error_code(exc)} ({op})"
        return None


def _mark(path: Path, present: bool) -> None:
    """Remember (or forget) that cfallow's prefix lists exist in this region."""
    with contextlib.suppress(OSError):
        if present:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            path.touch()
        else:
            path.unlink()


def _unreadable(failed: Iterable[GroupUnreadable]) -> list[str]:
    return [f"{f.group}: cannot read rules ({f.code})" for f in failed]


def _owned_cidrs(reads: Iterable[list[Rule]]) -> Networks:
    return frozenset(
        IPNetwork(r.key.target)
        for rules in reads
        for r in rules
        if r.owned and r.key.kind in FAMILIES
    )
