"""Prefix-list mode of the ``aws`` backend: one customer-managed list per family.

cfallow owns a list when it carries the tag ``managed-by=cfallow`` (it created
it so); it never touches any other list. Entries change with one
``modify_managed_prefix_list`` (AddEntries + RemoveEntries against
``CurrentVersion``), retried once after a re-read on
``PrefixListVersionMismatch``; the change completes asynchronously, so every
write waits for the list to reach ``*-complete``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from netaddr import IPNetwork

from cfallow.errors import BackendError
from cfallow.model import Networks, as_strings

from .client import Ec2, aws_errors, error_code
from .rules import FAMILIES, TAG_KEY, TAG_VALUE

ENTRY_DESCRIPTION = "cfallow: Cloudflare range"
_GONE = ("delete-in-progress", "delete-complete")


@dataclass(frozen=True)
class PrefixList:
    """A cfallow-owned prefix list as read from AWS."""

    list_id: str
    family: str
    version: int
    max_entries: int
    entries: frozenset[str]


@dataclass(frozen=True)
class ListChange:
    """Make one family's list hold exactly ``target`` (create it if ``list_id`` is None)."""

    family: str
    list_id: str | None
    version: int
    target: frozenset[str]
    add: tuple[str, ...]
    remove: tuple[str, ...]
    max_entries: int


@dataclass(frozen=True)
class DeleteList:
    """Delete a cfallow list (after the rules referencing it are revoked)."""

    list_id: str


def list_name(family: str) -> str:
    """The name cfallow gives the list it creates for ``family``."""
    return f"cfallow-cloudflare-{family.lower()}"


def _entries(ec2: Ec2, list_id: str) -> frozenset[str]:
    raw = ec2.pages("get_managed_prefix_list_entries", "Entries", PrefixListId=list_id)
    return frozenset(str(IPNetwork(e["Cidr"]).cidr) for e in raw)


def _read(ec2: Ec2, raw: Mapping[str, Any]) -> PrefixList:
    return PrefixList(
        raw["PrefixListId"],
        raw["AddressFamily"],
        int(raw.get("Version") or 0),
        int(raw.get("MaxEntries") or 0),
        _entries(ec2, raw["PrefixListId"]),
    )


def find_lists(ec2: Ec2) -> dict[str, PrefixList]:
    """cfallow's lists by family; more than one for a family is an error, and so is a
    refused read (one line naming the AWS error)."""
    try:
        raw = ec2.pages(
            "describe_managed_prefix_lists",
            "PrefixLists",
            Filters=[{"Name": f"tag:{TAG_KEY}", "Values": [TAG_VALUE]}],
        )
        found: dict[str, PrefixList] = {}
        for item in raw:
            if item.get("State") in _GONE:
                continue
            family = item.get("AddressFamily", "")
            if family in found:
                raise BackendError(
                    f"several cfallow prefix lists for {family}: {found[family].list_id},"
                    f" {item['PrefixListId']} (delete all but one)"
                )
            found[family] = _read(ec2, item)
    except aws_errors() as exc:
        raise BackendError(f"cannot read cfallow's prefix lists: {error_code(exc)}") from exc
    return found


def sizes(ec2: Ec2, list_ids: Iterable[str]) -> tuple[dict[str, tuple[str, int]], list[str]]:
    """``{list id: (family, MaxEntries)}`` for lists that rules reference, and notes.

    A list that cannot be described, or that reports no MaxEntries (AWS-managed
    lists), is left out and so counted as one rule in each family.
    """
    ids = sorted(set(list_ids))
    if not ids:
        return {}, []
    try:
        raw = ec2.pages("describe_managed_prefix_lists", "PrefixLists", PrefixListIds=ids)
    except aws_errors() as exc:
        return {}, [f"cannot size prefix lists {', '.join(ids)} ({error_code(exc)}): counted as 1"]
    out: dict[str, tuple[str, int]] = {}
    for item in raw:
        if item.get("MaxEntries"):
            out[item["PrefixListId"]] = (item["AddressFamily"], int(item["MaxEntries"]))
    notes = [f"prefix list {i}: size unknown, counted as 1 rule" for i in ids if i not in out]
    return out, notes


def plan_lists(
    found: Mapping[str, PrefixList], desired: Networks, max_entries: int
) -> list[ListChange]:
    """One change per family whose list is missing or differs from ``desired``."""
    changes = []
    for family in FAMILIES:
        target = frozenset(as_strings(n for n in desired if f"IPv{n.version}" == family))
        have = found.get(family)
        size = have.max_entries if have else max_entries
        if len(target) > size:
            where = f"prefix list {have.list_id}" if have else "a new prefix list"
            raise BackendError(
                f"{len(target)} {family} ranges do not fit {where} (MaxEntries {size}):"
                " raise prefix_list_max_entries (a new list) or resize the list"
            )
        if have is None and not target:
            continue
        current = have.entries if have else frozenset()
        if have is not None and current == target:
            continue
        changes.append(
            ListChange(
                family,
                have.list_id if have else None,
                have.version if have else 0,
                target,
                tuple(sorted(target - current)),
                tuple(sorted(current - target)),
                size,
            )
        )
    return changes


def wait(ec2: Ec2, list_id: str, *, interval: float, timeout: float) -> dict[str, Any]:
    """Poll until the list's state is ``*-complete`` and return it; ``*-failed`` is an error."""
    deadline = time.monotonic() + timeout
    while True:
        raw = ec2.call("describe_managed_prefix_lists", PrefixListIds=[list_id])["PrefixLists"]
        state = raw[0].get("State", "") if raw else "missing"
        if state.endswith("-complete"):
            found: dict[str, Any] = raw[0]
            return found
        if state.endswith("-failed") or state == "missing":
            why = raw[0].get("StateMessage", "") if raw else ""
            raise BackendError(f"prefix list {list_id}: {state} {why}".strip())
        if time.monotonic() > deadline:
            raise BackendError(f"prefix list {list_id}: still {state} after {timeout:g} s")
        time.sleep(interval)


def _entry_list(cidrs: Iterable[str]) -> list[dict[str, str]]:
    return [{"Cidr": c, "Description": ENTRY_DESCRIPTION} for c in cidrs]


def apply_change(ec2: Ec2, change: ListChange, *, interval: float, timeout: float) -> str:
    """Create or modify one list and wait for it; returns the list id."""
    if change.list_id is None:
        # The idempotency token belongs to this apply, not to the plan: a plan is a pure
        # value (the contract compares two diffs of the same state, steps included).
        created = ec2.call(
            "create_managed_prefix_list",
            PrefixListName=list_name(change.family),
            AddressFamily=change.family,
            MaxEntries=change.max_entries,
            Entries=_entry_list(sorted(change.target)),
            TagSpecifications=[
                {"ResourceType": "prefix-list", "Tags": [{"Key": TAG_KEY, "Value": TAG_VALUE}]}
            ],
            ClientToken=uuid.uuid4().hex,
        )
        list_id = str(created["PrefixList"]["PrefixListId"])
        wait(ec2, list_id, interval=interval, timeout=timeout)
        return list_id
    list_id, version = change.list_id, change.version
    add, remove = change.add, change.remove
    for attempt in (1, 2):
        kwargs: dict[str, Any] = {"PrefixListId": list_id, "CurrentVersion": version}
        if add:
            kwargs["AddEntries"] = _entry_list(add)
        if remove:
            kwargs["RemoveEntries"] = [{"Cidr": c} for c in remove]
        try:
            ec2.call("modify_managed_prefix_list", **kwargs)
            break
        except aws_errors() as exc:
            if attempt == 2 or error_code(exc) != "PrefixListVersionMismatch":
                raise
        # Someone changed the list since it was read: re-read, re-diff, retry once.
        fresh = _read(ec2, wait(ec2, list_id, interval=interval, timeout=timeout))
        version = fresh.version
        add = tuple(sorted(change.target - fresh.entries))
        remove = tuple(sorted(fresh.entries - change.target))
        if not add and not remove:
            return list_id
    wait(ec2, list_id, interval=interval, timeout=timeout)
    return list_id


def delete(ec2: Ec2, list_id: str) -> None:
    """Delete one cfallow list (AWS refuses while any rule still references it)."""
    try:
        ec2.call("delete_managed_prefix_list", PrefixListId=list_id)
    except aws_errors() as exc:
        if error_code(exc) != "InvalidPrefixListID.NotFound":
            raise
