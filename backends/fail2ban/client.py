"""Talking to Fail2Ban: its server's socket, and ``fail2ban-client`` for configurations.

Two kinds of call: runtime commands to a running server over its own socket
protocol, one connection per session (``status``, ``get JAIL ignoreip``,
``set JAIL addignoreip|delignoreip``), and offline reads of a configuration
tree with ``fail2ban-client`` through the runner (``-d`` dumps the parsed
configuration, ``-t`` tests it). The parsers here read the client's own output
format of Fail2Ban 1.0.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from netaddr import AddrFormatError, IPNetwork

from cfallow.errors import BackendError
from cfallow.model import Networks, as_strings, parse_cidr
from cfallow.runner import Runner

from .socket import ServerSocket

#: What may name a jail: it becomes a section header in the drop-in and an argv word.
JAIL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@+-]{0,99}")
_RESERVED = {"DEFAULT", "INCLUDES", "Definition", "Init", "KNOWN"}
_LOG_PREFIX = re.compile(r"^\S+ \S+ fail2ban(?:\.\w+)?\s+\[\d+\]: (\w+)\s+(.*)$")
_GENERIC = {"ERROR: test configuration failed", "Init of command line failed"}


#: :func:`cfallow.model.parse_cidr`, remembered: 50 jails list the same few ranges.
cidr = functools.lru_cache(maxsize=16384)(parse_cidr)


def strs(nets: Networks) -> tuple[str, ...]:
    """Validated CIDR strings of ``nets``, in address order."""
    # Keyed by the spelling: netaddr calls 104.16.0.1/13 equal to 104.16.0.0/13.
    return _strs(frozenset(str(n) for n in nets))


@functools.lru_cache(maxsize=4096)
def _strs(texts: frozenset[str]) -> tuple[str, ...]:
    return tuple(as_strings(frozenset(cidr(t) for t in texts)))


def check_jail_name(name: str) -> str:
    """Return ``name`` if it can safely name a jail, else raise :class:`BackendError`."""
    if not isinstance(name, str) or not JAIL_NAME.fullmatch(name) or name in _RESERVED:
        raise BackendError(f"not a usable jail name: {name!r}")
    return name


@functools.lru_cache(maxsize=16384)
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
    """A Fail2Ban server (runtime commands over its socket) and ``fail2ban-client``.

    Runtime commands go over one connection per :meth:`session` (see
    :mod:`.fail2ban_socket`); ``-d`` and ``-t`` of a configuration tree run
    ``fail2ban-client`` through the runner. ``sent`` records every runtime
    command.
    """

    runner: Runner
    client: str
    config_dir: Path
    socket: Path
    timeout: float = 30.0
    sent: list[tuple[str, ...]] = field(default_factory=list)
    _conn: ServerSocket | None = field(default=None, repr=False)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Keep one connection open for the commands inside (opened on first use)."""
        try:
            yield
        finally:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def _send(self, *words: str) -> tuple[int, object]:
        return self._batch([words])[0]

    def _batch(self, batch: list[tuple[str, ...]]) -> list[tuple[int, object]]:
        if not batch:
            return []
        if self._conn is None:
            self._conn = ServerSocket(self.socket, self.timeout)
        self.sent.extend(batch)
        return self._conn.commands([list(w) for w in batch])

    def running_jails(self) -> tuple[list[str] | None, str]:
        """``(jails the server runs, "")``, or ``(None, why)`` when no server answers."""
        if not self.socket.exists():
            return None, f"no socket at {self.socket}"
        try:
            code, value = self._send("status")
        except BackendError as exc:
            if "refused" in str(exc) or "No such file" in str(exc):
                return None, str(exc)
            raise
        if code != 0:
            return None, _reason(value)
        if isinstance(value, list):
            for item in value:
                if isinstance(item, tuple) and len(item) == 2 and item[0] == "Jail list":
                    return [j.strip() for j in str(item[1]).split(", ") if j.strip()], ""
        raise BackendError("no jail list in the server's status reply")

    def ignoreip(self, jail: str) -> list[str]:
        """The live ignore list of ``jail``."""
        return self.ignoreips([jail])[jail]

    def ignoreips(self, jails: Sequence[str]) -> dict[str, list[str]]:
        """The live ignore lists of ``jails``, asked for in one go."""
        replies = self._batch([("get", jail, "ignoreip") for jail in jails])
        out: dict[str, list[str]] = {}
        for jail, (code, value) in zip(jails, replies):
            if code != 0 or not isinstance(value, list):
                why = _reason(value) if code != 0 else f"unexpected {value!r:.80}"
                raise BackendError(f"fail2ban server: get {jail} ignoreip: {why}")
            out[jail] = [str(v) for v in value]
        return out

    def change(self, changes: Sequence[tuple[str, Networks, Networks]]) -> None:
        """Per ``(jail, add, remove)``: one ``addignoreip`` with every range to add, then one
        ``delignoreip`` per range to remove (the server takes one per command).

        Two round trips: every add in one go, and only once they all succeeded every
        removal in one go, so a range never leaves before its replacement is in.
        """
        adds: list[tuple[str, ...]] = [
            ("set", j, "addignoreip", *strs(a)) for j, a, _ in changes if a
        ]
        dels: list[tuple[str, ...]] = [
            ("set", j, "delignoreip", c) for j, _, r in changes for c in strs(r)
        ]
        for batch in (adds, dels):
            for words, (code, value) in zip(batch, self._batch(batch)):
                if code != 0 and not (words[2] == "delignoreip" and "not in list" in str(value)):
                    what = " ".join(words[:4])
                    raise BackendError(f"fail2ban server: {what}: {_reason(value)}")

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


def _reason(value: object) -> str:
    """The one-line text of a server's error reply."""
    if isinstance(value, BaseException):
        text = f"{type(value).__name__}: {value}" if str(value) else type(value).__name__
    else:
        text = str(value)
    return " ".join(text.split())[:300]
