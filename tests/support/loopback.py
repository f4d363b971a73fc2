"""Harnesses for hostile-source tests, all on 127.0.0.1.

- :class:`LoopbackOnly` patches the socket layer so this process can neither
  connect to nor resolve anything but loopback: a connection attempt elsewhere
  is recorded and refused (``ECONNREFUSED``) instead of leaving the host.
- :class:`RecordingProxy` is a listener that records each request line a
  client sends it (an HTTP proxy request or ``CONNECT``) and answers 403.
- :func:`tls_server` is a pytest-httpserver on 127.0.0.1 with a fresh
  self-signed certificate for ``IP:127.0.0.1``, and the CA file that trusts it.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def _is_loopback(host: object) -> bool:
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return str(host) in _LOOPBACK_NAMES


class LoopbackOnly:
    """Every connect/lookup this process makes, recorded; only loopback ones go through."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.connects: list[tuple[str, int]] = []
        self.lookups: list[str] = []
        real_connect = socket.socket.connect
        real_getaddrinfo = socket.getaddrinfo

        def connect(sock: socket.socket, address: Any) -> None:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                host, port = str(address[0]), int(address[1])
                self.connects.append((host, port))
                if not _is_loopback(host):
                    raise ConnectionRefusedError(errno.ECONNREFUSED, "blocked by the test")
            real_connect(sock, address)

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            self.lookups.append(str(host))
            if host is not None and not _is_loopback(host):
                raise socket.gaierror(socket.EAI_NONAME, "lookups blocked by the test")
            return real_getaddrinfo(host, *args, **kwargs)

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    def outside(self) -> list[object]:
        """Connections and lookups that were aimed anywhere but loopback."""
        return [c for c in self.connects if not _is_loopback(c[0])] + [
            h for h in self.lookups if not _is_loopback(h)
        ]


class RecordingProxy:
    """A listener on 127.0.0.1 that records request lines and answers 403."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                data = b""
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in data and len(data) < 65536:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                self.lines.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
                with contextlib.suppress(OSError):
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cfallow test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@contextlib.contextmanager
def tls_server(tmp: Path) -> Iterator[tuple[HTTPServer, Path]]:
    """An https pytest-httpserver on 127.0.0.1 and the CA file that trusts it."""
    cert_file, key_file = _self_signed(tmp)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=ctx)
    server.start()
    try:
        yield server, cert_file
    finally:
        server.clear()
        if server.is_running():
            server.stop()
