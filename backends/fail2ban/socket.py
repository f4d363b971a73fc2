"""A tiny client for a running ``fail2ban-server``'s own socket protocol.

The protocol (Fail2Ban's ``client/csocket.py``): a pickled list of strings,
then ``<F2B_END_COMMAND>``; the reply is a pickled ``(code, value)``, code 0
for success, else ``value`` is the exception the server raised. One
connection carries any number of commands, so a run makes one connection
instead of one ``fail2ban-client`` process (~65 ms each) per command.

Replies are unpickled by :class:`SafeUnpickler`, which never imports
anything: builtin data types and builtin exceptions are themselves, any other
class named in a reply becomes an inert :class:`RemoteError` subclass. On top of
that the socket must belong to root (or, when cfallow does not run as root, to
cfallow's own user): nobody else's server is talked to.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import socket
import stat
from pathlib import Path

from cfallow.errors import BackendError

END = b"<F2B_END_COMMAND>"
CLOSE = b"<F2B_CLOSE_COMMAND>"
#: Biggest reply read (50 jails' ignore lists are a few KiB).
MAX_REPLY = 16 << 20
#: Commands sent before reading their replies.
PIPELINE = 128

_DATA = {"str", "int", "float", "bool", "list", "dict", "set", "frozenset", "tuple", "bytes"}


class RemoteError(Exception):
    """A class the server named in a reply that is not a builtin (never imported)."""

    remote = "?"

    def __str__(self) -> str:
        detail = ", ".join(map(str, self.args))
        return f"{self.remote}({detail})"


class SafeUnpickler(pickle.Unpickler):
    """Unpickles data and exceptions without importing or calling anything foreign."""

    def find_class(self, module: str, name: str) -> type:
        if module == "builtins":
            obj = getattr(builtins, name, None)
            if name in _DATA or (isinstance(obj, type) and issubclass(obj, BaseException)):
                return obj  # type: ignore[return-value]
        return type(name, (RemoteError,), {"remote": f"{module}.{name}"})


def safe_loads(data: bytes) -> object:
    """Unpickle ``data`` with :class:`SafeUnpickler`; a broken reply is a BackendError."""
    try:
        return SafeUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise BackendError(f"fail2ban server sent an unreadable reply: {exc}") from None


def check_socket(path: Path) -> None:
    """Refuse a socket that is not a socket or belongs to someone who is not trusted."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise BackendError(f"fail2ban socket {path}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise BackendError(f"fail2ban socket {path} is not a socket")
    trusted = {0, os.geteuid()}
    if st.st_uid not in trusted:
        raise BackendError(
            f"fail2ban socket {path} belongs to uid {st.st_uid}, not root: not talking to it"
        )


def _whole(data: bytes) -> tuple[bool, object]:
    """``(True, value)`` if ``data`` is exactly one pickle, else ``(False, None)``."""
    stream = io.BytesIO(data)
    try:
        value = SafeUnpickler(stream).load()
    except Exception:
        return False, None
    return stream.tell() == len(data), value


def _reply(reply: object) -> tuple[int, object]:
    if isinstance(reply, str) and reply.startswith("ERROR:"):
        return 1, reply  # the server could not even read the request
    if not (isinstance(reply, tuple) and len(reply) == 2 and isinstance(reply[0], int)):
        raise BackendError(f"fail2ban server sent an unexpected reply: {reply!r:.200}")
    return reply[0], reply[1]


class ServerSocket:
    """One open connection to a fail2ban-server."""

    def __init__(self, path: Path, timeout: float) -> None:
        """Connect to ``path`` (checked with :func:`check_socket` first)."""
        check_socket(path)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError as exc:
            self.sock.close()
            raise BackendError(f"fail2ban socket {path}: {exc.strerror or exc}") from None

    def command(self, words: list[str]) -> tuple[int, object]:
        """Send one command, return the server's ``(code, value)``."""
        return self.commands([words])[0]

    def commands(self, batch: list[list[str]]) -> list[tuple[int, object]]:
        """Send commands without waiting in between (the server answers in order)."""
        replies: list[tuple[int, object]] = []
        for start in range(0, len(batch), PIPELINE):
            chunk = batch[start : start + PIPELINE]
            data = b"".join(pickle.dumps(list(words), protocol=4) + END for words in chunk)
            try:
                self.sock.sendall(data)
                replies.extend(_reply(r) for r in self._receive(len(chunk)))
            except OSError as exc:
                raise BackendError(f"fail2ban socket {self.path}: {exc.strerror or exc}") from None
        return replies

    def _receive(self, count: int) -> list[object]:
        """``count`` replies; a reply ends at the first END before which it unpickles whole."""
        out: list[object] = []
        buf = bytearray()
        start = 0
        while len(out) < count:
            at = buf.find(END, start)
            if at < 0:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise BackendError(f"fail2ban server closed {self.path} mid-reply")
                start = max(0, len(buf) - len(END))
                buf += chunk
                if len(buf) > MAX_REPLY:
                    raise BackendError(f"fail2ban server reply over {MAX_REPLY >> 20} MiB")
                continue
            whole, value = _whole(bytes(buf[:at]))
            if whole:
                out.append(value)
                del buf[: at + len(END)]
                start = 0
            else:  # END inside the pickled data itself (or garbage): read on
                start = at + 1
        return out

    def close(self) -> None:
        """Say goodbye (as fail2ban-client does) and close."""
        try:
            self.sock.sendall(CLOSE + END)
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
