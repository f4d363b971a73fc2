"""One private firewalld per test module, reset to its pristine config between tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.firewalld.harness import Lab


@pytest.fixture
def clean(lab: Lab) -> Iterator[Lab]:
    """The module's lab, back to pristine before the test; firewalld must be running after it."""
    lab.fw.reset()
    yield lab
    assert lab.fw.state() == "running", lab.fw.log_tail()
