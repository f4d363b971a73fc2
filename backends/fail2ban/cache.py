"""The admin's parsed configuration, remembered while the tree does not change.

Reading the admin's base lists means copying the whole tree without cfallow's
drop-in and running ``fail2ban-client -d`` on the copy (hundreds of files and
a Python start). A run that finds the tree exactly as last time (every file's
path, type, size, inode, mtime and ctime; for a link, the same of the file it
points to; the client program itself) reuses the last answer from
``STATE_DIR/fail2ban-admin.json``; any change to any file (cfallow's own
drop-in aside) reads the tree again. A link to a directory, or a tree of more
than :data:`MAX_ENTRIES` entries, is always read again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

from cfallow import fs

from .client import ConfigDump

NAME = "fail2ban-admin.json"
MAX_ENTRIES = 20_000
MAX_BYTES = 1 << 20


def fingerprint(config_dir: Path, dropin: str, client: str) -> str | None:
    """A digest of the tree's metadata, or None if it cannot be had cheaply."""
    digest = hashlib.sha256()
    program = shutil.which(client) or client
    try:
        st = os.stat(program)
        digest.update(repr((program, st.st_size, st.st_mtime_ns, st.st_ino)).encode())
        count = _walk(config_dir, "", dropin, digest)
    except (OSError, RecursionError, _Uncacheable):
        return None
    return digest.hexdigest() if count else None


class _Uncacheable(Exception):
    pass


def _walk(top: Path, rel: str, dropin: str, digest: hashlib._Hash, count: int = 0) -> int:
    with os.scandir(top / rel if rel else top) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        name = f"{rel}/{entry.name}" if rel else entry.name
        if rel == "jail.d" and (entry.name == dropin or entry.name.startswith(f".{dropin}.")):
            continue
        st = entry.stat(follow_symlinks=False)
        link: tuple[object, ...] = ()
        if stat.S_ISLNK(st.st_mode):
            link = (os.readlink(entry.path), *_target(entry.path))
        if stat.S_ISDIR(st.st_mode):
            # Its times change when cfallow renames its drop-in; its entries are walked anyway.
            fields: tuple[object, ...] = (name, st.st_mode, st.st_ino)
        else:
            fields = (name, st.st_mode, st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, link)
        digest.update(repr(fields).encode())
        count += 1
        if count > MAX_ENTRIES:
            raise _Uncacheable
        if stat.S_ISDIR(st.st_mode):
            count = _walk(top, name, dropin, digest, count)
    return count


def _target(path: str) -> tuple[object, ...]:
    """What a link points at; a linked directory is not walked, so it disables the cache."""
    try:
        st = os.stat(path)
    except OSError:
        return ("dangling",)
    if stat.S_ISDIR(st.st_mode):
        raise _Uncacheable
    return (st.st_mode, st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def load(path: Path, key: str) -> ConfigDump | None:
    """The remembered dump for ``key``, or None (absent, other key, unreadable)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            doc = json.loads(fh.read(MAX_BYTES + 1))
        if doc.get("key") != key:
            return None
        ignoreip, defined = doc["ignoreip"], doc["defined"]
        ok = isinstance(ignoreip, dict) and isinstance(defined, list)
        ok = ok and all(isinstance(v, list) for v in ignoreip.values())
        ok = ok and all(isinstance(e, str) for v in ignoreip.values() for e in v)
        if not ok or not all(isinstance(j, str) for j in defined):
            return None
        return ConfigDump(ignoreip={j: list(v) for j, v in ignoreip.items()}, defined=set(defined))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def save(path: Path, key: str, dump: ConfigDump) -> None:
    """Remember ``dump`` for ``key`` (best effort: a read-only state dir only costs time)."""
    doc = {"key": key, "ignoreip": dump.ignoreip, "defined": sorted(dump.defined)}
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fs.write_atomic(path, json.dumps(doc) + "\n", mode=0o600)
    except OSError:
        pass
