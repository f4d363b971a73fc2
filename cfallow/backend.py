"""The backend interface, and the one door backends come through.

A backend is a plugin registered in the entry-point group ``cfallow.backends``
(the built-ins too: the core never imports a backend module). Its life in one
run::

    backend = Cls(section, ctx)      # config only: no subprocess, no network
    backend.check()                  # preflight: tools, modules, permissions
    plan = backend.plan(desired)     # read what cfallow owns; pure diff; no write
    backend.apply(plan)              # only if not a dry run (decided by the engine)

Rules every backend keeps:

* Read and change only what cfallow owns on the target (DESIGN.md,
  "Ownership"); an entry something of the admin's already allows may be left
  out of ``add`` (``covered``), and is then never removed either.
* ``plan`` uses :func:`cfallow.model.make_plan` for the entry diff and reports
  settings drift (ports, mode, a hand edit) in ``Plan.drift``.
* ``apply`` is idempotent, writes nothing for an unchanged plan, and is one
  atomic step where the target allows it (else: add before remove).
* No backend takes a ``dry_run`` flag.
* Subprocesses go through ``ctx.runner`` (argv lists); only networks that came
  through :func:`cfallow.model.parse_cidr` or the validated desired set reach
  an argv.
* Expected failures raise :class:`cfallow.errors.BackendError` with a one-line
  message; the engine reports it and goes on with the other backends.
"""

from __future__ import annotations

import abc
import logging
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import ClassVar

from cfallow.config import Section
from cfallow.errors import BackendError, ConfigError
from cfallow.hostlock import default_path
from cfallow.model import Networks, Plan
from cfallow.runner import Runner

GROUP = "cfallow.backends"


@dataclass
class Context:
    """What the core hands every backend."""

    runner: Runner = field(default_factory=Runner)
    state_dir: Path = Path("/var/lib/cfallow")
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("cfallow"))
    #: Host-wide lock for firewall changes (:mod:`cfallow.hostlock`).
    firewall_lock: Path = field(default_factory=default_path)


class Backend(abc.ABC):
    """Base class of every backend plugin."""

    #: The entry-point name, also the config section ``[backends.NAME]``.
    name: ClassVar[str]

    def __init__(self, section: Section, ctx: Context) -> None:
        """Read the config section (every key through ``section``'s getters).

        Must not touch the system. The loader calls ``section.finish()`` after
        this, so unknown keys are refused.
        """
        self.ctx = ctx

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """Can this backend run on this machine? ``(ok, one-line reason)``. Cheap, read-only."""
        return True, "ok"

    def check(self) -> None:
        """Preflight: raise :class:`~cfallow.errors.BackendError` naming what is missing."""
        return None

    @abc.abstractmethod
    def plan(self, desired: Networks) -> Plan:
        """Read what cfallow owns on the target and diff it against ``desired``. No write."""

    @abc.abstractmethod
    def apply(self, plan: Plan) -> None:
        """Make the target match ``plan``: idempotent; nothing written if not ``plan.changed``."""

    @abc.abstractmethod
    def plan_removal(self) -> Plan:
        """A plan that removes everything cfallow owns on the target (``cfallow remove``)."""


def _entry_points() -> dict[str, metadata.EntryPoint]:
    if sys.version_info >= (3, 10):
        eps = metadata.entry_points(group=GROUP)
    else:  # pragma: no cover - Python 3.9
        eps = metadata.entry_points().get(GROUP, [])
    found: dict[str, metadata.EntryPoint] = {}
    for ep in eps:
        found.setdefault(ep.name, ep)
    return found


def installed() -> list[str]:
    """Names of the installed backend plugins."""
    return sorted(_entry_points())


def load_class(name: str) -> type[Backend]:
    """Import the plugin registered as ``name``."""
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise ConfigError(f"unknown backend {name!r} (installed: {known})")
    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"backend {name!r} ({eps[name].value}) is not a cfallow Backend")
    return cls


class Unloadable(Backend):
    """Stands in for a plugin whose module cannot be imported, so the others still run."""

    def __init__(self, name: str, reason: str, ctx: Context) -> None:
        super().__init__(Section(f"backends.{name}", {}), ctx)
        self.name = name  # type: ignore[misc]
        self.reason = reason

    def check(self) -> None:
        raise BackendError(f"plugin cannot be loaded: {self.reason}")

    def plan(self, desired: Networks) -> Plan:  # pragma: no cover - check() always raises
        raise BackendError(self.reason)

    def apply(self, plan: Plan) -> None:  # pragma: no cover
        raise BackendError(self.reason)

    def plan_removal(self) -> Plan:  # pragma: no cover
        raise BackendError(self.reason)


def build(name: str, section: dict[str, object], ctx: Context) -> Backend:
    """Load and configure one backend; unknown config keys are a :class:`ConfigError`.

    A plugin that is installed but cannot be imported becomes an
    :class:`Unloadable` that fails on its own at ``check()``.
    """
    try:
        cls = load_class(name)
    except ImportError as exc:
        return Unloadable(name, f"{type(exc).__name__}: {exc}", ctx)
    sec = Section(f"backends.{name}", section)
    backend = cls(sec, ctx)
    sec.finish()
    return backend
