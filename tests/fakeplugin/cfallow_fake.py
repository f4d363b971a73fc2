"""A test-only backend, a separate distribution loaded through the entry-point group like
any plugin. Its target: a JSON file ``{"owned": [...], "foreign": [...], "writes": N}``
(``foreign``: the admin's entries). ``fail`` = check|plan|apply fails on purpose;
``after_apply = [ARGV...]`` runs a command after a successful apply."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from cfallow.backend import Backend, Context
from cfallow.errors import BackendError, TargetMoved
from cfallow.fs import write_atomic
from cfallow.model import Networks, Plan, as_strings, make_plan, parse_cidr
from cfallow.section import Section


@dataclass(frozen=True)
class Seen:
    """What ``read`` found: cfallow's entries, the admin's, and the file's write count."""

    owned: Networks
    foreign: Networks
    writes: int


@dataclass(frozen=True)
class Step:
    """The one step: the file's owned list becomes ``owned`` (if it still counts ``basis``)."""

    owned: tuple[str, ...]
    basis: int


class FakeBackend(Backend[Seen, Step]):
    """Keeps owned entries in a JSON file; counts writes."""

    name = "fake"

    def __init__(self, section: Section, ctx: Context) -> None:
        super().__init__(section, ctx)
        self.path = Path(section.get_str("path", str(ctx.state_dir / "fake-target.json")))
        self.fail = section.get_choice("fail", "", ("", "check", "plan", "apply"))
        self.after_apply = section.get_strings("after_apply", [])

    def check(self) -> None:
        if self.fail == "check":
            raise BackendError("fake: check failed on purpose")

    def _data(self) -> dict[str, object]:
        try:
            data: dict[str, object] = json.loads(self.path.read_text())
        except FileNotFoundError:
            data = {}
        return data

    def read(self) -> Seen:
        if self.fail == "plan":
            raise BackendError("fake: plan failed on purpose")
        data = self._data()

        def nets(key: str) -> Networks:
            raw = data.get(key, [])
            return (
                frozenset(parse_cidr(str(c)) for c in raw) if isinstance(raw, list) else frozenset()
            )

        writes = data.get("writes", 0)
        return Seen(nets("owned"), nets("foreign"), writes if isinstance(writes, int) else 0)

    def diff(self, observed: Seen, desired: Networks | None) -> Plan[Step]:
        plan: Plan[Step] = make_plan(
            self.name, desired or frozenset(), observed.owned, covered=observed.foreign
        )
        if not plan.changed:
            return plan
        return replace(plan, steps=(Step(tuple(as_strings(plan.after)), observed.writes),))

    def apply(self, plan: Plan[Step]) -> None:
        if self.fail == "apply":
            raise BackendError("fake: apply failed on purpose")
        for step in plan.steps:
            data = self._data()
            if data.get("writes", 0) != step.basis:
                raise TargetMoved("fake: the file changed since it was read")
            data.update(owned=list(step.owned), writes=step.basis + 1)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(data, indent=1))
        if self.after_apply:
            self.ctx.runner.run(self.after_apply)


class SecondFakeBackend(FakeBackend):
    """The same fake under another name, to run two backends side by side."""

    name = "fake2"
