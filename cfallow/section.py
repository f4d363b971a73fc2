"""A backend's config table, read strictly: typed getters, and an error for every unknown key.

A plugin builds from a :class:`Section` (see docs/plugins.md); :func:`parse_ports`
reads the ``ports`` list every firewall backend shares.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cfallow.errors import ConfigError

_MISSING = object()


def suggest(word: str, known: Iterable[str]) -> str:
    """`` (did you mean ports?)`` for the closest of ``known``, or ``""``."""
    import difflib  # only for a typo's suggestion

    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class Section:
    """Typed, strict access to one config table.

    Every getter marks its key as used; :meth:`finish` raises for any key
    nobody asked for, so a typo is an error instead of a silently ignored line.
    """

    def __init__(self, where: str, data: Mapping[str, Any]) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"[{where}] must be a table")
        self.where = where
        self.data = dict(data)
        self.used: set[str] = set()

    def _get(self, key: str, default: Any, types: tuple[type, ...], what: str) -> Any:
        self.used.add(key)
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            return default
        # bool is an int in Python; never accept it where a number is meant.
        if isinstance(value, bool) and bool not in types:
            raise ConfigError(f"[{self.where}] {key}: expected {what}, got {value!r}")
        if not isinstance(value, types):
            raise ConfigError(f"[{self.where}] {key}: expected {what}, got {value!r}")
        return value

    def get_str(self, key: str, default: str) -> str:
        """A string."""
        return str(self._get(key, default, (str,), "a string"))

    def get_bool(self, key: str, default: bool) -> bool:
        """true or false."""
        return bool(self._get(key, default, (bool,), "true or false"))

    def get_int(self, key: str, default: int, *, minimum: int | None = None) -> int:
        """An integer, optionally at least ``minimum``."""
        value = int(self._get(key, default, (int,), "an integer"))
        if minimum is not None and value < minimum:
            raise ConfigError(f"[{self.where}] {key}: must be at least {minimum}, got {value}")
        return value

    def get_float(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        """A number, at least ``minimum``."""
        value = float(self._get(key, default, (int, float), "a number"))
        if value < minimum:
            raise ConfigError(f"[{self.where}] {key}: must be at least {minimum}, got {value}")
        return value

    def get_choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        """One of ``choices``."""
        value = self.get_str(key, default)
        if value not in choices:
            raise ConfigError(
                f"[{self.where}] {key}: must be one of {', '.join(choices)}, got {value!r}"
            )
        return value

    def get_strings(self, key: str, default: tuple[str, ...] | list[str]) -> list[str]:
        """A list of strings."""
        value = self._get(key, list(default), (list,), "a list of strings")
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"[{self.where}] {key}: expected a list of strings, got {value!r}")
        return list(value)

    def raw(self, key: str, default: Any) -> Any:
        """Any value; the caller validates it."""
        self.used.add(key)
        return self.data.get(key, default)

    def finish(self) -> None:
        """Raise :class:`ConfigError` for keys no getter asked for."""
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(
                f"[{self.where}] unknown key: {unknown[0]}{suggest(unknown[0], self.used)}"
            )


@dataclass(frozen=True)
class PortRange:
    """An inclusive port range (``first == last`` for one port)."""

    first: int
    last: int

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


def parse_ports(
    section: Section, key: str = "ports", default: tuple[int, ...] = (80, 443)
) -> tuple[PortRange, ...]:
    """``ports = [80, 443, "8000-8080"]`` -> sorted, de-duplicated :class:`PortRange` values."""
    value = section.raw(key, list(default))
    if not isinstance(value, list) or not value:
        raise ConfigError(f"[{section.where}] {key}: expected a non-empty list of ports")
    out: set[PortRange] = set()
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool):
            first = last = item
        elif (
            isinstance(item, str)
            and item.count("-") == 1
            and all(p.isdigit() for p in item.split("-"))
        ):
            a, b = item.split("-")
            first, last = int(a), int(b)
        elif isinstance(item, str) and item.isdigit():
            first = last = int(item)
        else:
            raise ConfigError(
                f'[{section.where}] {key}: bad port {item!r} (an integer or "LOW-HIGH")'
            )
        if not (1 <= first <= last <= 65535):
            raise ConfigError(f"[{section.where}] {key}: bad port range {item!r}")
        out.add(PortRange(first, last))
    return tuple(sorted(out, key=lambda p: (p.first, p.last)))
