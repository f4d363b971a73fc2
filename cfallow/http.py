"""Bounded HTTPS GET: total deadline, size cap, checked redirects, bounded retries.

Whatever a server does, one request returns or fails within ``timeout``
seconds in total and never holds more than :data:`MAX_BODY` bytes.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from cfallow import __version__
from cfallow.errors import FetchError

MAX_BODY = 1 << 20
MAX_REDIRECTS = 5
USER_AGENT = f"cfallow/{__version__} (+allowlist sync)"
log = logging.getLogger("cfallow")


class RetryableError(FetchError):
    """A failure worth another try: connection error, timeout, 5xx, 429."""


@dataclass(frozen=True)
class Response:
    """A complete, size-checked response."""

    url: str
    status: int
    body: bytes
    content_type: str
    location: str = ""


def check_url(url: str) -> None:
    """``https://`` only, except ``http://`` to a loopback address (tests, local mirror)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        try:
            if ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            if host == "localhost":
                return
    raise FetchError(f"refusing URL {url!r}: only https:// (or http:// to a loopback address)")


def _read(session: requests.Session, url: str, timeout: float) -> Response:
    resp = session.get(
        url,
        timeout=timeout,
        stream=True,
        allow_redirects=False,
        verify=True,
        headers={"User-Agent": USER_AGENT, "Accept": "application/json, text/plain"},
    )
    try:
        length = resp.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > MAX_BODY:
            raise FetchError(f"{url}: response of {int(length)} bytes is over the 1 MiB limit")
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.raw.stream(65536, decode_content=True):
            size += len(chunk)
            if size > MAX_BODY:
                raise FetchError(f"{url}: response body over the 1 MiB limit")
            chunks.append(chunk)
        return Response(
            url,
            resp.status_code,
            b"".join(chunks),
            resp.headers.get("Content-Type", ""),
            resp.headers.get("Location", ""),
        )
    finally:
        resp.close()


def _read_within(session: requests.Session, url: str, remaining: float) -> Response | None:
    """:func:`_read` in a daemon thread; ``None`` if it is not done within ``remaining``.

    A daemon thread, so a reader stuck past the deadline neither delays the
    answer nor the process's exit; its socket times out on its own.
    """
    box: list[Response | BaseException] = []

    def target() -> None:
        try:
            box.append(_read(session, url, remaining))
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=target, name="cfallow-fetch", daemon=True)
    thread.start()
    thread.join(remaining)
    if not box:
        return None
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _get_once(url: str, timeout: float) -> Response:
    """Follow up to :data:`MAX_REDIRECTS` checked redirects within one deadline."""
    deadline = time.monotonic() + timeout
    session = requests.Session()
    try:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                resp = _read_within(session, url, remaining)
            except requests.exceptions.SSLError as exc:
                raise FetchError(f"{url}: TLS verification failed: {exc}") from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise RetryableError(f"{url}: {_short(exc)}") from None
            except requests.RequestException as exc:
                raise FetchError(f"{url}: {_short(exc)}") from None
            if resp is None:
                break
            if resp.status in (301, 302, 303, 307, 308):
                if not resp.location:
                    raise FetchError(f"{url}: HTTP {resp.status} without a Location")
                url = urljoin(url, resp.location)
                continue
            if resp.status == 429 or resp.status >= 500:
                raise RetryableError(f"{url}: HTTP {resp.status}")
            if resp.status != 200:
                raise FetchError(f"{url}: HTTP {resp.status}")
            return resp
        else:
            raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")
        raise RetryableError(f"{url}: no complete response within {timeout:g} s")
    finally:
        session.close()


def _short(exc: BaseException) -> str:
    """The innermost cause in a few words (requests nests urllib3's reason deeply)."""
    inner: BaseException = exc
    for _ in range(6):
        nxt = getattr(inner, "reason", None)
        if (
            not isinstance(nxt, BaseException)
            and inner.args
            and isinstance(inner.args[0], BaseException)
        ):
            nxt = inner.args[0]
        if not isinstance(nxt, BaseException):
            break
        inner = nxt
    name = type(inner).__name__
    if name == "NameResolutionError":
        return "cannot resolve the host name"
    text = str(inner)
    if "Connection refused" in text:
        return "connection refused"
    if isinstance(inner, (TimeoutError, requests.Timeout)) or "timed out" in text:
        return "timed out"
    text = text.split(": ", 1)[-1] if text.startswith("<") else text
    return f"{name}: {text[:120]}"


def get(url: str, *, timeout: float, attempts: int, backoff: float) -> Response:
    """GET with bounded retries (exponential backoff with jitter) on retryable failures only."""
    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=backoff, max=max(backoff * 16, 0.001)),
        retry=retry_if_exception_type(RetryableError),
        reraise=True,
        before_sleep=lambda rs: log.debug(
            "will retry: %s", rs.outcome.exception() if rs.outcome else "?"
        ),
    )
    try:
        return retrying(_get_once, url, timeout)
    except RetryError as exc:  # pragma: no cover - reraise=True makes this unreachable
        raise FetchError(f"{url}: gave up after {attempts} attempts") from exc
