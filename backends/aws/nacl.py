"""The ``aws-nacl`` backend: Cloudflare's ranges in VPC network ACLs, inside a band cfallow owns.

For every configured ACL: allow Cloudflare's ranges on the configured ports and
deny the same ports to everyone else, with entries numbered inside
``rule_numbers`` (the ACL tagged ``cfallow:rule-numbers``). Nothing outside the
band, and no outbound entry, is ever touched. A change creates its new entries
at free numbers before it deletes the old ones. Before any write the inbound
entries are counted against the ACL quota (Service Quotas where readable, else
20), per ACL; a target that does not fit, cannot be read or refuses a write
fails alone and is named, the others are written. One run covers many regions
and accounts (:mod:`.targets`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from netaddr import IPNetwork

from cfallow.backend import Backend, Context
from cfallow.errors import BackendError, ConfigError
from cfallow.model import Networks, Plan, make_plan
from cfallow.section import Section, parse_ports

from . import cadence
from . import nacl_rules as nr
from .client import aws_errors, error_code
from .targets import Clients, Target, check_ready, counts_line, each, parse_endpoint, parse_targets

ACL_ID = re.compile(r"acl-[0-9a-f]{8}(?:[0-9a-f]{9})?")
QUOTA_CODE = ("vpc", "L-2AEEBF1A")
#: AWS's code for an unknown ACL id (and moto 5.2's, which names route tables).
_NOT_FOUND = ("InvalidNetworkAclID.NotFound", "InvalidRouteTableID.NotFound")
log = logging.getLogger("cfallow")


@dataclass(frozen=True)
class TargetRead:
    """What one target's read found (or why it could not be read)."""

    target: Target
    acls: tuple[nr.Acl, ...] = ()
    missing: tuple[str, ...] = ()
    quota: int = nr.DEFAULT_QUOTA
    quota_note: str = ""
    error: str = ""


@dataclass(frozen=True)
class NaclSeen:
    """Every target's read; ``skipped`` says why AWS was not read (a scheduled run not due)."""

    reads: tuple[TargetRead, ...]
    skipped: str = ""


@dataclass(frozen=True)
class NaclWork:
    """One apply: the change of each ACL, with its target."""

    changes: tuple[tuple[Target, nr.AclChange], ...]


class AwsNaclBackend(Backend[NaclSeen, NaclWork]):
    """Keep Cloudflare's ranges in VPC network ACLs (``[backends.aws-nacl]``)."""

    name: ClassVar[str] = "aws-nacl"
    needs_network: ClassVar[bool] = True
    attempts: ClassVar[int] = 6
    backoff: ClassVar[float] = 0.5

    def __init__(self, section: Section, ctx: Context) -> None:
        """Read ``[backends.aws-nacl]``; no AWS call happens here."""
        super().__init__(section, ctx)
        where = section.where
        self.targets = parse_targets(section, "network_acl_ids", ACL_ID, "network ACL")
        self.ports = parse_ports(section, default=(443,))
        self.protocol = section.get_choice("protocol", "tcp", ("tcp", "udp"))
        band = nr.parse_band(section.get_str("rule_numbers", "1-99"))
        if band is None:
            raise ConfigError(f'[{where}] rule_numbers: expected "FIRST-LAST" within 1-32766')
        self.band = band
        self.layout = section.get_choice("layout", "per-port", ("per-port", "span"))
        self.quota = section.get_int("rules_per_acl", 0, minimum=0)
        if self.quota > nr.MAX_QUOTA:
            raise ConfigError(f"[{where}] rules_per_acl: at most {nr.MAX_QUOTA} (AWS limit)")
        self.endpoint_url = parse_endpoint(section)
        self.interval = cadence.interval(section)
        self.clients = Clients(self.endpoint_url, attempts=self.attempts, backoff=self.backoff)

    def check(self) -> None:
        """boto3, a region and credentials for every target (no API call)."""
        check_ready(self.clients, self.targets)

    # -- read -------------------------------------------------------------------------

    def read(self) -> NaclSeen:
        """Per target, concurrently: one ``DescribeNetworkAcls`` (and the ACL quota)."""
        why = cadence.not_due(self.ctx, self.name, self.interval)
        if why:
            return NaclSeen((), why)
        outcomes = each(self.targets, self._read_target)
        reads = tuple(
            o.value if o.value is not None else TargetRead(o.target, error=o.error or "?")
            for o in outcomes
        )
        log.debug("%s: read %s", self.name, counts_line(self.clients.calls, self.targets))
        if self.ctx.scheduled and not any(r.error for r in reads):
            cadence.stamp(self.ctx.state_dir, self.name)
        return NaclSeen(reads)

    def _read_target(self, target: Target) -> TargetRead:
        ec2 = self.clients.get(target, "ec2")
        try:
            raw = ec2.pages("describe_network_acls", "NetworkAcls", NetworkAclIds=list(target.ids))
        except aws_errors() as exc:
            if error_code(exc) not in _NOT_FOUND or len(target.ids) == 1:
                if error_code(exc) in _NOT_FOUND:
                    return TargetRead(target, missing=target.ids)
                raise
            # One missing id fails the whole call: find it, one ACL at a time.
            raw = []
            for acl_id in target.ids:
                try:
                    raw += ec2.pages("describe_network_acls", "NetworkAcls", NetworkAclIds=[acl_id])
                except aws_errors() as one:
                    if error_code(one) not in _NOT_FOUND:
                        raise
        acls = {a.acl_id: a for a in (nr.parse_acl(r) for r in raw)}
        quota, note = self.quota, ""
        if not quota:
            quota, note = self._quota(target)
        return TargetRead(
            target,
            tuple(acls[i] for i in target.ids if i in acls),
            tuple(i for i in target.ids if i not in acls),
            quota,
            note,
        )

    def _quota(self, target: Target) -> tuple[int, str]:
        try:
            got = self.clients.get(target, "service-quotas").call(
                "get_service_quota", ServiceCode=QUOTA_CODE[0], QuotaCode=QUOTA_CODE[1]
            )
            return int(got["Quota"]["Value"]), ""
        except aws_errors() as exc:
            return nr.DEFAULT_QUOTA, (
                f"{target.label}: ACL quota not readable ({error_code(exc)}): counted as"
                f" {nr.DEFAULT_QUOTA} (set rules_per_acl, or allow servicequotas:GetServiceQuota)"
            )

    # -- diff ---------------------------------------------------------------------------

    def diff(self, observed: NaclSeen, desired: Networks | None) -> Plan[NaclWork]:
        """Per ACL: the change, or why it is refused (``Plan.failed``: that target fails alone,
        the others are applied)."""
        if observed.skipped:
            return Plan(self.name, notes=(observed.skipped,))
        allows, denies = nr.wanted(desired or frozenset(), self.ports, self.protocol, self.layout)
        changes: list[tuple[Target, nr.AclChange]] = []
        failures: list[str] = []
        notes: list[str] = []
        current: set[IPNetwork] = set()
        for read in observed.reads:
            label = read.target.label
            if read.error:
                failures.append(f"{label}: {read.error} (describe)")
                continue
            if read.quota_note:
                notes.append(read.quota_note)
            failures += [f"{acl} ({label}): InvalidNetworkAclID.NotFound" for acl in read.missing]
            for acl in read.acls:
                mine = nr.owned(acl)
                current |= {IPNetwork(e.spec.cidr) for e in mine if e.spec.allow}
                line, ch = self._acl(
                    acl=acl,
                    label=label,
                    quota=read.quota,
                    desired=desired,
                    allows=allows,
                    denies=denies,
                )
                if line:
                    failures.append(line)
                elif ch is not None and not ch.empty:
                    changes.append((read.target, ch))
                if desired is not None:
                    notes += nr.return_traffic(acl, label, desired, self.protocol)
                    notes += nr.shadowed(acl, label, self.band, self.ports, self.protocol)
        wanted_cidrs = frozenset(IPNetwork(s.cidr) for s in allows)
        return make_plan(
            self.name,
            frozenset(wanted_cidrs),
            frozenset(current),
            drift=_explain(changes, wanted_cidrs, frozenset(current)),
            notes=notes,
            steps=[NaclWork(tuple(changes))] if changes else [],
            failed=failures,
        )

    def _acl(
        self,
        *,
        acl: nr.Acl,
        label: str,
        quota: int,
        desired: Networks | None,
        allows: Sequence[nr.Spec],
        denies: Sequence[nr.Spec],
    ) -> tuple[str, nr.AclChange | None]:
        if desired is None:
            return "", nr.removal(acl, label)
        if acl.tag is not None and nr.parse_band(acl.tag) is None:
            return (
                f"{acl.acl_id} ({label}): tag {nr.TAG_KEY} = {acl.tag!r} is not a band of rule"
                ' numbers ("FIRST-LAST"): fix or delete the tag',
                None,
            )
        squat = nr.squatters(acl, self.band)
        if squat:
            numbers = ", ".join(str(e.number) for e in squat[:5])
            return (
                f"{acl.acl_id} ({label}): rule(s) {numbers} inside band {self.band} are not"
                " cfallow's (the ACL has no cfallow tag): choose free rule_numbers",
                None,
            )
        try:
            ch = nr.change(acl, label, self.band, allows, denies)
        except nr.Unplaceable as exc:
            return f"{acl.acl_id} ({label}): {exc}", None
        n = nr.count(acl, ch)
        if n.total > quota:
            proposal = nr.densest(
                desired=desired,
                ports=self.ports,
                protocol=self.protocol,
                layout=self.layout,
                other=n.other,
                default=n.default,
            )
            return nr.refusal(label, acl.acl_id, n, quota, proposal), None
        if n.peak > quota and ch.create and ch.delete:
            return "", nr.AclChange(
                ch.acl_id, ch.label, ch.create, ch.delete, ch.tag, ch.untag, delete_first=True
            )
        return "", ch

    # -- apply ----------------------------------------------------------------------------

    def apply(self, plan: Plan[NaclWork]) -> None:
        """Per target concurrently, per ACL in order: tag, create, delete (denies first).

        Raises one :class:`BackendError` naming every ACL whose write failed, after
        the others are written.
        """
        failures: list[str] = []
        for work in plan.steps:
            failures += self._write_all(work.changes)
        log.debug("%s: %s", self.name, counts_line(self.clients.calls, self.targets))
        if failures or plan.failed:
            cadence.forget(self.ctx.state_dir, self.name)
        if failures:
            raise BackendError("; ".join(failures))

    def _write_all(self, changes: Sequence[tuple[Target, nr.AclChange]]) -> list[str]:
        by_target: dict[Target, list[nr.AclChange]] = {}
        for target, ch in changes:
            by_target.setdefault(target, []).append(ch)
        failures: list[str] = []
        for outcome in each(list(by_target), lambda t: self._write(t, by_target[t])):
            if outcome.error:
                failures.append(f"{outcome.target.label}: {outcome.error}")
            else:
                failures += outcome.value or []
        return failures

    def _write(self, target: Target, changes: list[nr.AclChange]) -> list[str]:
        ec2 = self.clients.get(target, "ec2")
        failed = []
        for ch in changes:
            op = "tag"
            try:
                if ch.tag:
                    ec2.call(
                        "create_tags",
                        Resources=[ch.acl_id],
                        Tags=[{"Key": nr.TAG_KEY, "Value": ch.tag}],
                    )
                phases = [("create", ch.create), ("delete", ch.delete)]
                if ch.delete_first:
                    phases.reverse()
                for op, entries in phases:
                    for e in entries:
                        _write_entry(ec2, ch.acl_id, op, e)
                if ch.untag:
                    op = "untag"
                    ec2.call("delete_tags", Resources=[ch.acl_id], Tags=[{"Key": nr.TAG_KEY}])
            except aws_errors() as exc:
                failed.append(f"{ch.acl_id} ({target.label}): {error_code(exc)} ({op})")
        return failed


def _write_entry(ec2: Any, acl_id: str, op: str, entry: nr.Entry) -> None:
    s = entry.spec
    if op == "delete":
        try:
            ec2.call(
                "delete_network_acl_entry",
                NetworkAclId=acl_id,
                RuleNumber=entry.number,
                Egress=s.egress,
            )
        except aws_errors() as exc:
            if error_code(exc) != "InvalidNetworkAclEntry.NotFound":
                raise
        return
    family = "Ipv6CidrBlock" if s.version == 6 else "CidrBlock"
    ec2.call(
        "create_network_acl_entry",
        NetworkAclId=acl_id,
        RuleNumber=entry.number,
        Protocol=s.protocol,
        RuleAction="allow" if s.allow else "deny",
        Egress=s.egress,
        PortRange={"From": s.first, "To": s.last},
        **{family: s.cidr},
    )


def _explain(
    changes: Sequence[tuple[Target, nr.AclChange]], wanted: Networks, current: Networks
) -> list[str]:
    """Drift lines for writes that the CIDR-level add/remove do not explain."""
    add = {str(n) for n in wanted - current}
    remove = {str(n) for n in current - wanted}
    lines = []
    for _, ch in changes:
        extra = [e for e in ch.create if not (e.spec.allow and e.spec.cidr in add)]
        extra += [e for e in ch.delete if not (e.spec.allow and e.spec.cidr in remove)]
        if extra:
            what = "; ".join(
                f"{'create' if e in ch.create else 'delete'} {e.number} {e.spec.text()}"
                for e in extra[:4]
            )
            more = f" (+{len(extra) - 4} more)" if len(extra) > 4 else ""
            lines.append(f"{ch.acl_id} ({ch.label}): {what}{more}")
        if ch.delete_first:
            lines.append(f"{ch.acl_id} ({ch.label}): deleting before creating (quota)")
    return lines
