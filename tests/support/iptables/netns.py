"""Run the real backend inside a test's network namespace, in a forked child.

python-iptables (the legacy writer) works on the calling process's own network
namespace, so the legacy variant must never run in the test process itself
(that would be the host's firewall). :func:`in_netns` forks, moves the child
into the namespace with ``setns(2)`` and runs a function there; the result (or
the exception) comes back pickled. :class:`NetnsBackend` wraps a real
:class:`IptablesBackend` that way, so the shared contract and the engine drive
it exactly like an in-process backend.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Any, TypeVar

from cfallow.backend import Backend
from cfallow.errors import BackendError, CfallowError
from cfallow.model import Networks, Plan
from cfallow.verify.lab import setns

T = TypeVar("T")


def enter_netns(ns: str) -> None:
    """Move the calling process into ``/run/netns/NS`` (child processes only)."""
    setns(f"/run/netns/{ns}")


def _portable(exc: BaseException) -> BaseException:
    """An exception that survives pickling (CommandFailed's __init__ takes three args)."""
    if isinstance(exc, CfallowError):
        try:
            pickle.loads(pickle.dumps(exc))
            return exc
        except Exception:
            return BackendError(str(exc))
    return RuntimeError(f"{type(exc).__name__}: {exc}")


def in_netns(ns: str, fn: Callable[[], T], env: dict[str, str] | None = None) -> T:
    """Run ``fn()`` in a child process inside namespace ``ns``; return its result."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            os.close(read_fd)
            os.environ.update(env or {})
            enter_netns(ns)
            try:
                payload = pickle.dumps(("ok", fn()))
            except BaseException as exc:
                payload = pickle.dumps(("err", _portable(exc)))
            with os.fdopen(write_fd, "wb") as out:
                out.write(payload)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"child in {ns} died (wait status {status})")
    kind, value = pickle.loads(data)
    if kind == "err":
        raise value
    return value  # type: ignore[no-any-return]


class Counted:
    """The transactions an iptables backend writes, and its legacy commits started again
    because the table moved, counted from outside (the backend keeps no counters)."""

    def __init__(self, backend: Any) -> None:
        self.writes = 0
        self.retries = 0
        io_for = backend.io

        def io(variant: Any) -> Any:
            made = io_for(variant)
            transact = made.transact

            def counted(*args: Any, **kwargs: Any) -> bool:
                try:
                    wrote = bool(transact(*args, **kwargs))
                finally:
                    self.retries += int(getattr(made, "retries", 0))
                self.writes += wrote
                return wrote

            made.transact = counted
            return made

        backend.io = io


class NetnsBackend(Backend[Any, Any]):
    """A real backend whose every call runs in a forked child inside ``ns``.

    The child's copy of the backend is thrown away after each call, so what a
    call leaves behind in the instance (a read cached by ``check``) is not
    seen by the next; ``writes`` is carried back.
    """

    def __init__(
        self, inner: Backend[Any, Any], ns: str, env: dict[str, str] | None = None
    ) -> None:
        self.inner = inner
        self.ns = ns
        self.env = env or {}
        self.name = inner.name  # type: ignore[misc]
        self.ctx = inner.ctx
        self.writes = 0

    def _call(self, method: str, *args: Any) -> Any:
        inner = self.inner

        def run() -> tuple[Any, int]:
            counted = Counted(inner) if hasattr(inner, "io") else None
            result = getattr(inner, method)(*args)
            return result, counted.writes if counted else 0

        result, writes = in_netns(self.ns, run, self.env)
        self.writes += writes
        return result

    def check(self) -> None:
        self._call("check")

    def read(self) -> Any:
        return self._call("read")

    def diff(self, observed: Any, desired: Networks | None) -> Plan[Any]:
        return self._call("diff", observed, desired)  # type: ignore[no-any-return]

    def apply(self, plan: Plan[Any]) -> None:
        self._call("apply", plan)
