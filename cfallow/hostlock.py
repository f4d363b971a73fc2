"""A host-wide lock for firewall changes, held across a backend's read and write.

The state directory's lock serialises runs that share a state directory; two
runs with different ones (a test run beside the timer's, two configs) would
both read a table without cfallow's jump and both insert it. Backends that
change a host-wide target take this lock around their fresh read and write.

The lock is ``/run/cfallow.lock`` (``$CFALLOW_FIREWALL_LOCK`` overrides it, for
tests): opened without following a symlink, a regular file owned by this
user, mode 0600, so no other user can hold it to stall every sync.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from cfallow.errors import BackendError
from cfallow.fs import flock_within

DEFAULT_PATH = Path("/run/cfallow.lock")
ENV = "CFALLOW_FIREWALL_LOCK"
WAIT = 60.0


def default_path() -> Path:
    """``$CFALLOW_FIREWALL_LOCK``, else :data:`DEFAULT_PATH`."""
    return Path(os.environ.get(ENV) or DEFAULT_PATH)


@contextlib.contextmanager
def firewall_lock(path: Path, wait: float = WAIT) -> Iterator[None]:
    """Hold the host-wide firewall lock ``path``, waiting at most ``wait`` seconds."""
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise BackendError(f"cannot open the firewall lock {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise BackendError(
                f"the firewall lock {path} is not a regular file owned by uid {os.geteuid()}"
            )
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)  # e.g. made by a unit's "touch" with the default umask
        if not flock_within(fd, wait, poll=0.02, what=f"the firewall lock {path}"):
            raise BackendError(f"another cfallow run has held {path} for {wait:g} s")
        yield
    finally:
        os.close(fd)
