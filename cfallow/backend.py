"""The backend interface, and the one door backends come through.

A backend is a plugin registered in the entry-point group ``cfallow.backends``
(the built-ins too: the core never imports a backend module). How to write one,
and the rules every backend keeps: docs/plugins.md. The calls, in order::

    backend = Cls(section, ctx)            # config only: no subprocess, no network
    backend.check()                        # preflight: raises Unavailable / BackendError
    seen = backend.read()                  # all the I/O of a plan; writes nothing
    plan = backend.diff(seen, desired)     # pure: no I/O at all; desired None = removal
    backend.validate(plan)                 # a changed plan checked without writing (dry runs too)
    backend.apply(plan)                    # the only method that writes

The engine (:mod:`cfallow.engine`) makes them: the order, failure collection,
dry run, and the bounded re-read after :class:`~cfallow.errors.TargetMoved`.

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from cfallow import plugins
from cfallow.errors import BackendError, ConfigError
from cfallow.hostlock import default_path
from cfallow.model import Networks, Plan
from cfallow.runner import Runner
from cfallow.section import PortRange, Section, suggest

if TYPE_CHECKING:
    from cfallow.netfilter.host import Host
    from cfallow.netfilter.witness import Witness

GROUP = "cfallow.backends"
# seen, step, check, dry run, test, run: one meaning each (docs/plugins.md, "Words").
SeenT = TypeVar("SeenT")
StepT = TypeVar("StepT")
O, S = SeenT, StepT  # noqa: E741 - 0.1's names (deprecated)


@dataclass(frozen=True)
class Context:
    """What the core hands every backend (the same for the whole run).

    The list's etag is not here: it travels with the desired list
    (:func:`cfallow.model.etag_of`)."""

    runner: Runner = field(default_factory=Runner)
    state_dir: Path = Path("/var/lib/cfallow")
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("cfallow"))
    #: Host-wide lock for firewall changes (:mod:`cfallow.hostlock`).
    firewall_lock: Path = field(default_factory=default_path)
    #: A real scheduled run (``sync --scheduled``, the timer): a backend on a remote API may
    #: skip its read until its own ``interval`` is due. Never set for dry runs.
    scheduled: bool = False


@dataclass(frozen=True)
class Promise:
    """What a host-firewall backend makes the kernel do (``cfallow verify`` probes it)."""

    #: ``"lockdown"``: only Cloudflare (and ``allowed``) gets in; ``"allow"``: Cloudflare does.
    mode: str
    protocol: str
    #: The ports to probe (:func:`probe_ports` of the configured ranges).
    ports: tuple[int, ...]
    families: tuple[int, ...]
    #: Also let in besides Cloudflare (``also_allow``): no outsider is probed from there.
    allowed: tuple[str, ...] = ()


def probe_ports(ranges: Iterable[PortRange]) -> tuple[int, ...]:
    """The first and last port of each range: what verify probes of them."""
    return tuple(sorted({q for r in ranges for q in (r.first, r.last)}))


class Backend(abc.ABC, Generic[SeenT, StepT]):
    """Base class of every backend plugin."""

    #: The entry-point name, also the config section ``[backends.NAME]``.
    name: ClassVar[str]
    #: A backend that talks to a remote API (``sync --offline`` leaves it out).
    needs_network: ClassVar[bool] = False
    #: Why ``cfallow verify`` cannot prove what this backend does, though it guards the
    #: host (it decides elsewhere than the kernel's filter); None: see :meth:`promise`.
    cannot_verify: ClassVar[str | None] = None

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
    def read(self) -> SeenT:
        """Read everything ``diff`` needs from the target (only what cfallow owns, plus
        what tells whether the admin's setup covers an entry). No write."""

    @abc.abstractmethod
    def diff(self, seen: SeenT, desired: Networks | None) -> Plan[StepT]:
        """Pure: the plan from ``seen`` to ``desired`` (``None``: remove all cfallow owns)."""

    def validate(self, plan: Plan[StepT]) -> None:
        """Check a changed plan against the real target without writing it (a config test
        of a candidate in a private copy, say): raise a
        :class:`~cfallow.errors.BackendError` that names whose configuration fails.

        The engine calls it for every changed plan, in dry runs too, so a dry
        run predicts the real run.
        """

    @abc.abstractmethod
    def apply(self, plan: Plan[StepT]) -> None:
        """Make the target match ``plan``: idempotent; nothing written if not ``plan.changed``.

        Raise :class:`~cfallow.errors.TargetMoved` (having written nothing)
        when the target no longer is what the plan was computed from.
        """

    def promise(self) -> Promise | None:
        """What this backend makes the host's kernel let in, for ``cfallow verify`` to
        probe; None (the default): it is not a firewall of this host, nothing to probe."""
        return None

    def scratch_section(self, section: dict[str, object], tmp: Path) -> dict[str, object] | None:
        """``section`` (this backend's config) made safe to apply in a scratch network
        namespace for ``sync --verify``: the backend is built from it on a runner that
        runs every command inside the scratch, so it may change the firewall only through
        ``ctx.runner``, and every file it writes must go under ``tmp``.

        None (the default): it cannot be applied there (it writes through something
        else, e.g. D-Bus to the host's daemon), so ``sync --verify`` refuses to verify.
        """
        return None

    def witnesses(self) -> list[Witness] | None:
        """What the last ``read`` rested on besides the config and the state directory,
        each as a question :func:`cfallow.netfilter.witness.ask` can put again and the answer the
        read had (``(("nf",), GENERATION)``, ``(("exe", "iptables-nft-save"), FILE)``).
        A run that changed nothing is then said again without planning while every
        answer stays the same, so the list must name everything the plan and its notes
        depend on. None (the default): it cannot say, and every run plans.
        """
        return None

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

    def plan(self, desired: Networks | None) -> Plan[StepT]:
        """``diff(read(), desired)``."""
        return self.diff(self.read(), desired)


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

    def diff(self, seen: None, desired: Networks | None) -> Plan[None]:  # pragma: no cover
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
