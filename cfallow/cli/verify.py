"""The ``verify`` command and ``sync --verify`` (the proof itself is :mod:`cfallow.verify`)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from cfallow import backend, report
from cfallow.cli import config
from cfallow.errors import EXIT_OK, EXIT_VERIFY
from cfallow.fetch import sources
from cfallow.fetch.ranges import Ranges
from cfallow.fetch.state import State

log = logging.getLogger("cfallow")


def verify_first(
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
    return verify_out(args, rep, quiet_ok=True)


def verify_out(args: argparse.Namespace, rep: Any, *, quiet_ok: bool = False) -> int:
    from cfallow.verify import command as verify

    if args.json and not (quiet_ok and rep.ok):
        report.write_json(sys.stdout, {"verify": rep.to_json()})
    elif not args.json:
        verify.write_text(sys.stdout, rep, quiet=bool(getattr(args, "quiet", False)))
    for line in rep.failures():
        log.error("verify: %s", line)
    if rep.ok and args.json:
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
    return verify_out(args, rep)
