"""The shared backend contract, against real iptables in a namespace, for both variants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import namespace
from support.iptables.helpers import VARIANTS, Fw

from cfallow.backend import Backend
from cfallow.testing import BackendContract, Harness, Nets

pytestmark = pytest.mark.root


class IptablesHarness(Harness):
    """The iptables backend bound to a fresh namespace; the target read with ``*-save``."""

    def __init__(self, fw: Fw) -> None:
        self.fw = fw

    def backend(self) -> Backend:
        return self.fw.backend()

    def owned(self) -> Nets:
        return self.fw.owned()

    def add_foreign(self) -> None:
        self.fw.add_admin()

    def foreign(self) -> object:
        return self.fw.foreign()

    def writes(self) -> int:
        return self.fw.writes()


@pytest.fixture(params=VARIANTS)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    with namespace("ipc") as ns:
        yield IptablesHarness(Fw(ns, request.param, tmp_path))


class TestIptablesContract(BackendContract):
    """plan -> apply -> re-plan is empty; dry runs write nothing; the admin's rules survive."""
