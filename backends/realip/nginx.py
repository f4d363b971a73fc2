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
that reports success while nothing takes effect). The reload is confirmed on
the running master (:mod:`.realip_nginx_master`): it must have been started
with the configuration file cfallow tested, and must start new workers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from cfallow.errors import BackendError
from cfallow.model import Plan
from cfallow.section import Section

from . import nginx_master as master
from . import proc
from .base import RealIpBackend, Step

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
        #: Seconds to wait for the master's new workers after the reload.
        self.reload_wait = section.get_float("reload_wait", 10.0, minimum=0.1)
        self._dump = ""

    def executables(self) -> dict[str, str]:
        return {"nginx": self.nginx}

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
        self._dump = output
        if "# configuration file " not in output or not self.path.exists():
            return  # a custom test command that does not dump, or a removal
        if f"# configuration file {self.path}:" not in output:
            raise BackendError(
                f"nginx does not read {self.path}: add `include {self.path};` "
                "to the http block (Debian's nginx.conf includes conf.d/*.conf)"
            )

    # -- the reload, confirmed on the running master ---------------------------------------

    def activate(self, plan: Plan[Step]) -> None:
        pid_file = self._pid_file()
        pid = proc.read_pid(pid_file)
        if pid is not None and proc.alive(pid):
            self._check_master_config(pid)
        proc.confirmed_reload(
            lambda: self.run(self.reload_command, "reload"),
            pid_file,
            server=self.server,
            name=self.name,
            wait=self.reload_wait,
            log=self.ctx.log,
        )

    def _version(self) -> str:
        done = self.ctx.runner.run([self.nginx, *self.options, "-V"], check=False)
        return done.stderr + done.stdout

    def _pid_file(self) -> Path:
        path = master.pid_directive(self._dump, self.options)
        version = ""
        if path is None:
            version = self._version()
            path = master.compiled(version, "pid-path") or "logs/nginx.pid"
        if not os.path.isabs(path):
            prefix = master.option(self.options, "-p")
            if prefix is None:
                prefix = master.compiled(version or self._version(), "prefix") or "/"
            path = os.path.join(prefix, path)
        return Path(path)

    def _check_master_config(self, pid: int) -> None:
        args = master.args_of(pid)
        tested = master.main_config(self._dump)
        if args is None or tested is None:
            return
        running = master.option(args, "-c")
        if running is None:
            if master.option(self.options, "-c") is None:
                return  # both the compiled-in default
            running = master.compiled(self._version(), "conf-path")
        if running is None:
            return
        if not os.path.isabs(running):
            prefix = master.option(args, "-p") or master.compiled(self._version(), "prefix")
            if prefix is None:
                return
            running = os.path.join(prefix, running)
        if os.path.realpath(running) != os.path.realpath(tested):
            raise BackendError(
                f"the running nginx (pid {pid}) reads {running}, but cfallow tests {tested}: "
                f'set [backends.{self.name}] options = ["-c", "{running}"] (and "-p" if it has '
                "one), or cfallow's list is not what that nginx trusts"
            )
