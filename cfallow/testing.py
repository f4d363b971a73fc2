"""The contract every backend passes, importable by third-party plugins (needs pytest).

A backend's test module subclasses :class:`BackendContract` and provides a
``harness`` fixture returning a :class:`Harness` bound to a real target (a
network namespace, a moto server, a private daemon, a temp directory). The
harness reads the target independently of the backend, so the tests check
what the target really holds, not what the backend believes::

    class TestMine(BackendContract):
        @pytest.fixture
        def harness(self, tmp_path):
            return MyHarness(tmp_path)

The lists are Cloudflare's real ones: :data:`CURRENT` (since 2021-04-08) and
:data:`OLD` (before; ``104.16.0.0/12`` became ``/13`` + ``104.24.0.0/14``).
"""

from __future__ import annotations

import abc
import json
from importlib import resources

from netaddr import IPNetwork

from cfallow.backend import AnyBackend
from cfallow.engine import run_backend

Nets = frozenset[IPNetwork]


def _load(name: str, *keys: str) -> Nets:
    doc = json.loads(resources.files("cfallow").joinpath(f"data/{name}").read_text("utf-8"))
    for key in keys:
        doc = doc[key]
    result = doc["result"]
    return frozenset(IPNetwork(c).cidr for c in result["ipv4_cidrs"] + result["ipv6_cidrs"])


#: Since 2021-04-08: 15 IPv4 + 7 IPv6.
CURRENT: Nets = _load("snapshot.json", "response")
#: Before 2021-04-08: 14 IPv4 (with 104.16.0.0/12) + 7 IPv6.
OLD: Nets = _load("api-ips-2021-03.json")
ADDED_2021: Nets = frozenset({IPNetwork("104.16.0.0/13"), IPNetwork("104.24.0.0/14")})
REMOVED_2021: Nets = frozenset({IPNetwork("104.16.0.0/12")})


class Harness(abc.ABC):
    """A backend bound to a real, private target."""

    @abc.abstractmethod
    def backend(self) -> AnyBackend:
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
        """dry run -> changed; apply -> changed; dry run -> not changed; apply -> not changed."""
        harness.add_foreign()
        foreign = harness.foreign()
        w0 = harness.writes()

        dry1 = run_backend(harness.backend(), CURRENT, dry_run=True)
        assert dry1.error is None, dry1.error
        assert dry1.changed and not dry1.applied
        assert harness.writes() == w0, "a dry run wrote to the target"
        assert harness.owned() == frozenset()

        apply1 = run_backend(harness.backend(), CURRENT, dry_run=False)
        assert apply1.error is None, apply1.error
        assert apply1.changed and apply1.applied
        assert harness.owned() == harness.expected(CURRENT)
        w1 = harness.writes()
        assert w1 > w0

        dry2 = run_backend(harness.backend(), CURRENT, dry_run=True)
        assert dry2.error is None, dry2.error
        assert not dry2.changed, dry2.plan

        apply2 = run_backend(harness.backend(), CURRENT, dry_run=False)
        assert apply2.error is None, apply2.error
        assert not apply2.changed and not apply2.applied
        assert harness.writes() == w1, "an unchanged apply wrote to the target"
        assert harness.foreign() == foreign

    def test_read_writes_nothing_and_diff_is_pure(self, harness: Harness) -> None:
        """``read`` twice and ``diff`` twice give equal plans, and nothing is written."""
        backend = harness.backend()
        w0 = harness.writes()
        observed = backend.read()
        first = backend.diff(observed, CURRENT)
        second = backend.diff(observed, CURRENT)
        assert second.steps == first.steps, (
            "diff is not deterministic: two diffs of one state give different steps "
            f"(a clock, a counter, a random token in a step?):\n{first.steps}\n{second.steps}"
        )
        assert second == first
        assert backend.diff(backend.read(), CURRENT) == first
        assert backend.diff(observed, None) == backend.diff(backend.read(), None)
        assert harness.writes() == w0, "read or diff wrote to the target"
        assert first.changed and first.add == harness.expected(CURRENT)

    def test_plan_holds_all_apply_needs(self, harness: Harness) -> None:
        """A plan made by one instance is applied by another (no state between calls)."""
        plan = harness.backend().plan(CURRENT)
        harness.backend().apply(plan)
        assert harness.owned() == harness.expected(CURRENT)
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

    def test_unowned_entries_survive_and_removal_restores(self, harness: Harness) -> None:
        harness.add_foreign()
        foreign = harness.foreign()
        for desired in (OLD, CURRENT, OLD, CURRENT):
            assert run_backend(harness.backend(), desired, dry_run=False).error is None
            assert harness.foreign() == foreign
        removal = run_backend(harness.backend(), None, dry_run=False)
        assert removal.error is None, removal.error
        assert harness.owned() == frozenset()
        assert harness.foreign() == foreign
        again = run_backend(harness.backend(), None, dry_run=True)
        assert again.error is None and not again.changed, "removal left something behind"

    def test_removal_dry_run_writes_nothing(self, harness: Harness) -> None:
        assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
        w = harness.writes()
        result = run_backend(harness.backend(), None, dry_run=True)
        assert result.error is None and result.changed and not result.applied
        assert harness.writes() == w
        assert harness.owned() == harness.expected(CURRENT)
