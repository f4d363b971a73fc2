"""cfallow's own record of the live ignore entries it added, in the state directory.

The drop-in says what cfallow *wants* in each jail; the live lists can hold
more when a run stopped (SIGTERM, a failing ``delignoreip``) after the drop-in
was renamed into place and before the stale live entries were deleted. So
before any live change the record is widened to everything that may be live
after it, and only after every live change succeeded is it narrowed to what is
live now. A later ``sync``, ``status`` or ``remove`` then still knows the
entries are cfallow's.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from netaddr import IPNetwork

from cfallow import fs
from cfallow.errors import BackendError, ValidationError
from cfallow.model import Networks

from .client import cidr, strs

NAME = "fail2ban-live.json"
MAX_BYTES = 1 << 20

Record = dict[str, Networks]


def path_in(state_dir: Path) -> Path:
    """Where the record lives."""
    return state_dir / NAME


def load(path: Path) -> tuple[Record, str | None]:
    """``(record, problem)``: an absent file is an empty record; a damaged one too, with a note."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, f"cannot read {path}: {exc.strerror or exc}"
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return {}, f"{path} is not a regular file: ignored"
        data = fh.read(MAX_BYTES + 1)
    try:
        if len(data) > MAX_BYTES:
            raise ValueError("too big")
        doc = json.loads(data)
        jails = doc["jails"]
        if not isinstance(jails, dict):
            raise ValueError("jails is not an object")
        record: Record = {}
        for jail, cidrs in jails.items():
            if not isinstance(jail, str) or not isinstance(cidrs, list):
                raise ValueError("bad entry")
            record[jail] = frozenset(cidr(c) for c in cidrs)
        return record, None
    except (ValueError, KeyError, TypeError, ValidationError, RecursionError) as exc:
        return {}, f"ignoring unreadable {path} ({type(exc).__name__})"


def save(path: Path, record: Mapping[str, Networks]) -> None:
    """Write ``record`` atomically (mode 0600); an empty record removes the file."""
    kept = {j: list(strs(n)) for j, n in sorted(record.items()) if n}
    try:
        if not kept:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        text = json.dumps({"version": 1, "jails": kept}, indent=1) + "\n"
        fs.write_atomic(path, text, mode=0o600)
    except OSError as exc:
        raise BackendError(
            f"cannot record live fail2ban entries in {path}: {exc.strerror or exc}"
        ) from None


def merged(record: Mapping[str, Networks], more: Mapping[str, Networks]) -> Record:
    """``record`` widened by ``more`` (per jail)."""
    out: dict[str, frozenset[IPNetwork]] = dict(record)
    for jail, nets in more.items():
        out[jail] = out.get(jail, frozenset()) | nets
    return out
