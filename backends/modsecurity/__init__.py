"""Backend ``modsecurity``: the list for ModSecurity's ``@ipMatchFromFile`` (Apache or nginx)."""

from __future__ import annotations

from .apache import ModsecApache
from .backend import ModsecurityBackend
from .nginx import ModsecNginx

__all__ = ["ModsecApache", "ModsecNginx", "ModsecurityBackend"]
