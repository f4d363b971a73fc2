"""The ``cfallow`` command (and ``python -m cfallow``): a run in step said again, else
the full run.

This module is the command's entry point so that a run said again imports only
:mod:`cfallow.instep` (and what it asks with), never the engine, the model or a
backend; the full command line is :func:`cfallow.cli.commands.main`.
"""

from __future__ import annotations

import os
import sys

from cfallow import instep

TYPE_CHECKING = False  # typing is not imported on a run said again (mypy: true)
if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cfallow ARGV``: what a recorded run printed, if all it rested on holds
    (:mod:`cfallow.instep`), else the full run (recorded when it may be)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    if sys.stdout is None:  # started with it closed (``>&-``): the report goes nowhere
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the process's life
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    code = instep.replay(raw)
    if code is not None:
        return code
    instep.capture(raw)
    try:
        from cfallow.cli.commands import main as full

        return full(raw)
    finally:
        instep.release()


if __name__ == "__main__":
    sys.exit(main())
