"""Command line: ``cfallow [--config FILE] [--state-dir DIR] [-v|-q] COMMAND``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence

from cfallow import backend, engine, report
from cfallow.cli import config
from cfallow.cli.args import parser as _parser
from cfallow.cli.verify import cmd_verify, verify_first
from cfallow.engine import BackendResult
from cfallow.errors import (
    EXIT_BACKEND,
    EXIT_DRIFT,
    EXIT_OK,
    EXIT_RANGES,
    CfallowError,
    ConfigError,
    RangesError,
    StateError,
    UsageError,
)
from cfallow.fetch import cadence, resolve, sources
from cfallow.fetch.ranges import Ranges
from cfallow.fetch.state import State
from cfallow.model import as_strings
from cfallow.netfilter import host as hostfw
from cfallow.netfilter.advice import describe
from cfallow.runner import Runner

log = logging.getLogger("cfallow")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"cfallow: {record.levelname.lower()}: {msg}"
        return f"cfallow: {msg}"


def _setup_logging(verbose: int, quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def _backends(
    cfg: config.Config, names: Sequence[str] | None, ctx: backend.Context, *, offline: bool = False
) -> list[backend.AnyBackend]:
    """Build every configured backend (the whole config is checked before anything
    runs, whatever ``--backend`` selects), then return the selected ones."""
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


def _emit(
    args: argparse.Namespace,
    ranges: Ranges | None,
    results: list[BackendResult],
    *,
    dry_run: bool,
    verb: str,
    fetch: dict[str, object] | None = None,
) -> dict[str, object]:
    doc = report.to_json(ranges, results, dry_run=dry_run)
    if ranges is not None:
        doc["source"]["date"] = resolve.day(ranges)  # fetched_at as YYYY-MM-DD (UTC)
    if fetch is not None:
        doc["fetch"] = fetch
    if args.json:  # the document on stdout; one line per backend on stderr
        report.write_json(sys.stdout, doc)
        if ranges is not None:
            log.info("%s", report.source_line(ranges))
        for r in results:
            if r.error is None:
                log.info("%s", report.summary(r, verb=verb))
    elif getattr(args, "quiet", False):
        for r in results:
            print(report.summary(r, verb=verb, error=False))
    else:
        report.write_text(sys.stdout, ranges, results, dry_run=dry_run, verb=verb)
    for r in results:  # a backend's error: once, on stderr ("NAME: failed" in the report)
        if r.error is not None:
            log.error("%s: %s", r.name, r.error)
    return doc


def cmd_ranges(args: argparse.Namespace, cfg: config.Config, state: State) -> int:
    if args.source == "last-known-good":
        known = state.load()
        if known is None:
            raise RangesError(
                f"no last-known-good list in {state.dir}: this host has not fetched one "
                "(a sync on the bundled snapshot says so every run)"
            )
        ranges = known
    elif args.source == "bundled":
        ranges = sources.bundled()
    else:
        ranges = sources.fetch_live(cfg.source)
    if args.json:
        doc = ranges.to_json()
        doc["date"] = resolve.day(ranges)
        report.write_json(sys.stdout, {"source": doc})
    else:
        for net in as_strings(ranges.ipv4 | ranges.ipv6):
            print(net)
        log.info("%s (of %s)", report.source_line(ranges), resolve.day(ranges))
    return EXIT_OK


def cmd_backends(args: argparse.Namespace, cfg: config.Config, ctx: backend.Context) -> int:
    for name in backend.installed():
        enabled = "enabled" if name in cfg.backends else "not enabled"
        try:
            backend.build(name, cfg.backends.get(name, {}), ctx).check()
            ok, why = True, "ok"
        except CfallowError as exc:
            ok, why = False, str(exc)
        except Exception as exc:  # a broken plugin must not hide the others
            ok, why = False, f"cannot load: {type(exc).__name__}: {exc}"
        print(f"{name:<10} {'ok' if ok else 'unavailable':<11} {enabled:<11} {why}")
    print("host firewall:")
    for line in describe(hostfw.read(ctx.runner)):
        print(f"  {line}")
    return EXIT_OK


def _write_metrics(cfg: config.Config, doc: dict[str, object], *, success: bool) -> bool:
    """Write the metrics file if one is configured; ``False`` (and one error line) if it fails."""
    if cfg.metrics_file is None:
        return True
    from cfallow.report import metrics

    try:
        metrics.write_metrics(cfg.metrics_file, doc, now=time.time(), success=success)
    except OSError as exc:
        log.error("cannot write metrics_file %s: %s", cfg.metrics_file, exc.strerror or exc)
        return False
    return True


def _sync_like(
    args: argparse.Namespace,
    cfg: config.Config,
    state: State,
    ctx: backend.Context,
    *,
    dry_run: bool,
    verb: str,
) -> int:
    offline = getattr(args, "offline", False)
    backends: list[backend.AnyBackend] = args.built  # --offline: those that need no network
    if log.isEnabledFor(logging.DEBUG):
        for line in describe(hostfw.read(ctx.runner)):
            log.debug("host firewall: %s", line)
    try:
        got = resolve.resolve(
            cfg,
            state,
            source=args.source,
            offline=offline,
            scheduled=getattr(args, "scheduled", False),
            force=getattr(args, "force", False),
            pushed=getattr(args, "source_file", None),
        )
        if getattr(args, "verify", False):
            failed = verify_first(args, cfg, ctx, backends, got.ranges)
            if failed:
                return failed
        record = not dry_run and got.fetched
        if record:  # before any backend runs: a full state dir stops the run here
            state.stage(got.ranges)
    except (RangesError, StateError):
        if not dry_run:  # a refused list is a failed run: the last-success age keeps growing
            _write_metrics(cfg, report.to_json(None, [], dry_run=False), success=False)
        raise
    ranges = got.ranges
    ctx.etag = ranges.etag
    results = engine.run(backends, ranges.desired, dry_run=dry_run).results
    state_error = None
    if not dry_run:
        try:
            resolve.record(cfg, state, got, staged=record)
        except StateError as exc:
            state_error = str(exc)
    doc = _emit(
        args, ranges, results, dry_run=dry_run, verb=verb, fetch=resolve.fetch_json(state, got)
    )
    if state_error is not None:
        log.error("%s", state_error)
    failed = state_error is not None or any(r.error is not None for r in results)
    if not dry_run and not _write_metrics(cfg, doc, success=not failed and got.held is None):
        failed = True
    code = _exit_code(got, ranges, failed, verb=verb, changed=bool(doc["changed"]))
    if not dry_run and cfg.notify_url is not None:
        from cfallow.report import notify

        notify.after_run(cfg.notify_url, cfg.notify_timeout, doc, code, got)
    return code


def _exit_code(
    got: resolve.Resolved, ranges: Ranges, failed: bool, *, verb: str, changed: bool
) -> int:
    """The run's exit code; a list held at last-known-good says so on stderr."""
    if got.held is not None:  # a status compares; a sync has repaired, yet the fetch failed
        say = log.warning if verb == "status" else log.error
        say("%s", got.held)
        say("%s", resolve.held_line(ranges, "compared with" if verb == "status" else "held at"))
    if failed:
        return EXIT_BACKEND
    if verb == "status":
        return EXIT_DRIFT if changed else EXIT_OK
    return EXIT_RANGES if got.held is not None else EXIT_OK


def cmd_sync(
    args: argparse.Namespace, cfg: config.Config, state: State, ctx: backend.Context
) -> int:
    if args.dry_run:
        return _sync_like(args, cfg, state, ctx, dry_run=True, verb="sync")
    if cfg.metrics_file is not None:  # a config error (exit 2) before anything is touched
        from cfallow.report import metrics

        metrics.check_path(cfg.metrics_file)
    with state.lock(args.lock_timeout):
        return _sync_like(args, cfg, state, ctx, dry_run=False, verb="sync")


def cmd_status(
    args: argparse.Namespace, cfg: config.Config, state: State, ctx: backend.Context
) -> int:
    return _sync_like(args, cfg, state, ctx, dry_run=True, verb="status")


def cmd_accept(args: argparse.Namespace, cfg: config.Config, state: State) -> int:
    """Show the list against the accepted one; unless ``--dry-run``, record it as accepted
    (the growth guard's anchor). The ceiling still holds."""
    if args.source == "bundled":
        ranges = sources.bundled()
    else:
        ranges = dataclasses.replace(sources.fetch_live(cfg.source), fetched_at=cadence.now())
    resolve.ceiling(cfg, ranges)
    for line in resolve.accept_lines(state.load_anchor(), ranges):
        print(line)
    if args.dry_run:
        log.info("not recorded (--dry-run)")
        return EXIT_OK
    with state.lock(args.lock_timeout):
        state.save_anchor(ranges)
    log.info("recorded as the accepted list in %s; the next sync may apply it", state.dir)
    return EXIT_OK


def cmd_remove(
    args: argparse.Namespace, cfg: config.Config, state: State, ctx: backend.Context
) -> int:
    backends: list[backend.AnyBackend] = args.built

    def run() -> int:
        results = engine.run(backends, None, dry_run=args.dry_run).results
        _emit(args, None, results, dry_run=args.dry_run, verb="remove")
        return EXIT_BACKEND if any(r.error is not None for r in results) else EXIT_OK

    if args.dry_run:
        return run()
    with state.lock(args.lock_timeout):
        return run()


def _complete(parser: argparse.ArgumentParser) -> None:
    """Shell completion, when argcomplete is installed (the ``completion`` extra) and the
    shell asks (``eval "$(register-python-argcomplete cfallow)"``); exits after answering."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def _fail(exc: CfallowError, want_json: bool) -> int:
    """One error line on stderr; with ``--json`` also a document on stdout."""
    log.error("%s", exc)
    if want_json:
        report.write_json(sys.stdout, {"error": str(exc), "exit_code": exc.exit_code})
    return exc.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    _setup_logging(0, False)
    raw = list(sys.argv[1:] if argv is None else argv)
    want_json = "--json" in raw  # also for a command line argparse refuses
    try:
        parser = _parser()
        _complete(parser)
        args = parser.parse_args(raw)
        want_json = bool(getattr(args, "json", False))
        _setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
        cfg = config.load(getattr(args, "config", None))
        state = State(getattr(args, "state_dir", config.DEFAULT_STATE_DIR))
        ctx = backend.Context(runner=Runner(), state_dir=state.dir, log=log)
        if args.command == "ranges":
            return cmd_ranges(args, cfg, state)
        if args.command == "backends":
            return cmd_backends(args, cfg, ctx)
        if args.command == "accept":
            return cmd_accept(args, cfg, state)
        # the whole config, every backend section included, before any lock or state dir
        args.built = _backends(
            cfg, getattr(args, "backend", None), ctx, offline=getattr(args, "offline", False)
        )
        if args.command == "check":
            from cfallow.cli import check

            return check.run(args, cfg, state, ctx, args.built)
        if args.command == "prepare":
            from cfallow.cli import check

            return check.run_prepare(args.built)
        command = {
            "sync": cmd_sync,
            "status": cmd_status,
            "remove": cmd_remove,
            "verify": cmd_verify,
        }[args.command]
        return command(args, cfg, state, ctx)
    except CfallowError as exc:
        return _fail(exc, want_json)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
