"""``notify_url``: one JSON POST per run that changed something or failed.

Bounded in time (``notify_timeout``, default 5 s, for the whole request) and
never failing the run: a notification that cannot be delivered is a warning.
Standard library only (no ``requests`` import on a run that has nothing to say).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from typing import Any

from cfallow.errors import EXIT_OK
from cfallow.model import as_strings
from cfallow.report import Fetch, Report

log = logging.getLogger("cfallow")


def after_run(url: str, timeout: float, report: Report, code: int) -> bool | None:
    """Notify when the run changed something, failed, or saw Cloudflare's list change;
    ``None`` when there was nothing to say, else whether it was delivered.

    The body: the ``--json`` document with the host, the exit code, the fetch's
    error and Cloudflare's change (``report.fetch``: a ``sync``'s)."""
    fetch = report.fetch or Fetch()
    news = bool(fetch.added or fetch.removed)
    if not (report.changed or code != EXIT_OK or news):
        return None
    body = {
        "host": socket.gethostname(),
        "exit_code": code,
        **report.to_json(),
        "fetch_error": fetch.held,
        "cloudflare_change": {"add": as_strings(fetch.added), "remove": as_strings(fetch.removed)},
    }
    return send(url, body, timeout)


def _loopback(url: str) -> bool:
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def send(url: str, body: dict[str, Any], timeout: float) -> bool:
    """POST ``body`` as JSON, at most ``timeout`` s in all; ``False`` (and a warning) on
    any failure. Redirects are not followed.

    The fetch's proxy policy: a loopback URL never goes through the environment's
    proxy (``http_proxy`` would carry the hook's URL and its secret off the host in
    cleartext); any other host gets the environment's proxies, ``no_proxy`` honoured.
    """
    import urllib.request

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    data = json.dumps(body, sort_keys=True).encode("utf-8")
    req = urllib.request.Request(  # noqa: S310 - check_url allowed only https and loopback http
        url, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    outcome: list[BaseException | None] = []

    def post() -> None:
        try:
            proxies = urllib.request.ProxyHandler({} if _loopback(url) else None)
            opener = urllib.request.build_opener(proxies, _NoRedirect)
            with opener.open(req, timeout=timeout) as resp:
                resp.read(65536)
            outcome.append(None)
        except Exception as exc:  # a notification must never fail the run
            outcome.append(exc)

    worker = threading.Thread(target=post, name="cfallow-notify", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        log.warning("notify_url: not delivered (no answer within %g s)", timeout)
        return False
    if outcome[0] is not None:
        log.warning("notify_url: not delivered (%s)", outcome[0])
        return False
    return True
