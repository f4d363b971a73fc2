"""Backend ``caddy``: a Caddyfile snippet of Cloudflare's ranges as ``trusted_proxies``.

cfallow owns ``/etc/caddy/cfallow-realip.caddy``, which the admin's Caddyfile
imports with a glob (valid before the first sync and after ``remove``): inside
``reverse_proxy`` (Debian 12's Caddy 2.6.2), or the global ``servers`` option
with ``style = "servers"`` (Caddy 2.7+). Tested with ``caddy adapt --validate``
on the whole Caddyfile, then ``caddy reload``; why not the admin API:
docs/realip.md, "Caddy".
"""

from __future__ import annotations

from collections.abc import Sequence

from cfallow.errors import BackendError
from cfallow.files import ManagedFile
from cfallow.model import as_strings
from cfallow.section import Section

from .base import RealIpBackend


class CaddyBackend(RealIpBackend):
    """Caddy's trusted proxies, as a snippet imported by the Caddyfile."""

    name = "caddy"
    server = "Caddy"
    default_path = "/etc/caddy/cfallow-realip.caddy"

    def configure(self, section: Section) -> None:
        self.caddy = section.get_str("caddy", "caddy")
        self.config = section.get_str("config", "/etc/caddy/Caddyfile")
        #: The admin endpoint ``caddy reload`` posts to ("" = Caddy's default).
        self.address = section.get_str("address", "")
        self.style = section.get_choice("style", "reverse_proxy", ("reverse_proxy", "servers"))

    def executables(self) -> dict[str, str]:
        return {"caddy": self.caddy}

    def program(self) -> str:
        return self.caddy

    def render_body(self, cidrs: Sequence[str]) -> str:
        static = " static" if self.style == "servers" else ""
        return f"trusted_proxies{static} {' '.join(cidrs)}\n"

    def parse_line(self, line: str) -> str | None:
        words = line.split()
        if not words or words[0] != "trusted_proxies":
            return None
        rest = words[2:] if self.style == "servers" and words[1:2] == ["static"] else words[1:]
        return " ".join(rest)

    def default_test(self) -> list[str]:
        return [
            self.caddy,
            "adapt",
            "--config",
            self.config,
            "--adapter",
            "caddyfile",
            "--validate",
        ]

    def verify(self, output: str) -> None:
        # adapt prints the JSON config: cfallow's ranges must be in it, or Caddy never
        # imports the file (a silent success otherwise).
        if not output.lstrip().startswith("{") or not self.path.exists():
            return
        data = ManagedFile(self.path).read() or b""
        nets, _, _ = self.parse(data)
        if nets and f'"{min(as_strings(nets))}"' not in output:
            raise BackendError(
                f"Caddy does not use {self.path}: import it in a reverse_proxy block "
                f"(import {self.path.parent}/{self.path.stem}*{self.path.suffix})"
            )

    def default_reload(self) -> list[str]:
        address = ["--address", self.address] if self.address else []
        return [self.caddy, "reload", "--config", self.config, "--adapter", "caddyfile", *address]
