"""One run: plan every backend, then apply unless this is a dry run.

This module is the only place that reads the dry-run flag.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cfallow.backend import Backend
from cfallow.errors import CfallowError
from cfallow.model import Networks, Plan

log = logging.getLogger("cfallow")


@dataclass
class BackendResult:
    """What happened to one backend."""

    name: str
    plan: Plan | None = None
    applied: bool = False
    error: str | None = None

    @property
    def changed(self) -> bool:
        """Changed (after a real run) or would change (dry run, status)."""
        return bool(self.plan and self.plan.changed)


def run_backend(backend: Backend, desired: Networks | None, *, dry_run: bool) -> BackendResult:
    """check -> plan -> apply (unless ``dry_run``) for one backend.

    ``desired is None`` plans the removal of everything cfallow owns. Errors
    are caught and reported so one backend never stops the others; a
    :class:`CfallowError` is reported as its one-line message, anything else
    (a bug) with its traceback in the log.
    """
    result = BackendResult(backend.name)
    try:
        backend.check()
        plan = backend.plan_removal() if desired is None else backend.plan(desired)
        result.plan = plan
        if not dry_run and plan.changed:
            backend.apply(plan)
            result.applied = True
    except CfallowError as exc:
        result.error = str(exc)
    except Exception as exc:
        log.exception("%s: internal error", backend.name)
        result.error = f"internal error: {type(exc).__name__}: {exc}"
    return result
