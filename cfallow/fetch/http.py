"""Bounded HTTPS GET: total deadline, size cap, checked redirects, no retry of an answer.

Whatever a server does, one request returns or fails within ``timeout``
seconds in total and never holds more than :data:`MAX_BODY` bytes. An HTTP
answer (a 429, a 5xx) is never asked again in the same run: the next try is
the cadence's (:mod:`cfallow.fetch.cadence`), after the server's ``Retry-After``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.utils import get_environ_proxies
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)
from urllib3.exceptions import HTTPError, LocationParseError
from urllib3.util import parse_url

from cfallow import __version__, progress
from cfallow.errors import ConfigError, FetchError

MAX_BODY = 1 << 20
MAX_REDIRECTS = 5
USER_AGENT = f"cfallow/{__version__} (+allowlist sync)"
log = logging.getLogger("cfallow")


class RetryableError(FetchError):
    """A failure worth another try later: connection error, timeout, 5xx, 429."""

    def __init__(
        self, message: str, retry_after: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class Unanswered(RetryableError):
    """No HTTP answer at all (connection refused or reset, name not resolved): the one
    failure ``attempts`` retries within a run."""


@dataclass(frozen=True)
class Response:
    """A complete, size-checked response."""

    url: str
    status: int
    body: bytes
    content_type: str
    location: str = ""
    retry_after: str = ""  # the Retry-After header, as sent


@dataclass(frozen=True)
class Target:
    """A checked URL: what is sent, and where the HTTP library will connect."""

    url: str  # the prepared URL: exactly what requests sends
    scheme: str
    host: str
    port: int | None
    loopback: bool


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse(url: str, why: str) -> FetchError:
    return FetchError(f"refusing URL {url!r}: {why}")


def check_url(url: str, *, previous: Target | None = None) -> Target:
    """Check one hop; ``previous`` is the hop that redirected here.

    ``https://`` only, except ``http://`` to a loopback address (tests, local
    mirror); never from ``https://`` down to ``http://``. The host is read with
    the parser urllib3 itself connects with (on the URL requests prepares), and
    must agree with :func:`urllib.parse.urlsplit`: a URL the two read
    differently (``http://a:1\\@127.0.0.1/``) is refused, as are backslashes,
    spaces, control or non-ASCII characters and credentials in the URL.
    """
    bad = next((c for c in url if not ("!" <= c <= "~") or c == "\\"), None)
    if bad is not None:
        raise _refuse(url, f"it contains {bad!r}")
    try:
        split = urlsplit(url)
        split_port = split.port
        prepared = requests.Request("GET", url).prepare().url or ""
        lib = parse_url(prepared)
    except (ValueError, requests.RequestException, LocationParseError):
        raise _refuse(url, "cannot parse it") from None
    if "@" in split.netloc or lib.auth is not None:
        raise _refuse(url, "credentials in a URL are not supported")
    host = (lib.host or "").strip("[]").lower()
    scheme = lib.scheme or ""
    if not host or (split.scheme, split.hostname, split_port) != (scheme, host, lib.port):
        raise _refuse(url, "URL parsers disagree on where it points")
    loopback = _is_loopback(host)
    if not (scheme == "https" or (scheme == "http" and loopback)):
        raise _refuse(url, "only https:// (or http:// to a loopback address)")
    if previous is not None and previous.scheme == "https" and scheme != "https":
        raise _refuse(url, f"a redirect from {previous.url} may not leave https://")
    return Target(prepared, scheme, host, lib.port, loopback)


def _ca_bundle() -> str | bool:
    """``verify`` for requests: the environment's CA bundle (as requests reads it) or True."""
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        path = os.environ.get(var)
        if path:
            if not os.path.exists(path):
                raise ConfigError(f"{var}={path}: no such file or directory (a CA bundle)")
            return path
    return True


def _settings(target: Target) -> dict[str, Any]:
    """Proxies and TLS settings for one hop, taken from the environment by hand.

    The session ignores the environment (``trust_env`` off) so that a
    loopback URL never goes through ``HTTP_PROXY``/``ALL_PROXY``: the request
    to a local mirror would otherwise leave the host in cleartext. Other
    hosts get the environment's proxies (``NO_PROXY`` honoured) as requests
    would pick them.
    """
    proxies = {} if target.loopback else get_environ_proxies(target.url)
    verify = _ca_bundle() if target.scheme == "https" else True
    return {"proxies": proxies, "verify": verify}


def _read(session: requests.Session, target: Target, url: str, timeout: float) -> Response:
    resp = session.get(
        target.url,
        timeout=timeout,
        stream=True,
        allow_redirects=False,
        headers={"User-Agent": USER_AGENT, "Accept": "application/json, text/plain"},
        **_settings(target),
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
            resp.headers.get("Retry-After", ""),
        )
    finally:
        resp.close()


def _read_within(
    session: requests.Session,
    target: Target,
    url: str,
    remaining: float,
    slow: Callable[[], None] | None = None,
) -> Response | None:
    """:func:`_read` in a daemon thread; ``None`` if it is not done within ``remaining``.

    A daemon thread, so a reader stuck past the deadline neither delays the
    answer nor the process's exit; its socket times out on its own. ``slow`` is
    called if it is not done after :data:`progress.AFTER` seconds.
    """
    box: list[Response | BaseException] = []

    def work() -> None:
        try:
            box.append(_read(session, target, url, remaining))
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=work, name="cfallow-fetch", daemon=True)
    thread.start()
    if slow is not None and remaining > progress.AFTER:
        thread.join(progress.AFTER)
        if thread.is_alive():
            slow()
        remaining -= progress.AFTER
    thread.join(remaining)
    if not box:
        return None
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _get_once(url: str, timeout: float, shown: progress.Fetch | None = None) -> Response:
    """Follow up to :data:`MAX_REDIRECTS` checked redirects within one deadline."""
    deadline = time.monotonic() + timeout
    session = requests.Session()
    session.trust_env = False  # proxies and CA bundle: see _settings
    target: Target | None = None
    try:
        for _ in range(MAX_REDIRECTS + 1):
            target = check_url(url, previous=target)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                slow = shown.slow if shown is not None else None
                resp = _read_within(session, target, url, remaining, slow)
            except requests.exceptions.SSLError as exc:
                raise FetchError(f"{url}: TLS verification failed: {exc}") from None
            except (requests.RequestException, HTTPError, OSError) as exc:
                # The socket's own timeout is the deadline too: where it hit (connect,
                # headers, body) and whether it beat the join must not change the message.
                if _short(exc) == "timed out":
                    break
                if isinstance(
                    exc, (requests.ConnectionError, requests.Timeout, HTTPError, OSError)
                ):
                    raise Unanswered(f"{url}: {_short(exc)}") from None
                raise FetchError(f"{url}: {_short(exc)}") from None
            if resp is None:
                break
            if resp.status in (301, 302, 303, 307, 308):
                if not resp.location:
                    raise FetchError(f"{url}: HTTP {resp.status} without a Location")
                url = urljoin(url, resp.location)
                continue
            if resp.status == 429 or resp.status >= 500:
                wait = retry_after(resp.retry_after) if resp.status in (429, 503) else None
                after = f" (Retry-After: {wait:.0f} s)" if wait is not None else ""
                raise RetryableError(f"{url}: HTTP {resp.status}{after}", wait, resp.status)
            if resp.status != 200:
                raise FetchError(f"{url}: HTTP {resp.status}")
            return resp
        else:
            raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")
        raise Unanswered(f"{url}: no complete response within {timeout:g} s")
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


def retry_after(value: str, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or ``None``."""
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def get(url: str, *, timeout: float, attempts: int, backoff: float) -> Response:
    """GET; with ``attempts`` > 1, a failure without any HTTP answer is tried again
    (exponential backoff with jitter). An answer (429, 5xx) is never asked again here."""
    shown = progress.Fetch(url, timeout=timeout, attempts=attempts, backoff=backoff)

    def once() -> Response:
        shown.begin(shown.attempt + 1)
        return _get_once(url, timeout, shown)

    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_random_exponential(multiplier=backoff, max=max(backoff * 16, 0.001)),
        retry=retry_if_exception_type(Unanswered),
        reraise=True,
        before_sleep=lambda rs: shown.retry(
            rs.outcome.exception() if rs.outcome else None,
            rs.next_action.sleep if rs.next_action else 0.0,
        ),
    )
    try:
        return retrying(once)
    except RetryError as exc:  # pragma: no cover - reraise=True makes this unreachable
        raise FetchError(f"{url}: gave up after {attempts} attempts") from exc
