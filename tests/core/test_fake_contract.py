"""The shared backend contract, proven end to end on the test-only fake plugin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from netaddr import IPNetwork

from cfallow.backend import Backend, Context, build
from cfallow.testing import BackendContract, Harness


class FakeHarness(Harness):
    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "fake.json"

    def backend(self) -> Backend:
        return build("fake", {"path": str(self.path)}, Context(state_dir=self.path.parent))

    def _data(self) -> dict[str, object]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def owned(self) -> frozenset[IPNetwork]:
        raw = self._data().get("owned", [])
        assert isinstance(raw, list)
        return frozenset(IPNetwork(c) for c in raw)

    def add_foreign(self) -> None:
        data = self._data()
        data["foreign"] = ["8.8.8.0/24"]
        self.path.write_text(json.dumps(data))

    def foreign(self) -> object:
        return self._data().get("foreign")

    def writes(self) -> int:
        w = self._data().get("writes", 0)
        assert isinstance(w, int)
        return w


class TestFakeContract(BackendContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Harness:
        return FakeHarness(tmp_path)


def test_a_plugin_whose_steps_are_not_deterministic_fails_the_contract(tmp_path: Path) -> None:
    """Two diffs of the same state must be equal steps included: a plugin that puts a
    clock or a random token in a step (the aws prefix lists' ClientToken did) fails."""
    import itertools
    from dataclasses import dataclass, replace

    from cfallow_fake import FakeBackend, Step

    from cfallow.section import Section

    counter = itertools.count()

    @dataclass(frozen=True)
    class StampedWrite(Step):
        stamp: int

    class StampedFake(FakeBackend):
        def diff(self, observed, desired):  # type: ignore[no-untyped-def]
            plan = super().diff(observed, desired)
            return replace(
                plan, steps=tuple(StampedWrite(s.owned, s.basis, next(counter)) for s in plan.steps)
            )

    class StampedHarness(FakeHarness):
        def backend(self) -> Backend:
            section = Section("backends.fake", {"path": str(self.path)})
            return StampedFake(section, Context(state_dir=self.path.parent))

    contract = TestFakeContract()
    with pytest.raises(AssertionError):
        contract.test_read_writes_nothing_and_diff_is_pure(StampedHarness(tmp_path))
    # The same contract test passes for the deterministic fake.
    contract.test_read_writes_nothing_and_diff_is_pure(FakeHarness(tmp_path / "ok"))
