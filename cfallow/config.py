"""Configuration: TOML file, defaults, and a strict reader for backend sections.

An unknown key anywhere is a :class:`ConfigError` (exit 2) naming the key.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfallow import trust
from cfallow.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

DEFAULT_CONFIG = Path("/etc/cfallow/config.toml")
DEFAULT_STATE_DIR = Path("/var/lib/cfallow")
API_URL = "https://api.cloudflare.com/client/v4/ips"
TEXT_URLS = ("https://www.cloudflare.com/ips-v4", "https://www.cloudflare.com/ips-v6")
_MISSING = object()


def suggest(word: str, known: Iterable[str]) -> str:
    """`` (did you mean ports?)`` for the closest of ``known``, or ``""``."""
    import difflib  # only for a typo's suggestion

    close = difflib.get_close_matches(word, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def in_file(path: Path | None, exc: ConfigError) -> ConfigError:
    """``exc`` with the config file's name in front (once), so every config error names it."""
    text = str(exc)
    if path is None or text.startswith(f"{path}:"):
        return exc
    return ConfigError(f"{path}: {text}")


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


@dataclass(frozen=True)
class SourceConfig:
    """``[source]``."""

    api_url: str = API_URL
    text_urls: tuple[str, ...] = TEXT_URLS
    china_network: bool = False
    timeout: float = 10.0
    attempts: int = 1  # > 1 retries only a failure without an HTTP answer, within the run
    max_shrink: float = 0.5
    # 10x: Cloudflare's largest real step (2014, +104.16.0.0/12) was 4.9x its IPv4 coverage.
    max_growth: float = 10.0
    min_new_prefix_v4: int = 12
    min_new_prefix_v6: int = 29
    # The most a list may cover, whatever was accepted: one /8 (11x Cloudflare's IPv4
    # today), one /24 (18x its IPv6).
    ceiling_prefix_v4: int = 8
    ceiling_prefix_v6: int = 24
    backoff: float = 0.25  # first retry wait in seconds; doubles, with jitter
    refresh: float = 6 * 3600.0  # a scheduled run fetches when the known list is this old
    retry: float = 300.0  # seconds between attempts after a failed fetch (config: minutes)


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    path: Path | None
    source: SourceConfig = field(default_factory=SourceConfig)
    backends: dict[str, dict[str, Any]] = field(default_factory=lambda: {"iptables": {}})
    metrics_file: Path | None = None
    notify_url: str | None = None
    notify_timeout: float = 5.0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def check_notify_url(url: str) -> str:
    """``https://`` only, or ``http://`` to a loopback address; else :class:`ConfigError`."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http":
        try:
            if host == "localhost" or ipaddress.ip_address(host).is_loopback:
                return url
        except ValueError:
            pass
    raise ConfigError(f"notify_url: only https:// (or http:// to a loopback address), got {url!r}")


def _duration(s: Section, key: str, default: float) -> float:
    """Seconds, or a string ``"90s"``, ``"30m"``, ``"6h"``, ``"1d"``; at least 60 s."""
    value = s.raw(key, default)
    if isinstance(value, str) and value[:-1].isdigit() and value[-1:] in _UNITS:
        value = int(value[:-1]) * _UNITS[value[-1]]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 60:
        raise ConfigError(
            f'[{s.where}] {key}: expected seconds (at least 60) or "30m", "6h", "1d"; got {value!r}'
        )
    return float(value)


def _prefix(s: Section, key: str, default: int, bits: int) -> int:
    value = s.get_int(key, default, minimum=0)
    if value > bits:
        raise ConfigError(f"[source] {key}: must be between 0 and {bits}, got {value}")
    return value


def _source(data: Mapping[str, Any]) -> SourceConfig:
    s = Section("source", data)
    d = SourceConfig()
    text_urls = s.get_strings("text_urls", list(d.text_urls))
    if len(text_urls) != 2:
        raise ConfigError("[source] text_urls: expected two URLs (IPv4 list, IPv6 list)")
    max_shrink = s.get_float("max_shrink", d.max_shrink)
    if max_shrink > 1:
        raise ConfigError(f"[source] max_shrink: must be between 0 and 1, got {max_shrink}")
    cfg = SourceConfig(
        api_url=s.get_str("api_url", d.api_url),
        text_urls=tuple(text_urls),
        china_network=s.get_bool("china_network", d.china_network),
        timeout=s.get_float("timeout", d.timeout, minimum=0.1),
        attempts=s.get_int("attempts", d.attempts, minimum=1),
        max_shrink=max_shrink,
        max_growth=s.get_float("max_growth", d.max_growth),
        min_new_prefix_v4=_prefix(s, "min_new_prefix_v4", d.min_new_prefix_v4, 32),
        min_new_prefix_v6=_prefix(s, "min_new_prefix_v6", d.min_new_prefix_v6, 128),
        ceiling_prefix_v4=_prefix(s, "ceiling_prefix_v4", d.ceiling_prefix_v4, 32),
        ceiling_prefix_v6=_prefix(s, "ceiling_prefix_v6", d.ceiling_prefix_v6, 128),
        backoff=s.get_float("backoff", d.backoff),
        refresh=_duration(s, "refresh", d.refresh),
        retry=s.get_float("retry", d.retry / 60, minimum=0.1) * 60,
    )
    s.finish()
    return cfg


def parse(data: Mapping[str, Any], path: Path | None) -> Config:
    """Build a :class:`Config` from parsed TOML."""
    top = Section("top level", data)
    source = _source(top.raw("source", {}))
    raw_backends = top.raw("backends", {})
    if not isinstance(raw_backends, Mapping):
        raise ConfigError("[backends] must be a table of backend sections")
    backends: dict[str, dict[str, Any]] = {}
    for name, section in raw_backends.items():
        if not isinstance(section, Mapping):
            raise ConfigError(f"[backends.{name}] must be a table")
        enabled = section.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"[backends.{name}] enabled: expected true or false")
        if enabled:
            backends[name] = {k: v for k, v in section.items() if k != "enabled"}
    metrics = top.raw("metrics_file", None)
    if metrics is not None and not isinstance(metrics, str):
        raise ConfigError("metrics_file: expected a path string")
    notify = top.raw("notify_url", None)
    if notify is not None:
        if not isinstance(notify, str):
            raise ConfigError("notify_url: expected a URL string")
        check_notify_url(notify)
    notify_timeout = top.get_float("notify_timeout", 5.0, minimum=0.1)
    top.finish()
    return Config(
        path, source, backends, Path(metrics) if metrics else None, notify, notify_timeout
    )


def load(path: Path | None) -> Config:
    """Load ``path``; ``None`` means the default file, or built-in defaults if it is absent.

    As root, the file, the commands it names and where it writes must be
    root's alone to change (:mod:`cfallow.trust`).
    """
    explicit = path is not None
    path = path or DEFAULT_CONFIG
    try:
        with open(path, "rb") as fh:
            trust.check_open_file(fh.fileno(), path, "config file")
            data = tomllib.load(fh)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file not found: {path}") from None
        return Config(None)
    except PermissionError:
        raise ConfigError(f"config file not readable: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        cfg = parse(data, path)
        if cfg.metrics_file is not None:
            trust.check_output_dir(cfg.metrics_file.parent, "metrics_file directory")
    except ConfigError as exc:
        raise in_file(path, exc) from None
    return cfg
