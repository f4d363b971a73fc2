"""The installed entry points of one group, read the way ``importlib.metadata`` finds them.

Every run loads its backends through the ``cfallow.backends`` entry-point
group. ``importlib.metadata`` would cost a timer run more than the rest of its
imports together (email, zipfile, csv); the lookup itself is small: every
``*.dist-info`` / ``*.egg-info`` directory on ``sys.path``, in path order, the
first distribution of a (normalised) name winning, each one's
``entry_points.txt`` read as an INI file. That is what this module does, with
the same precedence as ``importlib.metadata.entry_points(group=...)``.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import NamedTuple

__all__ = ["EntryPoint", "entry_points"]

_INFO = (".dist-info", ".egg-info")


class EntryPoint(NamedTuple):
    """``name = value`` in ``group``, from the distribution ``dist``."""

    name: str
    value: str
    group: str
    dist: str

    def load(self) -> object:
        """Import ``module`` of ``module:attr [extras]`` and return ``attr``."""
        module, _, attr = self.value.partition("[")[0].strip().partition(":")
        obj: object = importlib.import_module(module.strip())
        for part in filter(None, attr.strip().split(".")):
            obj = getattr(obj, part)
        return obj


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _infos(paths: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(distribution name, metadata directory), the first of each name on the path."""
    seen: set[str] = set()
    for base in paths:
        try:
            children = os.listdir(base or ".")
        except OSError:  # a zip on sys.path, a missing directory
            continue
        for child in children:
            if not child.lower().endswith(_INFO):
                continue
            stem = child.rpartition(".")[0]
            name = stem.partition("-")[0]
            key = _normalise(name)
            if key in seen:
                continue
            seen.add(key)
            yield name, os.path.join(base or ".", child)


def parse(text: str, group: str, dist: str) -> list[EntryPoint]:
    """The entries of ``[group]`` in the text of an ``entry_points.txt``."""
    found: list[EntryPoint] = []
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == group and "=" in line:
            name, _, value = line.partition("=")
            found.append(EntryPoint(name.strip(), value.strip(), group, dist))
    return found


def entry_points(group: str, paths: Iterable[str] | None = None) -> list[EntryPoint]:
    """Every entry point of ``group`` installed on ``paths`` (default ``sys.path``)."""
    found: list[EntryPoint] = []
    key = group.encode("utf-8")
    for dist, where in _infos(sys.path if paths is None else paths):
        try:
            with open(os.path.join(where, "entry_points.txt"), "rb") as fh:
                data = fh.read()
        except OSError:  # no entry points, or an egg-info that is a file
            continue
        if key in data:  # only a file that names the group can hold it: decode that one
            found += parse(data.decode("utf-8"), group, dist)
    return found
