"""The backend interface, and the one door backends come through.

A backend is a plugin registered in the entry-point group ``cfallow.backends``
(the built-ins too: the core never imports a backend module). Every backend has
the same shape, generic in what it reads (``O``, a frozen value) and in its
plan steps (``S``, frozen values)::

    backend = Cls(section, ctx)            # config only: no subprocess, no network
    backend.check()                        # preflight: raises Unavailable / BackendError
    observed = backend.read()              # all the I/O of a plan; writes nothing
    plan = backend.diff(observed, desired) # pure: no I/O at all; desired None = removal
    backend.validate(plan)                 # a changed plan checked without writing (dry runs too)
    backend.apply(plan)                    # the only method that writes

The engine (:mod:`cfallow.engine`) owns the order (check and plan every
backend, then apply), failure collection, dry run, and one retry rule: when
``apply`` raises :class:`~cfallow.errors.TargetMoved` (the target changed
since it was read, nothing written), it reads again, re-plans and applies
again, a bounded number of times.

Rules every backend keeps:

* Read and change only what cfallow owns on the target (DESIGN.md,
  "Ownership"); an entry something of the admin's already allows may be left
  out of ``add`` (``covered``), and is then never removed either.
* ``diff`` builds its plan with :func:`cfallow.model.make_plan` and reports
  settings drift (ports, mode, a hand edit) in ``Plan.drift``. Everything
  ``apply`` needs is in the plan's steps: a backend holds no state between
  calls (one instance may plan twice, or apply a plan another instance made).
* ``apply`` is idempotent, writes nothing for an unchanged plan, and is one
  atomic step where the target allows it (else: add before remove).
* No backend takes a ``dry_run`` flag.
* Subprocesses go through ``ctx.runner`` (argv lists); only networks that came
  through :func:`cfallow.model.parse_cidr` or the validated desired set reach
  an argv.
* Expected failures raise :class:`cfallow.errors.BackendError` (or a subclass)
  with a one-line message; the engine reports it and goes on with the others.

The kit a backend builds on: :mod:`cfallow.model` (``make_plan``,
``by_family``, ``ordered``), :mod:`cfallow.files` (``ManagedFile``: a file
cfallow owns, written candidate -> test -> rename -> activate, rolled back on
failure), :mod:`cfallow.listfile` (``ListFileBackend``: a whole backend for a
list file a server reads, tested and reloaded), :mod:`cfallow.fs` (atomic
writes, bounded locks), the
:class:`~cfallow.runner.Runner`. :mod:`cfallow.testing` holds the contract
every backend's tests pass (see docs/plugins.md).
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from cfallow import plugins
from cfallow.errors import BackendError, ConfigError
from cfallow.hostlock import default_path
from cfallow.model import Networks, Plan
from cfallow.runner import Runner
from cfallow.section import Section, suggest

if TYPE_CHECKING:
    from cfallow.netfilter.host import Host

GROUP = "cfallow.backends"
O = TypeVar("O")  # noqa: E741 - what a backend reads
S = TypeVar("S")  # one plan step


@dataclass
class Context:
    """What the core hands every backend."""

    runner: Runner = field(default_factory=Runner)
    state_dir: Path = Path("/var/lib/cfallow")
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("cfallow"))
    #: Host-wide lock for firewall changes (:mod:`cfallow.hostlock`).
    firewall_lock: Path = field(default_factory=default_path)
    #: The source's etag of the list being synced (set by the CLI; None: unknown/text lists).
    #: Only for a backend's own record (a comment in a file); never part of the diff.
    etag: str | None = None


class Backend(abc.ABC, Generic[O, S]):
    """Base class of every backend plugin."""

    #: The entry-point name, also the config section ``[backends.NAME]``.
    name: ClassVar[str]
    #: A backend that talks to a remote API (``sync --offline`` leaves it out).
    needs_network: ClassVar[bool] = False

    def __init__(self, section: Section, ctx: Context) -> None:
        """Read the config section (every key through ``section``'s getters).

        Must not touch the system. The loader calls ``section.finish()`` after
        this, so unknown keys are refused.
        """
        self.ctx = ctx

    def check(self) -> None:
        """Preflight (cheap, read-only): raise :class:`~cfallow.errors.Unavailable`
        (or another :class:`~cfallow.errors.BackendError`) naming what is missing."""

    @abc.abstractmethod
    def read(self) -> O:
        """Read everything ``diff`` needs from the target (only what cfallow owns, plus
        what tells whether the admin's setup covers an entry). No write."""

    @abc.abstractmethod
    def diff(self, observed: O, desired: Networks | None) -> Plan[S]:
        """Pure: the plan from ``observed`` to ``desired`` (``None``: remove all cfallow owns)."""

    def validate(self, plan: Plan[S]) -> None:
        """Check a changed plan against the real target without writing it (a config test
        of a candidate in a private copy, say): raise a
        :class:`~cfallow.errors.BackendError` that names whose configuration fails.

        The engine calls it for every changed plan, in dry runs too, so a dry
        run predicts the real run.
        """

    @abc.abstractmethod
    def apply(self, plan: Plan[S]) -> None:
        """Make the target match ``plan``: idempotent; nothing written if not ``plan.changed``.

        Raise :class:`~cfallow.errors.TargetMoved` (having written nothing)
        when the target no longer is what the plan was computed from.
        """

    def write_paths(self) -> tuple[Path, ...]:
        """Files and directories a real run writes or locks (for ``cfallow check``,
        which compares them with the systemd unit's ``ReadWritePaths``)."""
        return ()

    def own_dirs(self) -> tuple[Path, ...]:
        """Directories a run creates itself when missing (where the files it owns go).

        ``cfallow prepare`` creates them (when their parent exists) before a
        sandboxed run: systemd drops a ``-`` ``ReadWritePaths=`` entry whose
        path does not exist, which would leave a new directory read-only.
        """
        return ()

    @classmethod
    def host_advice(cls, host: Host) -> str | None:
        """Whether (and in which mode) this backend enforces the allowlist on a host whose
        firewall is ``host``, as one line for ``cfallow backends``; None: nothing to say.

        For backends that own a netfilter mode; the others keep the default.
        """
        return None

    def plan(self, desired: Networks | None) -> Plan[S]:
        """``diff(read(), desired)``."""
        return self.diff(self.read(), desired)

    def plan_removal(self) -> Plan[S]:
        """The plan that removes everything cfallow owns on the target."""
        return self.plan(None)


AnyBackend = Backend[Any, Any]


def _entry_points() -> dict[str, plugins.EntryPoint]:
    found: dict[str, plugins.EntryPoint] = {}
    for ep in plugins.entry_points(GROUP):
        other = found.get(ep.name)
        if other is not None and other.value != ep.value:
            raise ConfigError(
                f"two installed plugins register the backend {ep.name!r}: "
                f"{other.dist} ({other.value}) and {ep.dist} ({ep.value}); "
                "uninstall one of them"
            )
        found[ep.name] = ep
    return found


def installed() -> list[str]:
    """Names of the installed backend plugins."""
    return sorted(_entry_points())


def load_class(name: str) -> type[AnyBackend]:
    """Import the plugin registered as ``name``."""
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise ConfigError(f"unknown backend {name!r}{suggest(name, eps)} (installed: {known})")
    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"backend {name!r} ({eps[name].value}) is not a cfallow Backend")
    return cls


class Unloadable(Backend[None, None]):
    """Stands in for a plugin whose module cannot be imported, so the others still run."""

    def __init__(self, name: str, reason: str, ctx: Context) -> None:
        super().__init__(Section(f"backends.{name}", {}), ctx)
        self.name = name  # type: ignore[misc]
        self.reason = reason

    def check(self) -> None:
        raise BackendError(f"plugin cannot be loaded: {self.reason}")

    def read(self) -> None:  # pragma: no cover - check() always raises
        raise BackendError(self.reason)

    def diff(self, observed: None, desired: Networks | None) -> Plan[None]:  # pragma: no cover
        raise BackendError(self.reason)

    def apply(self, plan: Plan[None]) -> None:  # pragma: no cover
        raise BackendError(self.reason)


def build(name: str, section: dict[str, object], ctx: Context) -> AnyBackend:
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
