"""The state directory: last-known-good list (atomic writes) and the run lock."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from cfallow.errors import LockTimeout, StateError, ValidationError
from cfallow.fs import flock_within, write_atomic
from cfallow.ranges import Ranges
from cfallow.validate import check_lists, parse_family

log = logging.getLogger("cfallow")
LKG_FILE = "last-known-good.json"
LOCK_FILE = "lock"


class State:
    """Reads and writes ``DIR/last-known-good.json``; ``DIR/lock`` serialises runs."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def load(self) -> Ranges | None:
        """The last-known-good list, or ``None`` (absent, or unreadable: warned)."""
        path = self.dir / LKG_FILE
        try:
            raw = json.loads(path.read_text("utf-8"))
            ipv4 = parse_family(raw["ipv4"], 4, str(path))
            ipv6 = parse_family(raw["ipv6"], 6, str(path))
            check_lists(ipv4, ipv6)
            etag = raw.get("etag")
            fetched = raw.get("fetched_at")
            return Ranges(
                ipv4,
                ipv6,
                "live",
                raw.get("url") if isinstance(raw.get("url"), str) else None,
                etag if isinstance(etag, str) else None,
                float(fetched) if isinstance(fetched, (int, float)) else None,
            )
        except FileNotFoundError:
            return None
        except PermissionError:
            raise StateError(f"cannot read {path}: permission denied") from None
        except (
            ValueError,
            KeyError,
            TypeError,
            RecursionError,
            ValidationError,
            UnicodeDecodeError,
        ) as exc:
            log.warning(
                "ignoring unreadable state file %s (%s); no last-known-good list", path, exc
            )
            return None

    def save(self, ranges: Ranges) -> None:
        """Record a live list as last-known-good (atomically)."""
        doc = ranges.to_json()
        doc.pop("kind")
        try:
            self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            write_atomic(self.dir / LKG_FILE, json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            raise StateError(f"cannot write state in {self.dir}: {exc.strerror or exc}") from None

    @contextlib.contextmanager
    def lock(self, timeout: float) -> Iterator[None]:
        """Hold an exclusive ``flock``; wait at most ``timeout`` s, then :class:`LockTimeout`."""
        try:
            self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateError(f"cannot open lock in {self.dir}: {exc.strerror or exc}") from None
        try:
            if not flock_within(fd, timeout):
                raise LockTimeout(
                    f"another cfallow run holds {self.dir / LOCK_FILE}; gave up after {timeout:g} s"
                )
            yield
        finally:
            os.close(fd)
