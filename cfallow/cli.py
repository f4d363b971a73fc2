"""Command line: ``cfallow [--config FILE] [--state-dir DIR] [-v|-q] COMMAND``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cfallow import __version__, backend, config, engine, hostfw, report, resolve, sources
from cfallow.engine import BackendResult
from cfallow.errors import (
    EXIT_BACKEND,
    EXIT_DRIFT,
    EXIT_OK,
    EXIT_RANGES,
    EXIT_VERIFY,
    CfallowError,
    ConfigError,
    RangesError,
    StateError,
    UsageError,
)
from cfallow.hostfw_advice import describe
from cfallow.model import as_strings
from cfallow.ranges import Ranges
from cfallow.runner import Runner
from cfallow.state import State

log = logging.getLogger("cfallow")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"config file (default {config.DEFAULT_CONFIG}, built-in defaults if absent)",
    )
    common.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        default=argparse.SUPPRESS,
        help=f"state directory (default {config.DEFAULT_STATE_DIR})",
    )
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="debug lines on stderr"
    )
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="only each backend's summary line (and warnings, errors on stderr)",
    )

    p = _Parser(
        prog="cfallow",
        parents=[common],
        description="Keep allowlists in step with Cloudflare's published IP ranges.",
    )
    p.add_argument("--version", action="version", version=f"cfallow {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common], description=help)

    def source_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--source",
            choices=("live", "bundled"),
            default="live",
            help="live: Cloudflare (API, then text lists); bundled: the shipped snapshot",
        )

    r = add("ranges", "print the validated Cloudflare list")
    source_opt(r)
    r.add_argument(
        "--json",
        action="store_true",
        help="the report as one JSON document on stdout (failures too)",
    )

    s = add("sync", "bring every configured backend in step with the list")
    s.add_argument("--dry-run", action="store_true", help="show the plan; write nothing")
    s.add_argument(
        "--json",
        action="store_true",
        help="the report as one JSON document on stdout (failures too)",
    )
    s.add_argument(
        "--backend", action="append", metavar="NAME", help="only this backend (repeatable)"
    )
    source_opt(s)
    s.add_argument(
        "--offline",
        action="store_true",
        help="no network: the last-known-good list (else the bundled snapshot)",
    )
    s.add_argument(
        "--scheduled",
        action="store_true",
        help="as the timer runs it: fetch only when [source] refresh (or retry) is due",
    )
    s.add_argument("--force", action="store_true", help="accept a list that fails the shrink guard")
    s.add_argument(
        "--verify",
        action="store_true",
        help="apply the plan in a scratch copy of this host's firewall first; "
        "touch the host only if Cloudflare gets in there (else exit 5)",
    )
    s.add_argument(
        "--lock-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for another run's lock (default 60)",
    )

    st = add("status", "compare every backend with the list (read-only; exit 3 on drift)")
    st.add_argument(
        "--json",
        action="store_true",
        help="the report as one JSON document on stdout (failures too)",
    )
    st.add_argument("--backend", action="append", metavar="NAME", help="only this backend")
    source_opt(st)
    st.add_argument("--offline", action="store_true", help="compare with the last-known-good list")

    add("backends", "list installed backend plugins and whether each can run here")

    ck = add(
        "check",
        "check the config, each backend's preflight and the paths a run writes "
        "(read-only; exit 0 or 2)",
    )
    ck.add_argument("--backend", action="append", metavar="NAME", help="only this backend")
    ck.add_argument(
        "--unit",
        type=Path,
        default=Path("/etc/systemd/system/cfallow.service"),
        metavar="FILE",
        help="the installed systemd unit whose ReadWritePaths to compare (skipped if absent)",
    )
    ck.add_argument(
        "--json",
        action="store_true",
        help="the report as one JSON document on stdout (failures too)",
    )

    v = add("verify", "prove in scratch namespaces that Cloudflare gets in (exit 5 if not)")
    v.add_argument(
        "--json",
        action="store_true",
        help="the report as one JSON document on stdout (failures too)",
    )
    v.add_argument("--backend", action="append", metavar="NAME", help="only this backend")
    v.add_argument("--uplink", metavar="IFACE", help="the interface traffic arrives on")
    v.add_argument("--timeout", type=float, default=0.5, metavar="S", help="wait for a dropped SYN")

    rm = add("remove", "remove everything cfallow owns from the backends")
    rm.add_argument("--backend", action="append", metavar="NAME", help="only this backend")
    rm.add_argument("--dry-run", action="store_true", help="show what would go; remove nothing")
    rm.add_argument(
        "--json",
        action="store_true",
        help="the report as one JSON document on stdout (failures too)",
    )
    rm.add_argument(
        "--lock-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for another run's lock (default 60)",
    )
    return p


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
        if getattr(b, "needs_network", False):
            log.info("%s: skipped (needs the network; --offline)", b.name)
    return [b for b in chosen if not getattr(b, "needs_network", False)]


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


def cmd_ranges(args: argparse.Namespace, cfg: config.Config) -> int:
    ranges = sources.bundled() if args.source == "bundled" else sources.fetch_live(cfg.source)
    if args.json:
        report.write_json(sys.stdout, {"source": ranges.to_json()})
    else:
        for net in as_strings(ranges.ipv4 | ranges.ipv6):
            print(net)
        log.info("%s", report.source_line(ranges))
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
    from cfallow import metrics

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
        )
        if getattr(args, "verify", False):
            failed = _verify_first(args, cfg, ctx, backends, got.ranges)
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
    if got.held is not None:  # a status compares; a sync has repaired, yet the fetch failed
        say = log.warning if verb == "status" else log.error
        say("%s", got.held)
        say("%s", resolve.held_line(ranges, "compared with" if verb == "status" else "held at"))
    if failed:
        code = EXIT_BACKEND
    elif verb == "status":
        code = EXIT_DRIFT if doc["changed"] else EXIT_OK
    else:
        code = EXIT_RANGES if got.held is not None else EXIT_OK
    if not dry_run and cfg.notify_url is not None:
        from cfallow import notify

        notify.after_run(cfg.notify_url, cfg.notify_timeout, doc, code, got)
    return code


def _verify_first(
    args: argparse.Namespace,
    cfg: config.Config,
    ctx: backend.Context,
    backends: list[backend.AnyBackend],
    ranges: Ranges,
) -> int:
    """``sync --verify``: the plan applied and probed in a scratch copy; non-zero to stop."""
    from cfallow.verify import command as verify

    wants, notes = verify.expectations(backends)
    probed = [b for b in backends if b.name in {w.backend for w in wants}]
    with verify.scratch_dir() as tmp:
        before = verify.scratch_apply(probed, cfg.backends, ctx, ranges.desired, tmp)
        rep = verify.verify_ranges(
            ctx.runner, ranges.desired, wants, uplink=None, timeout=0.5, before=before
        )
    rep.notes[:0] = notes
    return _verify_out(args, rep, quiet_ok=True)


def _verify_out(args: argparse.Namespace, rep: Any, *, quiet_ok: bool = False) -> int:
    from cfallow.verify import command as verify

    if args.json and not (quiet_ok and rep.ok):
        report.write_json(sys.stdout, {"verify": rep.to_json()})
    elif not args.json:
        verify.write_text(sys.stdout, rep)
    for line in rep.failures():
        log.error("verify: %s", line)
    if rep.ok:
        log.info("verify: ok (%d probes)", len(rep.probes))
    return EXIT_OK if rep.ok else EXIT_VERIFY


def cmd_verify(
    args: argparse.Namespace, cfg: config.Config, state: State, ctx: backend.Context
) -> int:
    """``verify``: probe the host's own ruleset (a copy of it) with the last-known-good list."""
    from cfallow.verify import command as verify

    backends: list[backend.AnyBackend] = args.built
    ranges = state.load() or sources.bundled()
    wants, notes = verify.expectations(backends)
    rep = verify.verify_ranges(
        ctx.runner, ranges.desired, wants, uplink=args.uplink, timeout=args.timeout
    )
    rep.notes[:0] = notes
    return _verify_out(args, rep)


def cmd_sync(
    args: argparse.Namespace, cfg: config.Config, state: State, ctx: backend.Context
) -> int:
    if args.dry_run:
        return _sync_like(args, cfg, state, ctx, dry_run=True, verb="sync")
    if cfg.metrics_file is not None:  # a config error (exit 2) before anything is touched
        from cfallow import metrics

        metrics.check_path(cfg.metrics_file)
    with state.lock(args.lock_timeout):
        return _sync_like(args, cfg, state, ctx, dry_run=False, verb="sync")


def cmd_status(
    args: argparse.Namespace, cfg: config.Config, state: State, ctx: backend.Context
) -> int:
    return _sync_like(args, cfg, state, ctx, dry_run=True, verb="status")


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
            return cmd_ranges(args, cfg)
        if args.command == "backends":
            return cmd_backends(args, cfg, ctx)
        # the whole config, every backend section included, before any lock or state dir
        args.built = _backends(
            cfg, getattr(args, "backend", None), ctx, offline=getattr(args, "offline", False)
        )
        if args.command == "check":
            from cfallow import check

            return check.run(args, cfg, state, ctx, args.built)
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
