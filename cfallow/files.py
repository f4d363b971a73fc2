"""A file cfallow owns outright (a drop-in, an include, a web server's trust list).

Every such file changes the same way, whoever renders it::

    render -> compare with the bytes on disk (equal: nothing is written)
           -> candidate next to the target (same directory, fsync)
           -> check_candidate(candidate path)       e.g. ``nft -c -f CANDIDATE``
           -> rename into place (atomic)
           -> test()                                the whole config, file in place
           -> activate()                            reload, only because bytes changed
    a failure in check_candidate leaves the target untouched; a failure in test
    or activate puts the previous bytes (or the absence of the file) back,
    atomically, and re-raises.

``expected`` (the bytes the plan was computed from, ``None``: no file) makes
``install`` raise :class:`~cfallow.errors.TargetMoved` before writing
anything when the target holds something else: the engine then reads again
and re-plans.

``baseline`` runs ``test()`` once before anything is written, so a
configuration that already fails without cfallow's change is reported as the
admin's, not blamed on cfallow's file.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from cfallow.errors import BackendError, TargetMoved
from cfallow.fs import write_atomic

Hook = Callable[[], None]
MAX_BYTES = 1 << 20


class _Unknown:
    """The type of :data:`ANY`."""

    def __repr__(self) -> str:
        return "ANY"


#: ``expected=ANY``: whatever the target holds may be replaced (no TargetMoved check).
ANY = _Unknown()
Expected = Union[bytes, None, _Unknown]


@dataclass(frozen=True)
class ManagedFile:
    """One file at ``path`` that cfallow writes whole (``mode`` on each write)."""

    path: Path
    mode: int = 0o644

    @property
    def candidate_path(self) -> Path:
        """Where the candidate is written before it replaces the target."""
        return self.path.with_name(f".{self.path.name}.cfallow-new")

    def read(self) -> bytes | None:
        """The target's bytes, or ``None`` if there is no file (a link or special file: error)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise BackendError(
                    f"{self.path} is not a regular file; cfallow will not replace it"
                )
            data = fh.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise BackendError(f"{self.path} is larger than {MAX_BYTES} bytes; not cfallow's")
        return data

    def expect(self, expected: Expected) -> bytes | None:
        """The target's bytes; :class:`~cfallow.errors.TargetMoved` if they are not ``expected``."""
        now = self.read()
        if not isinstance(expected, _Unknown) and now != expected:
            raise TargetMoved(f"{self.path} changed since it was read")
        return now

    def install(
        self,
        data: bytes | None,
        *,
        expected: Expected = ANY,
        check_candidate: Callable[[Path], None] | None = None,
        test: Hook | None = None,
        activate: Hook | None = None,
        baseline: bool = False,
    ) -> bool:
        """Put ``data`` at the target (``None``: remove the file); False if it already is so.

        ``expected``: the bytes the target must still hold (``None``: no file),
        else :class:`~cfallow.errors.TargetMoved` is raised with nothing written.
        """
        old = self.expect(expected)
        if old == data:
            return False
        if baseline and test is not None:
            as_admins(test)
        if data is not None:
            self._write_candidate(data)
            try:
                if check_candidate is not None:
                    check_candidate(self.candidate_path)
                os.replace(self.candidate_path, self.path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.candidate_path)
        else:
            self._unlink()
        try:
            if test is not None:
                test()
            if activate is not None:
                activate()
        except BaseException:
            self._restore(old)
            raise
        return True

    def _write_candidate(self, data: bytes) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.candidate_path, data, mode=self.mode)
        except OSError as exc:
            raise BackendError(
                f"cannot write {self.candidate_path}: {exc.strerror or exc}"
            ) from None

    def _unlink(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise BackendError(f"cannot remove {self.path}: {exc.strerror or exc}") from None

    def _restore(self, old: bytes | None) -> None:
        if old is None:
            self._unlink()
        else:
            write_atomic(self.path, old, mode=self.mode)


def as_admins(test: Hook) -> None:
    """Run ``test`` before cfallow changes anything: a failure is the admin's configuration."""
    try:
        test()
    except BackendError as exc:
        raise BackendError(
            f"the configuration fails before cfallow changes anything (not cfallow's file): {exc}"
        ) from None
