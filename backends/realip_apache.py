"""Backend ``apache``: a ``RemoteIPTrustedProxyList`` file for Cloudflare's ranges (mod_remoteip).

cfallow owns two files:

* ``/etc/apache2/cfallow-realip.list``: one CIDR a line (comments allowed by
  mod_remoteip), rewritten on every change;
* ``/etc/apache2/conf-enabled/cfallow-realip.conf``: ``RemoteIPHeader
  CF-Connecting-IP`` and ``RemoteIPTrustedProxyList`` naming the list, written
  once when missing and never again (``header_file = ""`` if your own config
  has both lines). It needs ``a2enmod remoteip``: without the module Apache
  rejects the file, and cfallow takes it back and says so.

The test is ``apache2ctl -t -D DUMP_INCLUDES``: Apache opens and parses the
list file there, and the list of included files shows whether one of them
names the list (a list Apache never reads is an error, not a silent
success). The reload is ``apache2ctl graceful``.
"""

from __future__ import annotations

import re
from pathlib import Path

from cfallow.config import Section
from cfallow.errors import BackendError

from .realip import RealIpBackend

_INCLUDED = re.compile(r"^\s+\([^)]*\)\s+(/.+?)\s*$")


def _text(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(1 << 20)
    except OSError:
        return ""


class ApacheBackend(RealIpBackend):
    """Apache's trusted proxies (``RemoteIPTrustedProxyList``)."""

    name = "apache"
    server = "Apache"
    default_path = "/etc/apache2/cfallow-realip.list"
    default_header = "/etc/apache2/conf-enabled/cfallow-realip.conf"

    def configure(self, section: Section) -> None:
        self.apachectl = section.get_str("apachectl", "apache2ctl")

    def header_text(self) -> str:
        if any(c.isspace() or c == '"' for c in str(self.path)):
            raise BackendError(f"[backends.apache] path: no spaces or quotes please: {self.path}")
        return (
            "# Written once by cfallow: take the client address from Cloudflare's header,\n"
            "# for requests from the proxies in the list cfallow keeps. This file is yours:\n"
            "# cfallow never rewrites it (it deletes it on remove only if unchanged).\n"
            "RemoteIPHeader CF-Connecting-IP\n"
            f"RemoteIPTrustedProxyList {self.path}\n"
        )

    def default_test(self) -> list[str]:
        return [self.apachectl, "-t", "-D", "DUMP_INCLUDES"]

    def verify(self, output: str) -> None:
        if "Included configuration files:" not in output or not self.path.exists():
            return  # a custom test command that does not list them, or a removal
        used = re.compile(
            rf"^\s*RemoteIPTrustedProxyList\s+\"?{re.escape(str(self.path))}\"?\s*$", re.M
        )
        for line in output.splitlines():
            found = _INCLUDED.match(line)
            if found and used.search(_text(Path(found.group(1)))):
                return
        raise BackendError(
            f"Apache does not read {self.path}: no `RemoteIPTrustedProxyList {self.path}` "
            "in its configuration (and a2enmod remoteip)"
        )

    def default_reload(self) -> list[str]:
        return [self.apachectl, "graceful"]
