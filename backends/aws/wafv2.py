"""The ``aws-wafv2`` backend: Cloudflare's ranges in WAFv2 IP sets, one per family.

Per target (region and account, :mod:`.targets`): ``ListIPSets`` finds
cfallow's sets by name and description, ``GetIPSet`` reads their addresses and
lock tokens; a change is one ``UpdateIPSet`` (the whole list, with the lock
token) or a ``CreateIPSet`` (tagged ``managed-by=cfallow``). When another
writer changed a set between the read and the update
(``WAFOptimisticLockException``), cfallow reads it again, plans again and
retries. A run that changes nothing writes nothing. cfallow never edits a web
ACL; outside scheduled runs it lists the web ACLs to say which reference its
sets, and ``remove`` refuses, naming the web ACL, while one does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from netaddr import IPNetwork

from cfallow.backend import Backend, Context
from cfallow.errors import BackendError, ConfigError
from cfallow.model import Networks, Plan, make_plan
from cfallow.section import Section

from . import cadence
from . import wafv2_sets as ws
from .client import Ec2, aws_errors, error_code
from .rules import TAG_KEY, TAG_VALUE
from .targets import Clients, Target, check_ready, each, parse_endpoint, parse_targets

LOCKED = "WAFOptimisticLockException"
#: Re-read and re-plan at most this many times when another writer keeps winning.
LOCK_ATTEMPTS = 3


@dataclass(frozen=True)
class SetsRead:
    """One target's sets, and (outside scheduled runs) which web ACLs reference them."""

    target: Target
    sets: tuple[ws.IpSet, ...] = ()
    referenced: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (set arn, web ACL names)
    checked_references: bool = False
    error: str = ""


@dataclass(frozen=True)
class WafSeen:
    """Every target's read."""

    reads: tuple[SetsRead, ...]
    skipped: str = ""


@dataclass(frozen=True)
class WafWork:
    """One target's set changes."""

    target: Target
    changes: tuple[ws.SetChange, ...]


class AwsWafv2Backend(Backend[WafSeen, WafWork]):
    """Keep Cloudflare's ranges in WAFv2 IP sets (``[backends.aws-wafv2]``)."""

    name: ClassVar[str] = "aws-wafv2"
    needs_network: ClassVar[bool] = True
    attempts: ClassVar[int] = 6
    backoff: ClassVar[float] = 0.5

    def __init__(self, section: Section, ctx: Context) -> None:
        """Read ``[backends.aws-wafv2]``; no AWS call happens here."""
        super().__init__(section, ctx)
        where = section.where
        self.scope = section.get_choice("scope", "REGIONAL", ("REGIONAL", "CLOUDFRONT"))
        self.targets = parse_targets(section, "", re.compile(""), "")
        if self.scope == "CLOUDFRONT" and any(
            t.region not in ("", "us-east-1") for t in self.targets
        ):
            raise ConfigError(f'[{where}] scope = "CLOUDFRONT" lives in region us-east-1 only')
        self.prefix = section.get_str("name", "cfallow-cloudflare")
        if not self.prefix.replace("-", "").replace("_", "").isalnum() or len(self.prefix) > 120:
            raise ConfigError(f"[{where}] name: letters, digits, - and _ only (at most 120)")
        self.endpoint_url = parse_endpoint(section)
        self.interval = cadence.interval(section)
        self.clients = Clients(self.endpoint_url, attempts=self.attempts, backoff=self.backoff)

    def check(self) -> None:
        """boto3, a region and credentials for every target (no API call)."""
        check_ready(self.clients, self.targets)

    def waf(self, target: Target) -> Ec2:
        """The target's WAFv2 client (CloudFront's scope lives in us-east-1)."""
        region = "us-east-1" if self.scope == "CLOUDFRONT" else ""
        return self.clients.get(target, "wafv2", region)

    # -- read -----------------------------------------------------------------------------

    def read(self) -> WafSeen:
        """Per target, concurrently: ``ListIPSets`` and one ``GetIPSet`` per owned set (and,
        outside scheduled runs, the web ACLs that reference them)."""
        why = cadence.not_due(self.ctx, self.name, self.interval)
        if why:
            return WafSeen((), why)
        outcomes = each(self.targets, self._read_target)
        reads = tuple(o.value or SetsRead(o.target, error=o.error or "?") for o in outcomes)
        if self.ctx.scheduled and not any(r.error for r in reads):
            cadence.stamp(self.ctx.state_dir, self.name)
        return WafSeen(reads)

    def _list(self, waf: Ec2, operation: str, key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        marker = None
        while True:
            kwargs: dict[str, Any] = {"Scope": self.scope, "Limit": 100}
            if marker:
                kwargs["NextMarker"] = marker
            page = waf.call(operation, **kwargs)
            items += page.get(key) or []
            marker = page.get("NextMarker")
            if not marker or not page.get(key):
                return items

    def _get(self, waf: Ec2, summary: dict[str, Any], family: str) -> ws.IpSet:
        got = waf.call("get_ip_set", Name=summary["Name"], Scope=self.scope, Id=summary["Id"])
        raw = got["IPSet"]
        return ws.IpSet(
            raw["Name"],
            raw["Id"],
            raw["ARN"],
            raw.get("IPAddressVersion", family),
            ws.canonical(raw.get("Addresses") or []),
            got["LockToken"],
        )

    def _read_target(self, target: Target) -> SetsRead:
        waf = self.waf(target)
        summaries = self._list(waf, "list_ip_sets", "IPSets")
        owned = ws.owned_summaries(summaries, self.prefix)
        sets = tuple(self._get(waf, s, f) for f, s in sorted(owned.items()))
        if self.ctx.scheduled or not sets:
            return SetsRead(target, sets)
        arns = {s.arn for s in sets}
        found: dict[str, list[str]] = {a: [] for a in arns}
        for acl in self._list(waf, "list_web_acls", "WebACLs"):
            raw = waf.call("get_web_acl", Name=acl["Name"], Scope=self.scope, Id=acl["Id"])
            for arn in ws.references(raw["WebACL"]) & arns:
                found[arn].append(str(acl["Name"]))
        refs = tuple((a, tuple(sorted(n))) for a, n in sorted(found.items()))
        return SetsRead(target, sets, refs, checked_references=True)

    # -- diff -------------------------------------------------------------------------------

    def diff(self, observed: WafSeen, desired: Networks | None) -> Plan[WafWork]:
        """Per target: the set changes; a target that cannot be read, or whose sets a web ACL
        still references at removal, fails alone (``Plan.failed``)."""
        if observed.skipped:
            return Plan(self.name, notes=(observed.skipped,))
        works, failed, notes, drift = [], [], [], []
        current: set[IPNetwork] = set()
        for read in observed.reads:
            label = read.target.label
            if read.error:
                failed.append(f"{label}: {read.error} (read)")
                continue
            current |= {IPNetwork(a) for s in read.sets for a in s.addresses}
            refs = dict(read.referenced)
            for family, addresses in ws.wanted(desired or frozenset()).items():
                if len(addresses) > ws.MAX_ADDRESSES:
                    failed.append(f"{label}: {len(addresses)} {family} ranges > 10,000 per set")
            if read.checked_references:
                notes += _reference_notes(label, read.sets, refs)
            if desired is None:
                busy = [(s, refs.get(s.arn, ())) for s in read.sets if refs.get(s.arn)]
                if busy:
                    failed += [
                        f"{label}: IP set {s.name} is referenced by web ACL {', '.join(n)}:"
                        " remove it there first (cfallow never edits web ACLs)"
                        for s, n in busy
                    ]
                    continue
            changes = ws.plan_sets({s.family: s for s in read.sets}, desired, self.prefix)
            if changes:
                works.append(WafWork(read.target, tuple(changes)))
                drift += [f"{label}: {c.text()}" for c in changes]
        return make_plan(
            self.name,
            desired or frozenset(),
            frozenset(current),
            drift=drift,
            notes=notes,
            steps=works,
            failed=failed,
        )

    # -- apply --------------------------------------------------------------------------------

    def apply(self, plan: Plan[WafWork]) -> None:
        """Per target concurrently: create, update (lock token; re-read and re-plan when
        another writer won), delete; one error naming every target that failed."""
        by_target = {w.target: w for w in plan.steps}
        outcomes = each(list(by_target), lambda t: self._write(by_target[t]))
        failures = [f"{o.target.label}: {o.error}" for o in outcomes if o.error]
        if failures or plan.failed:
            cadence.forget(self.ctx.state_dir, self.name)
        if failures:
            raise BackendError("; ".join(failures))

    def _write(self, work: WafWork) -> None:
        waf = self.waf(work.target)
        for change in work.changes:
            op = "create" if change.set_id is None else "delete" if change.delete else "update"
            try:
                if change.set_id is None:
                    waf.call(
                        "create_ip_set",
                        Name=change.name,
                        Scope=self.scope,
                        IPAddressVersion=change.family,
                        Addresses=list(change.addresses),
                        Description=ws.DESCRIPTION,
                        Tags=[{"Key": TAG_KEY, "Value": TAG_VALUE}],
                    )
                else:
                    self._check_tag(waf, change)
                    self._locked_write(waf, change)
            except aws_errors() as exc:
                raise BackendError(f"{change.name}: {error_code(exc)} ({op})") from exc

    def _check_tag(self, waf: Ec2, change: ws.SetChange) -> None:
        tags = waf.call("list_tags_for_resource", ResourceARN=change.arn)
        found = {
            t.get("Key"): t.get("Value")
            for t in (tags.get("TagInfoForResource") or {}).get("TagList") or []
        }
        if found.get(TAG_KEY) != TAG_VALUE:
            raise BackendError(
                f"{change.name}: named like cfallow's but not tagged {TAG_KEY}={TAG_VALUE}:"
                " not cfallow's (rename it, or set name)"
            )

    def _locked_write(self, waf: Ec2, change: ws.SetChange) -> None:
        lock = change.lock
        for attempt in range(LOCK_ATTEMPTS):
            try:
                if change.delete:
                    waf.call(
                        "delete_ip_set",
                        Name=change.name,
                        Scope=self.scope,
                        Id=change.set_id,
                        LockToken=lock,
                    )
                else:
                    waf.call(
                        "update_ip_set",
                        Name=change.name,
                        Scope=self.scope,
                        Id=change.set_id,
                        Addresses=list(change.addresses),
                        Description=ws.DESCRIPTION,
                        LockToken=lock,
                    )
                return
            except aws_errors() as exc:
                if error_code(exc) != LOCKED or attempt == LOCK_ATTEMPTS - 1:
                    raise
            # Another writer changed the set since it was read: read it again and plan again.
            fresh = self._get(waf, {"Name": change.name, "Id": change.set_id}, change.family)
            if not change.delete and fresh.addresses == frozenset(change.addresses):
                return
            lock = fresh.lock


def _reference_notes(
    label: str, sets: tuple[ws.IpSet, ...], refs: dict[str, tuple[str, ...]]
) -> list[str]:
    """Which web ACLs reference cfallow's sets: the sets filter nothing until one does."""
    notes = []
    for s in sets:
        names = refs.get(s.arn, ())
        if names:
            notes.append(f"{label}: IP set {s.name} is referenced by web ACL {', '.join(names)}")
        else:
            notes.append(
                f"{label}: IP set {s.name} is referenced by no web ACL: it filters nothing"
                " until a web ACL rule references it"
            )
    return notes
