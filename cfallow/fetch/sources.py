"""Where the ranges come from: Cloudflare's API, its text lists, the bundled snapshot."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cfallow.cli.config import SourceConfig
from cfallow.errors import FetchError, RangesError, ValidationError
from cfallow.fetch.ranges import Ranges
from cfallow.fetch.validate import check_lists, parse_family, parse_text_list
from cfallow.model import Networks

if TYPE_CHECKING:
    from cfallow.fetch import http

log = logging.getLogger("cfallow")
MAX_PUSHED = 1 << 20  # the same cap as a response (http.MAX_BODY)


def _decode(resp: http.Response) -> str:
    try:
        return resp.body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(f"{resp.url}: body is not UTF-8 text") from None


def parse_api(body: str, url: str, china_network: bool) -> tuple[Networks, Networks, str | None]:
    """Validate an API body: ``success`` true, ``errors`` empty, both lists valid."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        snippet = body.strip()[:40]
        raise ValidationError(f"{url}: not JSON (starts with {snippet!r})") from None
    if not isinstance(doc, dict):
        raise ValidationError(f"{url}: JSON is not an object")
    if doc.get("success") is not True:
        raise ValidationError(f"{url}: success is not true (errors: {doc.get('errors')!r})")
    if doc.get("errors") not in ([], None):
        raise ValidationError(f"{url}: errors reported: {doc.get('errors')!r}")
    result = doc.get("result")
    if not isinstance(result, dict):
        raise ValidationError(f"{url}: no result object")
    ipv4 = parse_family(result.get("ipv4_cidrs"), 4, f"{url} ipv4_cidrs")  # type: ignore[arg-type]
    ipv6 = parse_family(result.get("ipv6_cidrs"), 6, f"{url} ipv6_cidrs")  # type: ignore[arg-type]
    if china_network:
        mixed = result.get("jdcloud_cidrs")
        if not isinstance(mixed, list):
            raise ValidationError(f"{url}: china_network is on but jdcloud_cidrs is missing")
        v4 = [e for e in mixed if isinstance(e, str) and ":" not in e]
        v6 = [e for e in mixed if not (isinstance(e, str) and ":" not in e)]
        ipv4 |= parse_family(v4, 4, f"{url} jdcloud_cidrs")
        ipv6 |= parse_family(v6, 6, f"{url} jdcloud_cidrs")
    check_lists(ipv4, ipv6)
    etag = result.get("etag")
    return ipv4, ipv6, etag if isinstance(etag, str) else None


def _get(url: str, cfg: SourceConfig) -> http.Response:
    from cfallow.fetch import http  # requests only when something is fetched

    return http.get(url, timeout=cfg.timeout, attempts=cfg.attempts, backoff=cfg.backoff)


def fetch_api(cfg: SourceConfig) -> Ranges:
    """The JSON API (``?networks=jdcloud`` when ``china_network``)."""
    url = cfg.api_url
    if cfg.china_network:
        url += ("&" if "?" in url else "?") + "networks=jdcloud"
    resp = _get(url, cfg)
    ipv4, ipv6, etag = parse_api(_decode(resp), url, cfg.china_network)
    return Ranges(ipv4, ipv6, "live", url, etag, time.time())


def fetch_text(cfg: SourceConfig) -> Ranges:
    """The two text lists (IPv4, IPv6); both must validate."""
    v4_url, v6_url = cfg.text_urls
    v4_resp = _get(v4_url, cfg)
    _refuse_html(v4_resp)
    ipv4 = parse_text_list(_decode(v4_resp), 4, v4_url)
    v6_resp = _get(v6_url, cfg)
    _refuse_html(v6_resp)
    ipv6 = parse_text_list(_decode(v6_resp), 6, v6_url)
    check_lists(ipv4, ipv6)
    return Ranges(ipv4, ipv6, "live", v4_url, None, time.time())


def _refuse_html(resp: http.Response) -> None:
    if "html" in resp.content_type.lower() or resp.body.lstrip()[:1] == b"<":
        raise ValidationError(f"{resp.url}: got an HTML page, not a list")


def fetch_live(cfg: SourceConfig) -> Ranges:
    """The API, else the text lists (one request to each at most; none to the text
    lists after the API's 429). Raises :class:`RangesError` naming both failures,
    with the longer ``Retry-After``."""
    try:
        return fetch_api(cfg)
    except RangesError as api_exc:
        if isinstance(api_exc, FetchError) and api_exc.status == 429:
            raise  # Cloudflare asks this host to slow down: not its other URLs either
        log.debug("API source failed: %s; trying the text lists", api_exc)
        try:
            return fetch_text(cfg)
        except RangesError as text_exc:
            err = type(text_exc) if type(text_exc) is type(api_exc) else FetchError
            both = err(f"{api_exc}; text lists: {text_exc}")
            waits = [e.retry_after for e in (api_exc, text_exc) if e.retry_after is not None]
            both.retry_after = max(waits) if waits else None
            raise both from text_exc


def pushed(path: Path) -> Ranges:
    """A list fetched and validated elsewhere (``cfallow ranges --json`` on an Ansible
    controller): the same checks as the state file's, its URL, etag and date kept."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_PUSHED + 1)
    except OSError as exc:
        raise FetchError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_PUSHED:
        raise ValidationError(f"{path}: over the 1 MiB limit")
    where = str(path)
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise ValidationError(f"{where}: not JSON") from None
    if isinstance(doc, dict) and isinstance(doc.get("source"), dict):
        doc = doc["source"]
    if not isinstance(doc, dict):
        raise ValidationError(f"{where}: not a list object (ipv4, ipv6, etag, fetched_at)")
    ipv4 = parse_family(doc.get("ipv4"), 4, f"{where} ipv4")  # type: ignore[arg-type]
    ipv6 = parse_family(doc.get("ipv6"), 6, f"{where} ipv6")  # type: ignore[arg-type]
    check_lists(ipv4, ipv6)
    url, etag, at = doc.get("url"), doc.get("etag"), doc.get("fetched_at")
    return Ranges(
        ipv4,
        ipv6,
        "live",
        url if isinstance(url, str) else None,
        etag if isinstance(etag, str) else None,
        float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else None,
    )


def bundled() -> Ranges:
    """The snapshot shipped in the package (with its date)."""
    from importlib import resources  # zipfile, tempfile: only on a first run

    raw: dict[str, Any] = json.loads(
        resources.files("cfallow").joinpath("data/snapshot.json").read_text("utf-8")
    )
    ipv4, ipv6, etag = parse_api(json.dumps(raw["response"]), "bundled snapshot", False)
    return Ranges(ipv4, ipv6, "bundled", None, etag, float(raw["taken_at"]))
