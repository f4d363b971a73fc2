"""One run over the backends: plan every backend, then apply unless this is a dry run.

This module decides the order of a run, what happens when a backend fails, and
that a dry run writes nothing here (it never calls ``apply``; no backend sees the
flag). The dry run itself is decided once, by the CLI's invocation
(:mod:`cfallow.cli.invocation`), which also leaves out everything a real run writes
around the backends (the state lock, the state, the accepted list, metrics,
notification).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cfallow.backend import AnyBackend
from cfallow.errors import CfallowError, NotInstalled, TargetMoved
from cfallow.model import Networks, Plan

log = logging.getLogger("cfallow")

#: How many times a plan is re-read and re-applied when the target moved under it.
MOVED_ATTEMPTS = 3


@dataclass
class BackendResult:
    """What happened to one backend."""

    name: str
    plan: Plan[Any] | None = None
    applied: bool = False
    error: str | None = None

    @property
    def changed(self) -> bool:
        """Changed (after a real run) or would change (dry run, status)."""
        return bool(self.plan and self.plan.changed)


@dataclass
class RunResult:
    """Every backend's result in one run."""

    results: list[BackendResult] = field(default_factory=list)
    dry_run: bool = False

    @property
    def failed(self) -> bool:
        """Did any backend fail?"""
        return any(r.error is not None for r in self.results)

    @property
    def changed(self) -> bool:
        """Did (or would) any backend change?"""
        return any(r.changed for r in self.results)


def _failure(backend: AnyBackend, exc: Exception, what: str) -> str:
    """The one-line error of a failed backend (a bug also logs its traceback)."""
    if isinstance(exc, CfallowError):
        return str(exc)
    log.error("%s: internal error while %s", backend.name, what, exc_info=exc)
    return f"internal error: {type(exc).__name__}: {exc}"


def _plan(backend: AnyBackend, desired: Networks | None) -> BackendResult:
    result = BackendResult(backend.name)
    try:
        try:
            backend.check()
        except NotInstalled as exc:  # nothing of cfallow's there: plan against the empty target
            log.debug("%s: %s; planning against an empty target", backend.name, exc)
        result.plan = backend.diff(backend.read(), desired)
        if result.plan.changed:
            backend.validate(result.plan)
        if result.plan.failed:  # some targets fail; the others are still applied
            result.error = "; ".join(result.plan.failed)
    except Exception as exc:
        result.error = _failure(backend, exc, "planning")
    return result


def _partial(result: BackendResult) -> bool:
    """Failed only in some of its targets: the rest of the plan is applied."""
    return result.plan is not None and result.error == "; ".join(result.plan.failed)


def _apply(backend: AnyBackend, desired: Networks | None, result: BackendResult) -> None:
    assert result.plan is not None
    try:
        for attempt in range(MOVED_ATTEMPTS):
            try:
                backend.apply(result.plan)
                result.applied = True
                return
            except TargetMoved:
                if attempt == MOVED_ATTEMPTS - 1:
                    raise
                log.debug("%s: the target changed since it was read; planning again", backend.name)
                result.plan = backend.diff(backend.read(), desired)
                if not result.plan.changed:
                    return
                backend.validate(result.plan)
    except Exception as exc:
        failed = _failure(backend, exc, "applying")
        result.error = f"{result.error}; {failed}" if result.error else failed


def run(backends: Sequence[AnyBackend], desired: Networks | None, *, dry_run: bool) -> RunResult:
    """check -> read -> diff -> validate for every backend, then apply the changed plans
    (unless ``dry_run``).

    ``desired is None`` plans the removal of everything cfallow owns. Every
    backend is planned before any is applied, so a backend that cannot even
    plan is known before anything changes. Errors are caught and reported so
    one backend never stops the others: a :class:`CfallowError` as its
    one-line message, anything else (a bug) with its traceback in the log.
    """
    outcome = RunResult(dry_run=dry_run)
    planned = [(b, _plan(b, desired)) for b in backends]
    for backend, result in planned:
        outcome.results.append(result)
        if dry_run or result.plan is None or not result.plan.changed:
            continue
        if result.error is not None and not _partial(result):
            continue
        _apply(backend, desired, result)
    return outcome


def run_backend(backend: AnyBackend, desired: Networks | None, *, dry_run: bool) -> BackendResult:
    """:func:`run` for one backend."""
    return run([backend], desired, dry_run=dry_run).results[0]
