"""Backend ``apache``: a ``RemoteIPTrustedProxyList`` file for Cloudflare's ranges (mod_remoteip).

cfallow owns two files:

* ``/etc/apache2/cfallow-realip.list``: one CIDR a line (comments allowed by
  mod_remoteip), rewritten on every change;
* ``/etc/apache2/conf-enabled/cfallow-realip.conf``: ``RemoteIPHeader
  CF-Connecting-IP`` and ``RemoteIPTrustedProxyList`` naming the list, written
  once when missing and never again (``header_file = ""`` if your own config
  has both lines). It needs ``a2enmod remoteip``: without the module Apache
  rejects the file, and cfallow takes it back and says so.

The test is ``apache2ctl -t -D DUMP_INCLUDES -D DUMP_RUN_CFG``: Apache opens
and parses the list file there, the list of included files shows whether one
of them names the list (a list Apache never reads is an error, not a silent
success), and the run-time settings name the main error log and the pid
file. The reload is ``apache2ctl graceful``, confirmed by the parent's
``AH00489 ... resuming normal operations`` notice in that log
(:mod:`.realip_proc`): ``graceful`` exits 0 even when the parent then exits
on a configuration it cannot bind, so without it a sync would report success
while the site is down.
"""

from __future__ import annotations

import re
from pathlib import Path

from cfallow.errors import BackendError
from cfallow.model import Plan
from cfallow.section import Section

from . import proc
from .base import RealIpBackend, Step

_INCLUDED = re.compile(r"^\s+\([^)]*\)\s+(/.+?)\s*$")
_ERROR_LOG = re.compile(r'^Main ErrorLog: "(.*)"\s*$', re.M)
_PID_FILE = re.compile(r'^PidFile: "(.*)"\s*$', re.M)
#: What Apache's parent logs once a (graceful) restart has loaded the configuration.
RESUMED = "AH00489"


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
        #: Seconds to wait for the parent's AH00489 notice after the reload.
        self.reload_wait = section.get_float("reload_wait", 10.0, minimum=0.1)
        self._dump = ""

    def executables(self) -> dict[str, str]:
        return {"apachectl": self.apachectl}

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
        return [self.apachectl, "-t", "-D", "DUMP_INCLUDES", "-D", "DUMP_RUN_CFG"]

    def verify(self, output: str) -> None:
        self._dump = output
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

    def activate(self, plan: Plan[Step]) -> None:
        found = _ERROR_LOG.search(self._dump)
        log_file = Path(found.group(1)) if found and found.group(1).startswith("/") else None
        found = _PID_FILE.search(self._dump)
        proc.confirmed_by_log(
            lambda: self.run(self.reload_command, "reload"),
            log_file,
            Path(found.group(1)) if found else None,
            notice=RESUMED,
            server=self.server,
            name=self.name,
            wait=self.reload_wait,
            log=self.ctx.log,
        )
