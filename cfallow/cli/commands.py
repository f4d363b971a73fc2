"""Command line: ``cfallow [--config FILE] [--state-dir DIR] [-v|-q] COMMAND``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence

from cfallow import backend, engine, report
from cfallow.cli import invocation
from cfallow.cli.args import parser as _parser
from cfallow.cli.invocation import Invocation
from cfallow.cli.verify import cmd_verify, verify_first
from cfallow.errors import (
    EXIT_BACKEND,
    EXIT_DRIFT,
    EXIT_OK,
    EXIT_RANGES,
    CfallowError,
    ConfigError,
    FetchError,
    RangesError,
    StateError,
)
from cfallow.fetch import cadence, repeat, resolve, sources
from cfallow.fetch.ranges import Ranges
from cfallow.model import as_strings
from cfallow.report import table
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


def _emit(inv: Invocation, rep: report.Report, *, verb: str) -> None:
    ranges, results, dry_run = rep.ranges, rep.results, rep.dry_run
    if inv.opts.json:  # the document on stdout; one line per backend on stderr
        report.write_json(sys.stdout, rep.to_json())
        if ranges is not None:
            log.info("%s", report.source_line(ranges))
        for r in results:
            if r.error is None:
                log.info("%s", report.summary(r, verb=verb, dry_run=dry_run))
    elif inv.opts.quiet:
        for r in results:
            print(report.summary(r, verb=verb, error=False, dry_run=dry_run))
    else:
        journal = report.is_journal(sys.stdout)
        detail = bool(inv.opts.verbose) or (verb != "status" and not journal)
        report.write_text(
            sys.stdout, ranges, results, dry_run=dry_run, verb=verb, detail=detail, wrap=not journal
        )
    for r in results:  # a backend's error: once, on stderr ("NAME: failed" in the report)
        if r.error is not None:
            log.error("%s: %s", r.name, r.error)


def cmd_ranges(inv: Invocation) -> int:
    opts, cfg, state = inv.opts, inv.config, inv.state
    if opts.source == "last-known-good":
        known = state.load()
        if known is None:
            raise RangesError(
                f"no last-known-good list in {state.dir}: this host has not fetched one "
                "(a sync on the bundled snapshot says so every run)"
            )
        ranges = known
    elif opts.source == "bundled":
        ranges = sources.bundled()
    else:
        ranges = sources.fetch_live(cfg.source)
    if opts.json:
        doc = ranges.to_json()
        doc["date"] = resolve.day(ranges)
        report.write_json(sys.stdout, {"source": doc})
    else:
        for net in as_strings(ranges.ipv4 | ranges.ipv6):
            print(net)
        log.info("%s (of %s)", report.source_line(ranges), resolve.day(ranges))
    return EXIT_OK


def cmd_backends(inv: Invocation) -> int:
    cfg, ctx = inv.config, inv.ctx
    rows = []
    for name in backend.installed():
        enabled = name in cfg.backends
        try:
            backend.build(name, cfg.backends.get(name, {}), ctx).check()
            state, why = "ok", ""
        except ConfigError as exc:  # its section is missing what it needs: not set up here
            state, why = ("unavailable", str(exc)) if enabled else ("not enabled", "")
        except CfallowError as exc:
            state, why = "unavailable", str(exc)
        except Exception as exc:  # a broken plugin must not hide the others
            state, why = "unavailable", f"cannot load: {type(exc).__name__}: {exc}"
        rows.append({"name": name, "enabled": enabled, "state": state, "note": why})
    firewall = _host_firewall(ctx.runner)
    if inv.opts.json:
        report.write_json(sys.stdout, {"backends": rows, "host_firewall": firewall})
        return EXIT_OK
    cells = [
        [str(r["name"]), "yes" if r["enabled"] else "no", str(r["state"]), str(r["note"])]
        for r in rows
    ]
    lines = table.render(["backend", "enabled", "state", "note"], cells)
    if not inv.opts.quiet:
        lines += ["host firewall:", *(f"  {line}" for line in firewall)]
    for line in lines:
        print(*table.wrap(line, indent=6), sep="\n")
    return EXIT_OK


def _host_firewall(runner: Runner) -> list[str]:
    """What the host's own firewall does (``backends``, and ``sync -v``): the analysis is
    imported only here, a plain run never needs it."""
    from cfallow.netfilter import host as hostfw
    from cfallow.netfilter.advice import describe

    return describe(hostfw.read(runner))


def _sync_like(inv: Invocation, *, verb: str) -> int:
    """``sync`` and ``status`` (a dry run): what a real run writes besides the backends
    goes through ``inv.writes`` (nothing on a dry run)."""
    opts, writes = inv.opts, inv.writes
    if log.isEnabledFor(logging.DEBUG):
        for line in _host_firewall(inv.ctx.runner):
            log.debug("host firewall: %s", line)
    try:
        got = resolve.resolve(
            inv.config,
            inv.state,
            source=opts.source,
            offline=opts.offline,
            scheduled=opts.scheduled,
            force=opts.force,
            pushed=opts.source_file,
        )
        if opts.verify:
            failed = verify_first(inv, got.ranges)
            if failed:
                return failed
        staged = writes.stage(got)  # before any backend runs: a full state dir stops here
    except (RangesError, StateError):
        # a refused list is a failed run: the last-success age keeps growing
        writes.metrics(report.Report((), dry_run=False), success=False)
        raise
    ranges = got.ranges
    results = engine.run(inv.backends, ranges.desired, dry_run=opts.dry_run).results
    state_error = None
    fetch_log = got.log
    try:
        fetch_log = writes.record(got, staged=staged)
    except StateError as exc:
        state_error = str(exc)
    rep = report.Report(tuple(results), opts.dry_run, ranges, report.Fetch.of(got, fetch_log))
    _emit(inv, rep, verb=verb)
    if state_error is not None:
        log.error("%s", state_error)
    failed = state_error is not None or rep.failed
    if not writes.metrics(rep, success=not failed and got.held is None):
        failed = True
    code = _exit_code(got, ranges, failed, verb=verb, changed=rep.changed)
    writes.notify(rep, code)
    if verb == "sync":  # changed nothing, fetched nothing, failed nowhere: said again
        quiet = not (got.attempted or got.held or rep.changed or rep.failed)
        writes.offer(opts, inv.backends, in_step=quiet and code == EXIT_OK)
    return code


def _exit_code(
    got: resolve.Resolved, ranges: Ranges, failed: bool, *, verb: str, changed: bool
) -> int:
    """The run's exit code; a list held at last-known-good says so on stderr."""
    if got.held is not None:  # a status compares; a sync has repaired, yet the fetch failed
        held = resolve.held_line(ranges, "compared with" if verb == "status" else "held at")
        level = logging.WARNING if verb == "status" else logging.ERROR
        cause = str(got.held)
        if isinstance(got.held, FetchError):  # unreachable: shortened while it lasts
            short = f"live fetch still failing the same way; {held}"
            repeat.warn(resolve.HELD_WARNING, [cause, held], short, cause=cause, level=level)
        else:  # a list refused: said in full every time, it needs the operator
            log.log(level, "%s", cause)
            log.log(level, "%s", held)
    if failed:
        return EXIT_BACKEND
    if verb == "status":
        return EXIT_DRIFT if changed else EXIT_OK
    return EXIT_RANGES if got.held is not None else EXIT_OK


def cmd_sync(inv: Invocation) -> int:
    inv.writes.check_metrics()  # a config error (exit 2) before anything is touched
    with inv.writes.held():
        return _sync_like(inv, verb="sync")


def cmd_status(inv: Invocation) -> int:
    return _sync_like(inv, verb="status")


def cmd_accept(inv: Invocation) -> int:
    """Show the list against the accepted one; unless ``--dry-run``, record it as accepted
    (the growth guard's anchor). The ceiling still holds."""
    opts, cfg, state = inv.opts, inv.config, inv.state
    if opts.source == "bundled":
        ranges = sources.bundled()
    else:
        ranges = dataclasses.replace(sources.fetch_live(cfg.source), fetched_at=cadence.now())
    resolve.ceiling(cfg, ranges)
    lines = resolve.accept_lines(state.load_anchor(), ranges)
    for line in lines[:3] if opts.quiet else lines:  # -q: the per-family summary only
        print(line)
    if not inv.writes.accept(ranges):
        log.info("not recorded (--dry-run)")
        return EXIT_OK
    log.info("recorded as the accepted list in %s; the next sync may apply it", state.dir)
    return EXIT_OK


def cmd_remove(inv: Invocation) -> int:
    with inv.writes.held():
        results = engine.run(inv.backends, None, dry_run=inv.opts.dry_run).results
        _emit(inv, report.Report(tuple(results), inv.opts.dry_run), verb="remove")
        return EXIT_BACKEND if any(r.error is not None for r in results) else EXIT_OK


def cmd_check(inv: Invocation) -> int:
    from cfallow.cli import check

    return check.run(inv)


def cmd_prepare(inv: Invocation) -> int:
    from cfallow.cli import check

    return check.run_prepare(list(inv.backends))


COMMANDS: dict[str, Callable[[Invocation], int]] = {
    "ranges": cmd_ranges,
    "backends": cmd_backends,
    "accept": cmd_accept,
    "check": cmd_check,
    "prepare": cmd_prepare,
    "sync": cmd_sync,
    "status": cmd_status,
    "remove": cmd_remove,
    "verify": cmd_verify,
}


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
        parser = _parser(None if "_ARGCOMPLETE" in os.environ else raw)
        _complete(parser)
        opts = invocation.Options.parse(parser.parse_args(raw))
        want_json = opts.json
        _setup_logging(opts.verbose, opts.quiet)
        return COMMANDS[opts.command](invocation.load(opts))
    except CfallowError as exc:
        return _fail(exc, want_json)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
