"""Old module paths that moved, kept importable for one release (deprecated).

A plugin written against 0.1 may import, say, ``cfallow.config`` for
``Section`` or ``cfallow.backends.realip_nginx``. Those imports keep working,
with a :class:`DeprecationWarning` naming the new path, until the next release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Mapping, Sequence
from types import ModuleType


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} is deprecated: import {self.new} instead",
            DeprecationWarning,
            stacklevel=4,
        )
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """The module is the new one, already executed."""


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds an old module name and hands back the module at its new name."""

    def __init__(self, moved: Mapping[str, str]) -> None:
        self.moved = dict(moved)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = self.moved.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install(moved: Mapping[str, str]) -> None:
    """Make every old name in ``moved`` import its new module (once per process)."""
    sys.meta_path.append(MovedFinder(moved))
