"""A test-only backend whose target is a JSON file.

The file holds ``{"owned": [...], "foreign": [...], "writes": N}``.

Installed as a separate distribution so the tests load it through the
``cfallow.backends`` entry-point group exactly as a third-party plugin would.
``foreign`` entries belong to "the admin": they count as covering a desired
entry and are never touched. ``fail = "check"|"plan"|"apply"`` makes it fail.
``after_apply = [ARGV...]`` runs that command (through the runner) right after
a successful apply: tests use it to break something in the middle of a run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cfallow.backend import Backend, Context
from cfallow.config import Section
from cfallow.errors import BackendError
from cfallow.model import Networks, Plan, as_strings, make_plan, parse_cidr
from cfallow.state import write_atomic


class FakeBackend(Backend):
    """Keeps owned entries in a JSON file; counts writes."""

    name = "fake"

    def __init__(self, section: Section, ctx: Context) -> None:
        super().__init__(section, ctx)
        self.path = Path(section.get_str("path", str(ctx.state_dir / "fake-target.json")))
        self.fail = section.get_choice("fail", "", ("", "check", "plan", "apply"))
        self.after_apply = section.get_strings("after_apply", [])

    def _read(self) -> dict[str, object]:
        try:
            data: dict[str, object] = json.loads(self.path.read_text())
        except FileNotFoundError:
            data = {}
        return data

    def _nets(self, key: str) -> Networks:
        raw = self._read().get(key, [])
        assert isinstance(raw, list)
        return frozenset(parse_cidr(str(c)) for c in raw)

    def check(self) -> None:
        if self.fail == "check":
            raise BackendError("fake: check failed on purpose")

    def plan(self, desired: Networks) -> Plan:
        if self.fail == "plan":
            raise BackendError("fake: plan failed on purpose")
        return make_plan(self.name, desired, self._nets("owned"), covered=self._nets("foreign"))

    def apply(self, plan: Plan) -> None:
        if self.fail == "apply":
            raise BackendError("fake: apply failed on purpose")
        data = self._read()
        writes = data.get("writes", 0)
        assert isinstance(writes, int)
        data["owned"] = as_strings(plan.after)
        data["writes"] = writes + 1
        os.makedirs(self.path.parent, exist_ok=True)
        write_atomic(self.path, json.dumps(data, indent=1))
        if self.after_apply:
            self.ctx.runner.run(self.after_apply)

    def plan_removal(self) -> Plan:
        return make_plan(self.name, frozenset(), self._nets("owned"))


class SecondFakeBackend(FakeBackend):
    """The same fake under another name, to run two backends side by side."""

    name = "fake2"
