"""The fail2ban backend's per-jail diff: drop-in entries, live list, cfallow's record."""

from __future__ import annotations

from dataclasses import dataclass

from cfallow.errors import BackendError
from cfallow.model import Networks, Plan, make_plan

from . import record
from .client import check_jail_name, strs


@dataclass(frozen=True)
class RecordChange:
    """Plan step: cfallow's record of live entries, widened before and narrowed after."""

    before: tuple[tuple[str, Networks], ...]
    after: tuple[tuple[str, Networks], ...]


@dataclass(frozen=True)
class LiveChange:
    """Plan step: one jail's live ignore list (validated CIDR strings)."""

    jail: str
    add: tuple[str, ...]
    remove: tuple[str, ...]


def usable(jail: str) -> bool:
    try:
        check_jail_name(jail)
    except BackendError:
        return False
    return True


class Diff:
    """The per-jail diff of one plan, accumulated jail by jail."""

    def __init__(
        self,
        desired: Networks | None,
        managed: list[str],
        owned: dict[str, Networks],
        recorded: dict[str, Networks],
        running: set[str],
    ) -> None:
        self.desired, self.managed, self.owned = desired, set(managed), owned
        self.recorded, self.running = recorded, running
        self.new_owned: dict[str, Networks] = {}
        self.parts: list[Plan[object]] = []  # one per jail: its drop-in entries
        self.live: list[LiveChange] = []
        self.widened: dict[str, Networks] = {}
        self.narrowed: dict[str, Networks] = {}

    def jail(
        self,
        jail: str,
        base: Networks,
        now: Networks | None,
        notes: list[str],
        drift: list[str],
    ) -> None:
        """Diff one jail: drop-in entries, and (``now`` not None) its live list."""
        desired = self.desired
        want = desired - base if desired is not None and jail in self.managed else frozenset()
        mine = self.owned.get(jail, frozenset())
        rec = self.recorded.get(jail, frozenset())
        self.new_owned[jail] = want
        part: Plan[object] = make_plan(jail, want, mine)
        self.parts.append(part)
        if part.changed:
            notes.append(f"jail {jail}: +{len(part.add)} -{len(part.remove)}")
        if now is None:
            if rec:  # not running: its live list, if it starts, comes from the files
                self.widened[jail] = rec
            return
        live_add = want - now
        live_del = ((mine | rec) - want - base) & now
        lacking = live_add & mine
        if lacking:
            drift.append(f"jail {jail}: live list lacks {len(lacking)} owned range(s)")
        leaked = live_del - mine
        if leaked:
            drift.append(
                f"jail {jail}: live list keeps {len(leaked)} range(s) cfallow added and no "
                f"longer lists ({', '.join(strs(leaked)[:3])})"
            )
        if live_add or live_del:
            self.live.append(LiveChange(jail, strs(live_add), strs(live_del)))
        self.widened[jail] = rec | ((mine | want) - base)
        if want:
            self.narrowed[jail] = want

    def record_change(self, recorded: dict[str, Networks]) -> RecordChange:
        """The record before the live changes (widened) and after them (narrowed)."""
        before = record.merged(recorded, self.widened)
        after = dict(self.narrowed)
        for jail in set(recorded) - self.running:
            after[jail] = recorded[jail]  # unknown live state: keep
        return RecordChange(_items(before), _items(after))


def _items(rec: dict[str, Networks]) -> tuple[tuple[str, Networks], ...]:
    return tuple(sorted((j, n) for j, n in rec.items() if n))
