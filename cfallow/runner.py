"""The one way cfallow runs a subprocess: an argv list, never a shell string.

Tests substitute or inspect a :class:`Runner` to assert exact argv.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cfallow.errors import BackendError, CommandFailed, CommandNotFound, CommandTimeout


@dataclass(frozen=True)
class Completed:
    """A finished command."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Runner:
    """Runs argv lists; ``prefix`` is prepended to every argv.

    ``prefix`` exists for wrapping every call (``["ip", "netns", "exec", NS]``
    in tests, ``nsenter`` in a container). ``calls`` records each argv run.
    """

    prefix: Sequence[str] = ()
    env: Mapping[str, str] | None = None
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> Completed:
        """Run ``argv``; raise :class:`CommandFailed` on a non-zero exit when ``check``.

        A missing program is :class:`CommandNotFound`, a time-out
        :class:`CommandTimeout` (the process is killed).
        ``env`` adds variables for this one command (over the runner's own).
        """
        import subprocess  # here: a run that starts no process does not import it

        if isinstance(argv, str) or not all(isinstance(a, str) for a in argv):
            raise TypeError(f"argv must be a list of str, got {argv!r}")
        full = (*self.prefix, *argv)
        self.calls.append(tuple(argv))
        full_env = dict(os.environ, LC_ALL="C")
        full_env.update(self.env or {})
        full_env.update(env or {})
        try:
            proc = subprocess.run(
                full,
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=full_env,
                check=False,
            )
        except FileNotFoundError as exc:
            where = not_on_path(argv[0], full_env.get("PATH", ""))
            hint = (
                f"{where} is installed, but {os.path.dirname(where)} is not on PATH"
                if where
                else ""
            )
            raise CommandNotFound(argv[0], hint) from exc
        except PermissionError as exc:
            raise BackendError(f"{argv[0]}: permission denied") from exc
        except subprocess.TimeoutExpired as exc:
            raise CommandTimeout(list(argv), timeout) from exc
        done = Completed(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise CommandFailed(list(argv), proc.returncode, proc.stderr or proc.stdout)
        return done

    def run_module(self, module: str, *args: str) -> Completed:
        """``python -I -m module args`` with this interpreter, where this runner runs its
        commands (a module that asks the kernel of another namespace, through ``prefix``)."""
        import sys

        return self.run([sys.executable, "-I", "-m", module, *args])


#: Where Debian and other distributions install the programs cfallow runs.
SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def not_on_path(program: str, path: str | None = None) -> str | None:
    """Where ``program`` is installed though ``path`` (default ``$PATH``) leaves its
    directory out (a ``su``, cron or CI shell with ``/usr/bin`` but not ``/usr/sbin``),
    else ``None``. A ``path`` with none of :data:`SYSTEM_DIRS` is not an ordinary shell's
    (a test's, a sandbox's): no guess is made for it."""
    if os.sep in program:
        return None
    dirs = (os.environ.get("PATH", "") if path is None else path).split(os.pathsep)
    if not set(dirs) & set(SYSTEM_DIRS):
        return None
    for d in SYSTEM_DIRS:
        full = os.path.join(d, program)
        if d not in dirs and os.path.isfile(full) and os.access(full, os.X_OK):
            return full
    return None


def missing(program: str, package: str) -> str:
    """The one line for a program that is not found: where it is, if only ``PATH`` hides
    it; else which package installs it."""
    where = not_on_path(program)
    if where is not None:
        return (
            f"{program}: command not found ({where} is installed, but "
            f"{os.path.dirname(where)} is not on PATH)"
        )
    return f"{program}: command not found (install the {package} package)"
