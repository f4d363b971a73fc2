"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support import namespace


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace (root only; always deleted)."""
    with namespace() as name:
        yield name
