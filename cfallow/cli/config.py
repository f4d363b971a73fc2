"""Configuration: TOML file, defaults, and a strict reader for backend sections.

An unknown key anywhere is a :class:`ConfigError` (exit 2) naming the key.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfallow import trust
from cfallow.errors import ConfigError
from cfallow.section import PortRange, Section, parse_ports, suggest

# Section, PortRange and parse_ports live in the kit (cfallow.section); named
# here too for plugins that import them from 0.1's cfallow.config.
__all__ = [
    "API_URL",
    "DEFAULT_CONFIG",
    "DEFAULT_STATE_DIR",
    "TEXT_URLS",
    "Config",
    "PortRange",
    "Section",
    "SourceConfig",
    "check_notify_url",
    "in_file",
    "load",
    "parse",
    "parse_ports",
    "suggest",
]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

DEFAULT_CONFIG = Path("/etc/cfallow/config.toml")
DEFAULT_STATE_DIR = Path("/var/lib/cfallow")
API_URL = "https://api.cloudflare.com/client/v4/ips"
TEXT_URLS = ("https://www.cloudflare.com/ips-v4", "https://www.cloudflare.com/ips-v6")


def in_file(path: Path | None, exc: ConfigError) -> ConfigError:
    """``exc`` with the config file's name in front (once), so every config error names it."""
    text = str(exc)
    if path is None or text.startswith(f"{path}:"):
        return exc
    return ConfigError(f"{path}: {text}")


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
