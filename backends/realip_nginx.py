"""Backend ``nginx``: ``set_real_ip_from`` lines for Cloudflare's ranges (ngx_http_realip_module).

cfallow owns two files, both in Debian's ``conf.d`` (included in the ``http``
block by the stock ``nginx.conf``):

* ``cfallow-realip.conf``: the list, one ``set_real_ip_from CIDR;`` a line,
  rewritten on every change;
* ``cfallow-realip-header.conf``: ``real_ip_header CF-Connecting-IP;`` and
  ``real_ip_recursive on;``, written once when missing and never again
  (``header_file = ""`` if your own config sets the header).

The test is ``nginx -T`` (test and dump): it also proves the list file is
really part of the configuration (a list nginx never reads would be a sync
that reports success while nothing takes effect).
"""

from __future__ import annotations

from collections.abc import Sequence

from cfallow.config import Section
from cfallow.errors import BackendError

from .realip import RealIpBackend

HEADER = (
    "# Written once by cfallow: take the client address from Cloudflare's header, for\n"
    "# requests from the proxies listed in cfallow-realip.conf only. This file is yours:\n"
    "# cfallow never rewrites it (it deletes it on remove only if unchanged).\n"
    "real_ip_header CF-Connecting-IP;\n"
    "real_ip_recursive on;\n"
)


class NginxBackend(RealIpBackend):
    """nginx's trusted proxies (``set_real_ip_from``)."""

    name = "nginx"
    server = "nginx"
    default_path = "/etc/nginx/conf.d/cfallow-realip.conf"
    default_header = "/etc/nginx/conf.d/cfallow-realip-header.conf"

    def configure(self, section: Section) -> None:
        self.nginx = section.get_str("nginx", "nginx")
        #: Extra options before the action, e.g. ``["-p", DIR, "-c", CONF]``.
        self.options = section.get_strings("options", [])

    def program(self) -> str:
        return self.nginx

    def render_body(self, cidrs: Sequence[str]) -> str:
        return "".join(f"set_real_ip_from {c};\n" for c in cidrs)

    def parse_line(self, line: str) -> str | None:
        words = line.split()
        if len(words) == 2 and words[0] == "set_real_ip_from" and words[1].endswith(";"):
            return words[1][:-1]
        return None

    def header_text(self) -> str:
        return HEADER

    def default_test(self) -> list[str]:
        return [self.nginx, *self.options, "-T", "-q"]

    def default_reload(self) -> list[str]:
        return [self.nginx, *self.options, "-s", "reload"]

    def verify(self, output: str) -> None:
        if "# configuration file " not in output or not self.path.exists():
            return  # a custom test command that does not dump, or a removal
        if f"# configuration file {self.path}:" not in output:
            raise BackendError(
                f"nginx does not read {self.path}: add `include {self.path};` "
                "to the http block (Debian's nginx.conf includes conf.d/*.conf)"
            )
