"""One run of the command line, built once right after parsing and passed along one way.

:class:`Options` is the command line (the only reader of argparse's namespace);
:func:`load` adds what the run works with (the config, the state directory, the
context every backend shares, the selected backends, built) into a frozen
:class:`Invocation`. A dry run is decided here, once: ``--dry-run``, or ``status``
(which only compares). The engine gets the flag (plan without applying); everything
else a real run writes besides the backends goes through :class:`Writes`, which a dry
run replaces with :class:`DryRun`, so no command branches on the flag.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cfallow import backend, instep
from cfallow.cli import config
from cfallow.cli.config import DEFAULT_STATE_DIR
from cfallow.errors import ConfigError, UsageError
from cfallow.fetch import cadence, repeat, resolve
from cfallow.fetch.ranges import Ranges
from cfallow.fetch.state import State
from cfallow.report import Report
from cfallow.runner import Runner
from cfallow.section import suggest

if TYPE_CHECKING:
    from cfallow.netfilter.witness import Witness

log = logging.getLogger("cfallow")

#: The commands that run no backend (nothing built for them).
NO_BACKENDS = ("ranges", "backends", "accept")


@dataclass(frozen=True)
class Options:
    """The command line, read once (an option a command does not have keeps its default)."""

    command: str
    config: Path | None = None
    state_dir: Path = DEFAULT_STATE_DIR
    verbose: int = 0
    quiet: bool = False
    json: bool = False
    #: Plan and report, write nothing: ``--dry-run``, and always for ``status``.
    dry_run: bool = False
    backends: tuple[str, ...] = ()  # --backend, as given (empty: every configured one)
    source: str = "live"
    source_file: Path | None = None  # sync --source-file: a list fetched elsewhere
    offline: bool = False
    scheduled: bool = False
    force: bool = False
    verify: bool = False
    lock_timeout: float = 60.0
    units: tuple[Path, ...] = ()  # check --unit
    uplink: str | None = None  # verify --uplink
    timeout: float = 0.5  # verify --timeout

    @property
    def recordable(self) -> bool:
        """A command line whose run in step may be said again (:mod:`cfallow.instep`):
        the plain report, nothing forced or verified, the configured source."""
        special = self.json or self.verbose or self.force or self.verify
        return not special and self.source == "live" and self.source_file is None

    @classmethod
    def parse(cls, ns: argparse.Namespace) -> Options:
        """From the parsed command line (options other commands have are absent from it)."""
        given = vars(ns)

        def flag(name: str) -> bool:
            return bool(given.get(name, False))

        return cls(
            command=ns.command,
            config=given.get("config"),
            state_dir=given.get("state_dir", DEFAULT_STATE_DIR),
            verbose=int(given.get("verbose", 0)),
            quiet=flag("quiet"),
            json=flag("json"),
            dry_run=ns.command == "status" or flag("dry_run"),
            backends=tuple(given.get("backend") or ()),
            source=given.get("source", "live"),
            source_file=given.get("source_file"),
            offline=flag("offline"),
            scheduled=flag("scheduled"),
            force=flag("force"),
            verify=flag("verify"),
            lock_timeout=float(given.get("lock_timeout", 60.0)),
            units=tuple(given.get("unit") or ()),
            uplink=given.get("uplink"),
            timeout=float(given.get("timeout", 0.5)),
        )


class Writes:
    """What a real run writes besides the backends: it holds the state lock, records
    the list and the fetch, writes the metrics file, sends the notification."""

    def __init__(self, cfg: config.Config, state: State, lock_timeout: float) -> None:
        self.cfg, self.state, self.lock_timeout = cfg, state, lock_timeout

    def held(self) -> AbstractContextManager[None]:
        """The state lock for the whole run, and the warnings it shortens when they repeat
        run after run (:mod:`cfallow.fetch.repeat`: written only by a real run)."""
        return _held(self.state, self.lock_timeout)

    def check_metrics(self) -> None:
        """A ``metrics_file`` that cannot be written is a config error before anything runs."""
        if self.cfg.metrics_file is not None:
            from cfallow.report import metrics

            metrics.check_path(self.cfg.metrics_file)

    def stage(self, got: resolve.Resolved) -> bool:
        """Stage a fetched list before any backend runs (a full state dir stops the run
        here); whether one was staged."""
        if got.fetched:
            self.state.stage(got.ranges)
        return got.fetched

    def record(self, got: resolve.Resolved, *, staged: bool) -> cadence.FetchLog | None:
        """Record the list and the fetch after the backends ran; the fetch log as it stands."""
        return resolve.record(self.cfg, self.state, got, staged=staged)

    def metrics(self, report: Report, *, success: bool) -> bool:
        """Write the metrics file if one is configured; ``False`` (and one error line) if
        it cannot be written."""
        if self.cfg.metrics_file is None:
            return True
        from cfallow.report import metrics

        try:
            metrics.write_metrics(self.cfg.metrics_file, report, now=time.time(), success=success)
        except OSError as exc:
            log.error(
                "cannot write metrics_file %s: %s", self.cfg.metrics_file, exc.strerror or exc
            )
            return False
        return True

    def notify(self, report: Report, code: int) -> None:
        """POST to ``notify_url`` if one is configured (and the run has news)."""
        if self.cfg.notify_url is not None:
            from cfallow.report import notify

            notify.after_run(self.cfg.notify_url, self.cfg.notify_timeout, report, code)

    def offer(
        self, opts: Options, backends: Sequence[backend.AnyBackend], *, in_step: bool
    ) -> None:
        """A sync ``in_step`` (it changed nothing, fetched nothing, failed nowhere) is
        recorded to be said again while all it rested on holds (:mod:`cfallow.instep`):
        unless its command line asks for more, the config writes metrics or notifies on
        every run, or a backend cannot name what its read rested on."""
        if not (in_step and opts.recordable and backends):
            return
        if self.cfg.metrics_file is not None or self.cfg.notify_url is not None:
            return
        found: list[Witness] = []
        for b in backends:
            given = b.witnesses()
            if given is None:
                return
            found += given
        instep.offer(found)

    def accept(self, ranges: Ranges) -> bool:
        """Record ``ranges`` as the accepted list (under the lock); whether it was."""
        with self.held():
            self.state.save_anchor(ranges)
        return True


@contextlib.contextmanager
def _held(state: State, lock_timeout: float) -> Iterator[None]:
    with state.lock(lock_timeout):
        with repeat.session(state.dir) as said:
            yield
        if said.before or said.now:  # its short form moves on each run: not said again
            instep.spoil()
        instep.seal(state.dir)  # last, under the lock: what the run wrote is all there


class DryRun(Writes):
    """A dry run: the same calls, nothing written, no lock taken."""

    def held(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def check_metrics(self) -> None:
        return None

    def stage(self, got: resolve.Resolved) -> bool:
        return False

    def record(self, got: resolve.Resolved, *, staged: bool) -> cadence.FetchLog | None:
        return got.log

    def metrics(self, report: Report, *, success: bool) -> bool:
        return True

    def notify(self, report: Report, code: int) -> None:
        return None

    def offer(
        self, opts: Options, backends: Sequence[backend.AnyBackend], *, in_step: bool
    ) -> None:
        return None

    def accept(self, ranges: Ranges) -> bool:
        return False


@dataclass(frozen=True)
class Invocation:
    """One run of the command line: what was asked and what it runs with."""

    opts: Options
    config: config.Config
    state: State
    ctx: backend.Context
    #: The selected backends, built (``--offline``: those that need no network).
    backends: tuple[backend.AnyBackend, ...]
    writes: Writes


def _backends(
    cfg: config.Config, names: Sequence[str], ctx: backend.Context, *, offline: bool
) -> list[backend.AnyBackend]:
    """Build every configured backend (the whole config is checked before anything
    runs, whatever ``--backend`` selects), then return the selected ones."""
    known = set(backend.installed()) if names else set()  # each scan reads every dist-info
    for name in names:  # a command-line typo is the command line's error
        if name not in known:
            raise UsageError(f"--backend {name}: no such backend{suggest(name, known)}")
    try:
        built = {n: backend.build(n, cfg.backends[n], ctx) for n in cfg.backends}
        selected = list(dict.fromkeys(names)) if names else list(cfg.backends)
        if not selected:
            raise UsageError("no backend is enabled in the configuration")
        chosen = [built[n] if n in built else backend.build(n, {}, ctx) for n in selected]
    except ConfigError as exc:
        raise config.in_file(cfg.path, exc) from None
    if not offline:
        return chosen
    for b in chosen:
        if b.needs_network:
            log.info("%s: skipped (needs the network; --offline)", b.name)
    return [b for b in chosen if not b.needs_network]


def load(opts: Options) -> Invocation:
    """The config, the state directory, the backends' context and the selected backends
    (the whole config, every backend section included, before any lock or state dir)."""
    cfg = config.load(opts.config)
    state = State(opts.state_dir)
    ctx = backend.Context(
        runner=Runner(),
        state_dir=state.dir,
        log=log,
        scheduled=opts.scheduled and not opts.dry_run,
    )
    built: list[backend.AnyBackend] = []
    if opts.command not in NO_BACKENDS:
        built = _backends(cfg, opts.backends, ctx, offline=opts.offline)
    writes = (DryRun if opts.dry_run else Writes)(cfg, state, opts.lock_timeout)
    return Invocation(opts, cfg, state, ctx, tuple(built), writes)
