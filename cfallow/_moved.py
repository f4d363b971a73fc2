"""Old module paths that moved, kept importable for one release (deprecated).

A plugin written against 0.1 may import, say, ``cfallow.config`` for
``Section`` or ``cfallow.backends.realip_nginx``. Those imports keep working,
with a :class:`DeprecationWarning` naming the new path, until the next release.

The finder and its loader follow the import protocol by their methods alone
(``find_spec``; ``create_module`` and ``exec_module``): deriving them from
``importlib.abc`` would import ``importlib.resources`` and ``tempfile`` on every
run, to serve a name that is almost never asked for.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from importlib.machinery import ModuleSpec

TYPE_CHECKING = False  # typing itself is not imported on every run (mypy: true)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from importlib.abc import Loader as _Loader
    from types import ModuleType
else:
    _Loader = object


class _Alias(_Loader):
    """Loader: the module at its new name, with a warning naming that name."""

    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} is deprecated: import {self.new} instead",
            DeprecationWarning,
            stacklevel=4,
        )
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """The module is the new one, already executed."""


class MovedFinder:
    """Finds an old module name and hands back the module at its new name."""

    def __init__(self, moved: Mapping[str, str]) -> None:
        self.moved = dict(moved)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        """A spec for an old name (``None`` for every other name: the next finder's)."""
        new = self.moved.get(fullname)
        if new is None:
            return None
        return ModuleSpec(fullname, _Alias(new))

    def invalidate_caches(self) -> None:
        """Nothing cached (``importlib.invalidate_caches`` calls this on every finder)."""


def install(moved: Mapping[str, str]) -> None:
    """Make every old name in ``moved`` import its new module (once per process)."""
    sys.meta_path.append(MovedFinder(moved))
