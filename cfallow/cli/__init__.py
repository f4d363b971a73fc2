"""The command line (``cfallow.cli:main``)."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (see :mod:`cfallow.cli.commands`)."""
    from cfallow.cli.commands import main as run_main

    return run_main(argv)
