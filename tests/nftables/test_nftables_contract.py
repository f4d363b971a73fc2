"""The shared backend contract, for both models, against real nft in a namespace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import namespace
from support.nftables.helpers import NftHarness

from cfallow.testing import BackendContract

pytestmark = pytest.mark.root


class TestLockdownContract(BackendContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Iterator[NftHarness]:
        with namespace("nftl") as ns:
            yield NftHarness(ns, tmp_path, "lockdown", docker=True)


class TestSetsContract(BackendContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Iterator[NftHarness]:
        with namespace("nfts") as ns:
            yield NftHarness(ns, tmp_path, "sets", table="inet filter")


class TestSetsWithoutHostCheckContract(BackendContract):
    """host_check = false: only the sets are listed, never the admin's rules."""

    @pytest.fixture
    def harness(self, tmp_path: Path) -> Iterator[NftHarness]:
        with namespace("nftq") as ns:
            yield NftHarness(ns, tmp_path, "sets", host_check=False)


class TestLockdownWithoutHostCheckContract(BackendContract):
    @pytest.fixture
    def harness(self, tmp_path: Path) -> Iterator[NftHarness]:
        with namespace("nftk") as ns:
            yield NftHarness(ns, tmp_path, "lockdown", host_check=False)
