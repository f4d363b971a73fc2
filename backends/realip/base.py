"""What makes a list file a real-IP list: the proxies a web server trusts for the visitor's address.

Each server (nginx, Apache, HAProxy, Caddy) is its own backend (its own
entry point and config section) built on :class:`RealIpBackend`, the kit's
:class:`cfallow.listfile.ListFileBackend` (the whole cycle: deterministic
render, candidate, the server's configuration test, confirmed reload, roll
back, the pending-reload record) with the real-IP list's own comment. A
server module only says how a list looks in its syntax, how its whole
configuration is tested and how it reloads; its header file (nginx's
``real_ip_header``, Apache's ``RemoteIPHeader``) names the header the server
takes the visitor's address from.
"""

from __future__ import annotations

from cfallow.listfile import (
    ETAG_LINE,
    ListFileBackend,
    Reload,
    Seen,
    Step,
    Write,
    etag_or_none,
    quote,
)

__all__ = [
    "ETAG_LINE",
    "RealIpBackend",
    "Reload",
    "Seen",
    "Step",
    "Write",
    "etag_or_none",
    "quote",
]


class RealIpBackend(ListFileBackend):
    """A server's trust list in one file cfallow owns; subclasses fill in the server's syntax."""

    def head(self) -> str:
        return (
            f"# Managed by cfallow: Cloudflare's ranges, trusted by {self.server} to pass the\n"
            "# client address. cfallow rewrites this file (edits are lost); remove it with\n"
            f"# cfallow remove --backend {self.name}\n"
        )
