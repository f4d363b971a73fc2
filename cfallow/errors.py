"""The one exception root, and the exit codes it maps to.

An expected failure is a :class:`CfallowError`: the CLI prints its message on
one line and exits with its ``exit_code``. Anything else is a bug and prints a
traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BACKEND = 1
EXIT_USAGE = 2
EXIT_DRIFT = 3
EXIT_RANGES = 4
EXIT_VERIFY = 5


class CfallowError(Exception):
    """Root of every expected failure."""

    exit_code = EXIT_BACKEND


class UsageError(CfallowError):
    """Bad command line."""

    exit_code = EXIT_USAGE


class ConfigError(CfallowError):
    """Bad or missing configuration (names the file and key)."""

    exit_code = EXIT_USAGE


class RangesError(CfallowError):
    """The ranges could not be had or were refused: nothing is changed anywhere."""

    exit_code = EXIT_RANGES
    retry_after: float | None = None  # seconds a source asked us to wait (Retry-After)


class FetchError(RangesError):
    """A source could not be reached or answered with an HTTP error."""

    status: int | None = None  # the HTTP status it answered with, if it answered


class ValidationError(RangesError):
    """A source answered, but what it said is not a trustworthy list."""


class GuardRefused(RangesError):
    """The new list shrinks the last-known-good list more than allowed."""


class BackendError(CfallowError):
    """A backend could not check, read or apply (the run goes on with the others)."""

    exit_code = EXIT_BACKEND


class Unavailable(BackendError):
    """A backend cannot run on this host (tool, module, privilege or service missing)."""


class NotInstalled(Unavailable):
    """The program a backend drives is not installed on this host.

    Raised by ``check()``. cfallow owns nothing on a target whose tool is not
    even installed, so the engine still plans such a backend (its ``read``
    sees an empty target and its plan says what is missing): a dry run shows
    what a sync would do once the tool is there. ``apply`` raises it again,
    so a real sync fails, naming the package.
    """


class TargetMoved(BackendError):
    """The target changed between a backend's read and its write.

    The engine reads once more, re-plans and applies again (a bounded number
    of times); a backend raises it only when nothing was changed.
    """


class CommandNotFound(Unavailable):
    """The program of an argv is not installed (or not on PATH)."""

    def __init__(self, program: str, hint: str = "") -> None:
        self.program = program
        super().__init__(f"{program}: command not found" + (f" ({hint})" if hint else ""))


class CommandTimeout(BackendError):
    """A subprocess did not finish in time (it was killed)."""

    def __init__(self, argv: list[str], timeout: float) -> None:
        self.argv = argv
        self.timeout = timeout
        super().__init__(f"{argv[0]} did not finish within {timeout:g} s")


class CommandFailed(BackendError):
    """A subprocess exited non-zero; carries argv, exit status and stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
        super().__init__(f"{argv[0]} exited {returncode}: {detail}")


class LockTimeout(CfallowError):
    """Another cfallow run holds the state lock."""

    exit_code = EXIT_BACKEND


class StateError(CfallowError):
    """The state directory cannot be read or written."""

    exit_code = EXIT_BACKEND


class VerifyFailed(CfallowError):
    """``verify`` could not prove the promise (or could not run the proof): exit 5."""

    exit_code = EXIT_VERIFY
