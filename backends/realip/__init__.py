"""Real-IP backends: the list of proxies a web server trusts for the visitor's address.

One module per server (nginx, apache, haproxy, caddy) on
:class:`~cfallow.backends.realip.base.RealIpBackend`, the kit's list-file
cycle (:mod:`cfallow.listfile`).
"""

from .base import ETAG_LINE, RealIpBackend, Reload, Seen, Step, Write, etag_or_none, quote

__all__ = ["ETAG_LINE", "RealIpBackend", "Reload", "Seen", "Step", "Write", "etag_or_none", "quote"]
