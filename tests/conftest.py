"""Shared fixtures."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
from support import namespace


@pytest.fixture(autouse=True, scope="session")
def private_firewall_lock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Runs (in-process and the CLI's subprocesses) take a lock private to this test session.

    The tests' firewalls live in their own namespaces, so the host's
    ``/run/cfallow.lock`` is not theirs to hold; a test of the lock itself
    sets its own path.
    """
    key = "CFALLOW_FIREWALL_LOCK"
    old = os.environ.get(key)
    os.environ[key] = str(tmp_path_factory.mktemp("fwlock") / "cfallow.lock")
    yield
    if old is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = old


@pytest.fixture(autouse=True)
def cfallow_logger_as_it_was() -> Iterator[None]:
    """An in-process CLI run points the "cfallow" logger at its own stderr handler and stops
    it propagating (as the installed command must); put it back after each test, or a later
    test on the same worker logs to a closed stream and its ``caplog`` sees nothing."""
    log = logging.getLogger("cfallow")
    handlers, propagate, level = list(log.handlers), log.propagate, log.level
    yield
    log.handlers[:] = handlers
    log.propagate, log.level = propagate, level


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace (root only; always deleted)."""
    with namespace() as name:
        yield name
