"""Talking to Fail2Ban through ``fail2ban-client`` (argv lists via the core runner).

Two kinds of call: runtime commands to a running server over its socket
(``status``, ``get JAIL ignoreip``, ``set JAIL addignoreip|delignoreip``)
and offline reads of a configuration tree (``-d`` dumps the parsed
configuration, ``-t`` tests it). The parsers here read the client's own output
format of Fail2Ban 1.0.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from netaddr import AddrFormatError, IPNetwork

from cfallow.errors import BackendError
from cfallow.model import as_strings, parse_cidr
from cfallow.runner import Completed, Runner

#: What may name a jail: it becomes a section header in the drop-in and an argv word.
JAIL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+-]{0,99}")
_RESERVED = {"DEFAULT", "INCLUDES", "Definition", "Init", "KNOWN"}
_LOG_PREFIX = re.compile(r"^\S+ \S+ fail2ban(?:\.\w+)?\s+\[\d+\]: (\w+)\s+(.*)$")
_GENERIC = {"ERROR: test configuration failed", "Init of command line failed"}


def check_jail_name(name: str) -> str:
    """Return ``name`` if it can safely name a jail, else raise :class:`BackendError`."""
    if not isinstance(name, str) or not JAIL_NAME.fullmatch(name) or name in _RESERVED:
        raise BackendError(f"not a usable jail name: {name!r}")
    return name


def entry_network(entry: str) -> IPNetwork | None:
    """An ignore-list entry as a canonical network, or None (a host name, junk).

    Fail2Ban accepts ``127.0.0.1/8`` (host bits) and bare addresses; both are
    compared here by the network they denote.
    """
    if not entry or entry.strip() != entry or entry.count("/") > 1:
        return None
    try:
        return IPNetwork(entry).cidr
    except (AddrFormatError, ValueError, TypeError, IndexError):
        return None


def entry_networks(entries: Iterable[str]) -> frozenset[IPNetwork]:
    """The networks among ignore-list entries (other entries are skipped)."""
    nets = (entry_network(e) for e in entries)
    return frozenset(n for n in nets if n is not None)


def client_message(output: str, replace: Sequence[tuple[str, str]] = ()) -> str:
    """The client's own error text from its log lines, one line, paths mapped back."""
    messages: list[str] = []
    for line in output.splitlines():
        m = _LOG_PREFIX.match(line)
        if m and m.group(1) in {"ERROR", "CRITICAL"}:
            text = m.group(2).strip()
            if text.startswith("NOK: "):
                text = text[5:]
            if text not in _GENERIC:
                messages.append(text)
        elif messages and line[:1].isspace() and line.strip():
            messages[-1] += " " + line.strip()  # a parse error's continuation line
    text = "; ".join(messages) or (output.strip().splitlines() or ["no message"])[-1]
    for old, new in replace:
        text = text.replace(old, new)
    return text


def parse_list(stdout: str) -> list[str]:
    """Entries of ``get JAIL ignoreip`` (a header line, then ``|- x`` / ```- x`` lines)."""
    entries: list[str] = []
    for line in stdout.splitlines()[1:]:
        stripped = line.strip()
        if stripped[:2] in {"|-", "`-"}:
            entries.append(stripped[2:].strip())
    return entries


def parse_jail_list(stdout: str) -> list[str]:
    """Jail names from ``status`` (``Jail list:\\talpha, beta``)."""
    for line in stdout.splitlines():
        _, sep, rest = line.partition("Jail list:")
        if sep:
            return [j.strip() for j in rest.split(",") if j.strip()]
    raise BackendError("no jail list in the server's status reply")


def parse_banned(stdout: str) -> list[str]:
    """Banned addresses from ``status JAIL``."""
    for line in stdout.splitlines():
        _, sep, rest = line.partition("Banned IP list:")
        if sep:
            return rest.split()
    return []


@dataclass
class ConfigDump:
    """What ``fail2ban-client -d`` says of a configuration: enabled jails and their ignoreip."""

    ignoreip: dict[str, list[str]] = field(default_factory=dict)
    #: Jails whose configuration sets ``ignoreip`` at all (own or DEFAULT's, maybe empty).
    defined: set[str] = field(default_factory=set)

    @property
    def jails(self) -> list[str]:
        """The enabled (and loadable) jails, in configuration order."""
        return list(self.ignoreip)


def parse_dump(stdout: str) -> ConfigDump:
    """Parse ``-d`` output: one Python-literal command per line."""
    dump = ConfigDump()
    for line in stdout.splitlines():
        if not line.startswith("['add', ") and "'addignoreip'" not in line:
            continue
        try:
            cmd = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            continue
        if not isinstance(cmd, list) or not all(isinstance(c, str) for c in cmd):
            continue
        if len(cmd) >= 2 and cmd[0] == "add":
            dump.ignoreip.setdefault(cmd[1], [])
        elif len(cmd) >= 3 and cmd[0] == "set" and cmd[2] == "addignoreip":
            dump.ignoreip.setdefault(cmd[1], []).extend(cmd[3:])
            dump.defined.add(cmd[1])
    return dump


@dataclass
class Client:
    """``fail2ban-client`` bound to one configuration directory and server socket."""

    runner: Runner
    client: str
    config_dir: Path
    socket: Path
    timeout: float = 30.0

    def _server(self, *args: str, check: bool = True) -> Completed:
        argv = [self.client, "-c", str(self.config_dir), "-s", str(self.socket), *args]
        done = self.runner.run(argv, check=False, timeout=self.timeout)
        if check and done.returncode != 0:
            what = " ".join(args[:3])
            raise BackendError(
                f"fail2ban-client {what}: {client_message(done.stderr + done.stdout)}"
            )
        return done

    def running_jails(self) -> tuple[list[str] | None, str]:
        """``(jails the server runs, "")``, or ``(None, why)`` when no server answers."""
        if not self.socket.exists():
            return None, f"no socket at {self.socket}"
        done = self._server("status", check=False)
        if done.returncode != 0:
            return None, client_message(done.stderr + done.stdout)
        return parse_jail_list(done.stdout), ""

    def ignoreip(self, jail: str) -> list[str]:
        """The live ignore list of ``jail``."""
        return parse_list(self._server("get", check_jail_name(jail), "ignoreip").stdout)

    def add_ignore(self, jail: str, nets: Iterable[IPNetwork]) -> None:
        """Add validated networks to the live list in one call (duplicates are ignored)."""
        words = [str(parse_cidr(str(n))) for n in as_strings(nets)]
        if words:
            self._server("set", check_jail_name(jail), "addignoreip", *words)

    def del_ignore(self, jail: str, net: IPNetwork) -> None:
        """Remove one validated network (the client honours only one per call); absent is fine."""
        word = str(parse_cidr(str(net)))
        done = self._server("set", check_jail_name(jail), "delignoreip", word, check=False)
        if done.returncode != 0 and "not in list" not in done.stderr + done.stdout:
            msg = client_message(done.stderr + done.stdout)
            raise BackendError(f"fail2ban-client set {jail} delignoreip {word}: {msg}")

    def dump(self, config_dir: Path, shown_as: Path) -> ConfigDump:
        """``-d`` of the tree at ``config_dir`` (a private copy; named ``shown_as`` in errors)."""
        done = self.runner.run(
            [self.client, "-c", str(config_dir), "-d"], check=False, timeout=self.timeout
        )
        if done.returncode != 0:
            msg = client_message(done.stderr + done.stdout, [(str(config_dir), str(shown_as))])
            raise BackendError(f"fail2ban-client -d cannot read {shown_as}: {msg}")
        return parse_dump(done.stdout)

    def test(self, config_dir: Path, shown_as: Path) -> str | None:
        """``-t`` of the tree at ``config_dir``: None if accepted, else the client's message."""
        done = self.runner.run(
            [self.client, "-c", str(config_dir), "-t"], check=False, timeout=self.timeout
        )
        if done.returncode == 0:
            return None
        return client_message(done.stderr + done.stdout, [(str(config_dir), str(shown_as))])
