"""Backend ``haproxy``: an ACL file of Cloudflare's ranges, changed at runtime without a reload.

cfallow owns ``/etc/haproxy/cfallow-realip.acl`` (one CIDR a line), which the
admin's frontend loads and uses::

    acl from_cf src -f /etc/haproxy/cfallow-realip.acl
    http-request set-src req.hdr(CF-Connecting-IP) if from_cf

A change is written to disk (for the next start), tested with ``haproxy -c
-f CONFIG``, then pushed to the running process through the stats socket in
one atomic swap: ``prepare acl FILE`` -> ``add acl @VER FILE CIDR`` for every
entry -> ``commit acl @VER FILE``, and read back with ``show acl FILE``. No
reload: the process, its workers and their connections stay. A failure
anywhere (test, socket, an entry refused, a read-back that differs) puts the
previous file back; an uncommitted version is simply dropped by HAProxy.

``reload_command`` (an argv list) replaces the runtime update, e.g. for a
master socket setup you prefer to reload. With no socket (HAProxy not
running) the file is written for its next start and a warning says so.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from pathlib import Path

from cfallow.errors import BackendError, ValidationError
from cfallow.model import Networks, Plan, as_strings, parse_cidr
from cfallow.section import Section

from . import proc
from .base import RealIpBackend, Step, quote

_STATS_SOCKET = re.compile(r"^\s*stats\s+socket\s+(?:unix@)?(\S+)", re.M)

NOT_LOADED = "Unknown ACL identifier"


class Runtime:
    """HAProxy's runtime API on a stats socket (one command line per connection)."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout

    def ask(self, line: str) -> str:
        """Send one line (commands separated by ``;``) and return the whole answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")

    def replace_acl(self, file: str, cidrs: Sequence[str]) -> None:
        """Swap the running ACL loaded from ``file`` for ``cidrs`` in one commit."""
        answer = self.ask(f"prepare acl {file}")
        if NOT_LOADED in answer:
            raise BackendError(
                f"the running haproxy has no ACL loaded from {file}: add "
                f"`acl from_cf src -f {file}` to the frontend and reload haproxy once"
            )
        words = answer.split()
        if not answer.startswith("New version created:") or not words[-1].isdigit():
            raise BackendError(f"haproxy: prepare acl {file}: {quote(answer)}")
        ver = words[-1]
        if cidrs:
            answer = self.ask("; ".join(f"add acl @{ver} {file} {c}" for c in cidrs))
            if answer.strip():
                raise BackendError(f"haproxy refused an entry for {file}: {quote(answer)}")
        answer = self.ask(f"commit acl @{ver} {file}")
        if answer.strip():
            raise BackendError(f"haproxy: commit acl @{ver} {file}: {quote(answer)}")

    def knows(self, file: str) -> bool:
        """Does the running process have an ACL loaded from ``file``?"""
        return NOT_LOADED not in self.ask(f"show acl {file}")

    def entries(self, file: str) -> list[str]:
        """The running ACL's entries (``show acl FILE``)."""
        answer = self.ask(f"show acl {file}")
        if NOT_LOADED in answer:
            raise BackendError(f"the running haproxy has no ACL loaded from {file}")
        return [ln.split()[1] for ln in answer.splitlines() if len(ln.split()) == 2]

    def live(self, file: str) -> Networks | None:
        """The running ACL as networks; None when no ACL is loaded from ``file``."""
        answer = self.ask(f"show acl {file}")
        if NOT_LOADED in answer:
            return None
        try:
            return frozenset(
                parse_cidr(ln.split()[1]) for ln in answer.splitlines() if len(ln.split()) == 2
            )
        except ValidationError as exc:
            raise BackendError(f"haproxy: show acl {file}: {exc}") from None


class HaproxyBackend(RealIpBackend):
    """HAProxy's ``src -f`` ACL of Cloudflare's ranges, on disk and live."""

    name = "haproxy"
    server = "HAProxy"
    default_path = "/etc/haproxy/cfallow-realip.acl"

    def configure(self, section: Section) -> None:
        self.haproxy = section.get_str("haproxy", "haproxy")
        self.config = section.get_str("config", "/etc/haproxy/haproxy.cfg")
        self.socket = section.get_str("socket", "/run/haproxy/admin.sock")

    def executables(self) -> dict[str, str]:
        return {"haproxy": self.haproxy}

    def program(self) -> str:
        return self.haproxy

    def default_test(self) -> list[str]:
        return [self.haproxy, "-c", "-f", self.config]

    def default_reload(self) -> list[str]:
        return []  # the runtime API

    def records_reloads(self) -> bool:
        return bool(self.reload_command)  # else the live ACL itself says what runs

    def unloaded(self, nets: Networks) -> str | None:
        if self.reload_command:
            return super().unloaded(nets)
        try:
            live = Runtime(self.socket, self.timeout).live(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self._not_answering(exc)
            return None
        except OSError as exc:
            raise BackendError(f"haproxy: stats socket {self.socket}: {exc}") from None
        if live is None or live == nets:
            return None  # not loaded (an error at apply) or the same
        return (
            f"the running haproxy's ACL for {self.path} is not the file's "
            f"({len(live)} live entries, {len(nets)} in the file; a run stopped before "
            "the runtime update): sync updates it"
        )

    def _not_answering(self, exc: OSError) -> None:
        """No stats socket: an error if an HAProxy for this config runs, else nothing."""
        pid = proc.running_with("haproxy", self.config)
        if pid is None:
            return
        try:
            named = _STATS_SOCKET.findall(Path(self.config).read_text(errors="replace"))
        except OSError:
            named = []
        hint = f" ({self.config} names {', '.join(named)})" if named else ""
        raise BackendError(
            f"haproxy (pid {pid}) runs {self.config} but its stats socket {self.socket} "
            f"does not answer ({exc.strerror or exc}): set [backends.{self.name}] socket "
            f"to its `stats socket ... level admin` path{hint}"
        )

    def activate(self, plan: Plan[Step]) -> None:
        if self.reload_command:
            self.run(self.reload_command, "reload")
            return
        wanted = [str(parse_cidr(c)) for c in as_strings(plan.after)]
        runtime = Runtime(self.socket, self.timeout)
        try:
            if not wanted and not runtime.knows(str(self.path)):
                return  # removed after the admin dropped the acl line: nothing live to empty
            runtime.replace_acl(str(self.path), wanted)
            live = runtime.entries(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self._not_answering(exc)
            self.ctx.log.warning(
                "haproxy: no running haproxy for %s (no answer on %s); %s is in place "
                "for its next start",
                self.config,
                self.socket,
                self.path,
            )
            return
        except OSError as exc:
            raise BackendError(f"haproxy: stats socket {self.socket}: {exc}") from None
        if sorted(live) != sorted(wanted):
            raise BackendError(
                f"haproxy: the running ACL for {self.path} does not match after the commit"
            )
