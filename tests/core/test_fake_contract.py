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
