"""The contract every backend passes (certbot-style reusable test base).

A backend's test module subclasses :class:`BackendContract` and provides a
``harness`` fixture returning a :class:`Harness` bound to a real target (a
network namespace, a moto server, a private fail2ban-server). The harness reads
the target independently of the backend, so the tests check what the target
really holds, not what the backend believes.
"""

from __future__ import annotations

import abc

import pytest
from netaddr import IPNetwork

from cfallow.backend import Backend
from cfallow.engine import run_backend
from support.cfdata import ADDED_2021, CURRENT, OLD, REMOVED_2021

Nets = frozenset[IPNetwork]


class Harness(abc.ABC):
    """A backend bound to a real, private target."""

    @abc.abstractmethod
    def backend(self) -> Backend:
        """A fresh backend instance configured for this target."""

    @abc.abstractmethod
    def owned(self) -> Nets:
        """The entries cfallow owns on the target, read independently of the backend."""

    @abc.abstractmethod
    def add_foreign(self) -> None:
        """Put admin-owned entries on the target (same port other CIDR, a Cloudflare CIDR, ...)."""

    @abc.abstractmethod
    def foreign(self) -> object:
        """A comparable snapshot of everything on the target that cfallow does not own."""

    @abc.abstractmethod
    def writes(self) -> int:
        """How many mutating operations have been issued to the target so far."""

    def expected(self, desired: Nets) -> Nets:
        """What the backend should own for ``desired`` (override for e.g. IPv4-only)."""
        return desired


class BackendContract:
    """Subclass this and provide a ``harness`` fixture."""

    def test_idempotency_matrix(self, harness: Harness) -> None:
        """check -> changed; apply -> changed; check -> not changed; apply -> not changed."""
        harness.add_foreign()
        foreign = harness.foreign()
        w0 = harness.writes()

        check1 = run_backend(harness.backend(), CURRENT, dry_run=True)
        assert check1.error is None, check1.error
        assert check1.changed and not check1.applied
        assert harness.writes() == w0, "a dry run wrote to the target"
        assert harness.owned() == frozenset()

        apply1 = run_backend(harness.backend(), CURRENT, dry_run=False)
        assert apply1.error is None, apply1.error
        assert apply1.changed and apply1.applied
        assert harness.owned() == harness.expected(CURRENT)
        w1 = harness.writes()
        assert w1 > w0

        check2 = run_backend(harness.backend(), CURRENT, dry_run=True)
        assert check2.error is None, check2.error
        assert not check2.changed, check2.plan

        apply2 = run_backend(harness.backend(), CURRENT, dry_run=False)
        assert apply2.error is None, apply2.error
        assert not apply2.changed and not apply2.applied
        assert harness.writes() == w1, "an unchanged apply wrote to the target"
        assert harness.foreign() == foreign

    def test_replan_after_apply_is_empty(self, harness: Harness) -> None:
        backend = harness.backend()
        backend.apply(backend.plan(CURRENT))
        again = harness.backend().plan(CURRENT)
        assert not again.changed and not again.add and not again.remove

    def test_2021_change_applies_exactly_the_diff(self, harness: Harness) -> None:
        assert run_backend(harness.backend(), OLD, dry_run=False).error is None
        assert harness.owned() == harness.expected(OLD)
        result = run_backend(harness.backend(), CURRENT, dry_run=False)
        assert result.error is None, result.error
        assert result.plan is not None
        assert result.plan.add == harness.expected(ADDED_2021)
        assert result.plan.remove == harness.expected(REMOVED_2021)
        assert harness.owned() == harness.expected(CURRENT)

    def test_unowned_entries_survive(self, harness: Harness) -> None:
        harness.add_foreign()
        foreign = harness.foreign()
        for desired in (OLD, CURRENT, OLD, CURRENT):
            assert run_backend(harness.backend(), desired, dry_run=False).error is None
            assert harness.foreign() == foreign
        removal = run_backend(harness.backend(), None, dry_run=False)
        assert removal.error is None, removal.error
        assert harness.owned() == frozenset()
        assert harness.foreign() == foreign

    def test_removal_dry_run_writes_nothing(self, harness: Harness) -> None:
        assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
        w = harness.writes()
        result = run_backend(harness.backend(), None, dry_run=True)
        assert result.error is None and result.changed and not result.applied
        assert harness.writes() == w
        assert harness.owned() == harness.expected(CURRENT)


@pytest.fixture
def harness() -> Harness:  # pragma: no cover - overridden by each backend's module
    raise NotImplementedError("a BackendContract subclass must provide a harness fixture")
