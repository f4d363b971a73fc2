"""The ``verify`` command and ``sync --verify`` (the proof itself is :mod:`cfallow.verify`)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from cfallow import report
from cfallow.cli.invocation import Invocation
from cfallow.errors import EXIT_OK, EXIT_VERIFY
from cfallow.fetch import sources
from cfallow.fetch.ranges import Ranges

log = logging.getLogger("cfallow")


def verify_first(inv: Invocation, ranges: Ranges) -> int:
    """``sync --verify``: the plan applied and probed in a scratch copy; non-zero to stop."""
    from cfallow.verify import command as verify

    backends, ctx = list(inv.backends), inv.ctx
    wants, notes = verify.expectations(backends)
    probed = [b for b in backends if b.name in {w.backend for w in wants}]
    with verify.scratch_dir() as tmp:
        before = verify.scratch_apply(probed, inv.config.backends, ctx, ranges.desired, tmp)
        rep = verify.verify_ranges(
            ctx.runner, ranges.desired, wants, uplink=None, timeout=0.5, before=before
        )
    rep.notes[:0] = notes
    return verify_out(inv.opts.json, rep, quiet=inv.opts.quiet, quiet_ok=True)


def verify_out(json: bool, rep: Any, *, quiet: bool = False, quiet_ok: bool = False) -> int:
    from cfallow.verify import command as verify

    if json and not (quiet_ok and rep.ok):
        report.write_json(sys.stdout, {"verify": rep.to_json()})
    elif not json:
        verify.write_text(sys.stdout, rep, quiet=quiet)
    for line in rep.failures():
        log.error("verify: %s", line)
    if rep.ok and json:
        log.info("verify: ok (%d probes)", len(rep.probes))
    return EXIT_OK if rep.ok else EXIT_VERIFY


def cmd_verify(inv: Invocation) -> int:
    """``verify``: probe the host's own ruleset (a copy of it) with the last-known-good list."""
    from cfallow.verify import command as verify

    ranges = inv.state.load() or sources.bundled()
    wants, notes = verify.expectations(list(inv.backends))
    rep = verify.verify_ranges(
        inv.ctx.runner, ranges.desired, wants, uplink=inv.opts.uplink, timeout=inv.opts.timeout
    )
    rep.notes[:0] = notes
    return verify_out(inv.opts.json, rep, quiet=inv.opts.quiet)
