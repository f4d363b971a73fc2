"""Real-IP backends: the list of proxies a web server trusts for the visitor's address.

One module per server (nginx, apache, haproxy, caddy) on the shared cycle in
:mod:`cfallow.backends.realip.base`.
"""

from .base import RealIpBackend

__all__ = ["RealIpBackend"]
