"""A list file a server reads, tested and reloaded: the kit's base class for such backends.

A backend on :class:`ListFileBackend` owns one file listing Cloudflare's
ranges in a server's syntax (nginx's ``set_real_ip_from`` lines, an HAProxy
ACL file, a ModSecurity data file...). The class runs the whole cycle; a
subclass only says how the list looks, how the server tests its whole
configuration and how it reloads::

    read   the list file (one file; nothing else on a no-change run)
    diff   render the wanted file deterministically (sorted, no timestamp, the
           source's etag in a comment) and compare bytes; a hand edit is drift
    apply  ManagedFile: candidate next to the target -> rename -> the server's
           own configuration test with the file in place -> activate (the
           reload); the previous bytes come back if the test or the reload
           fails. A pending-reload record (:class:`PendingReload`) is written
           before the rename and removed once the reload is confirmed: a run
           stopped in between leaves it, and the next run shows drift and
           finishes the reload. Signals wait until the apply is done.

An optional header file (``default_header``: nginx's ``real_ip_header``, say)
is written once when missing and never rewritten: it is the admin's to edit.
``remove`` deletes the list file (and the header file, if it is still exactly
as cfallow wrote it), tests the configuration without them and refuses,
putting them back, if the server then rejects it.

docs/plugins.md shows a complete plugin built on this class.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import ClassVar, Union

from netaddr import IPNetwork

from cfallow.backend import Backend, Context
from cfallow.errors import BackendError, CommandFailed, Unavailable, ValidationError
from cfallow.files import ManagedFile, as_admins
from cfallow.model import Networks, Plan, as_strings, etag_of, make_plan, parse_cidr
from cfallow.section import Section
from cfallow.trust import check_executable

__all__ = [
    "ETAG_LINE",
    "ListFileBackend",
    "PendingReload",
    "Reload",
    "Seen",
    "Step",
    "Write",
    "etag_or_none",
    "quote",
    "signals_held",
]

ETAG_LINE = "# source etag: "
_ERROR_RE = re.compile(r"alert|emerg|error|fail|invalid|unknown|could not|cannot", re.I)
_ETAG_RE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
HELD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@dataclass(frozen=True)
class Seen:
    """What ``read`` found: the list file's bytes and what they list; is the header file there?

    The header file is only looked up (not read): a no-change run reads one file.
    """

    data: bytes | None
    owned: Networks
    etag: str | None
    problems: tuple[str, ...]
    header: bool
    #: Why the running server may not hold the file's bytes (None: it does, as far as known).
    unloaded: str | None = None


@dataclass(frozen=True)
class Write:
    """Plan step: the file at ``path`` goes from ``old`` to ``new`` bytes (``None``: no file)."""

    path: str
    old: bytes | None
    new: bytes | None
    #: A removal of the header file: skipped (the file kept) if it is not ``old`` any more.
    keep_if_edited: bool = False


@dataclass(frozen=True)
class Reload:
    """Plan step: the list file stays ``data``, but the running server must load it."""

    path: str
    data: bytes | None


Step = Union[Write, Reload]


def quote(text: str, lines: int = 3) -> str:
    """A server's message on one line: its first few non-empty lines."""
    found = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # Servers print notices around the error (HAProxy: two NOTICE lines first).
    errors = [ln for ln in found if _ERROR_RE.search(ln)]
    found = errors or found
    out = " / ".join(found[:lines]) or "no message"
    return out if len(out) <= 500 else out[:497] + "..."


def etag_or_none(etag: str | None) -> str:
    """The etag as it goes into a comment (anything odd is dropped, not written)."""
    return etag if etag is not None and _ETAG_RE.match(etag) else "none"


class PendingReload:
    """The record that the running server may not hold the list file's bytes.

    A list file changes by rename, then the server loads it. A run that stops
    in between (SIGKILL, a reload that failed after the rename) leaves new
    bytes on disk the running server never loaded, and every later run would
    find them equal and never reload. The record is written (fsync'd) before
    the rename and removed only once the server confirmed the reload; a later
    run that finds it shows drift and ``sync`` finishes the reload. It is a dot
    file ending in ``.cfallow-reload``, which no include glob of the servers'
    (``*.conf``, ``cfallow-realip*.caddy``) matches.
    """

    def __init__(self, list_path: Path, server: str) -> None:
        self.list_path = list_path
        self.server = server
        self.path = list_path.with_name(f".{list_path.name}.cfallow-reload")

    def exists(self) -> bool:
        """Is a reload owed (a run stopped, or a reload failed, after the file changed)?"""
        return os.path.lexists(self.path)

    def drift(self) -> str:
        """The drift line ``status`` shows while the record exists."""
        return (
            f"the running {self.server} has not been confirmed to load {self.list_path} "
            "(a run stopped, or a reload failed, after it changed): sync reloads it"
        )

    def set(self) -> None:
        """Write the record (before the rename it stands for)."""
        ManagedFile(self.path, mode=0o600).install(
            f"cfallow: {self.list_path} changed; the running {self.server} has not "
            "confirmed a reload since. The next cfallow sync reloads it and removes "
            "this file.\n".encode()
        )

    def clear(self) -> None:
        """Remove the record (the server confirmed it loaded the file)."""
        ManagedFile(self.path, mode=0o600).install(None)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGTERM, SIGINT and SIGHUP for the duration; deliver the first one afterwards.

    The apply finishes (or rolls back on its own failure), then the signal goes
    to whatever handled it before, so the process ends as it would have, one
    apply later. Only the main thread can set handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        got.append(signum)

    old = {sig: signal.signal(sig, hold) for sig in HELD}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if got:
            signal.raise_signal(got[0])


class ListFileBackend(Backend[Seen, Step]):
    """A list file a server reads, tested and reloaded; subclasses fill in the server's part.

    Config keys it reads: ``path`` (``default_path``), ``header_file`` (only
    when ``default_header`` is set), ``timeout``, ``test_command`` and
    ``reload_command`` (argv lists replacing :meth:`default_test` and
    :meth:`default_reload`); :meth:`configure` reads the subclass's own keys.
    """

    #: The server's name in messages ("nginx").
    server: ClassVar[str]
    default_path: ClassVar[str]
    #: The write-once header file ("" when the server has none).
    default_header: ClassVar[str] = ""

    def __init__(self, section: Section, ctx: Context) -> None:
        super().__init__(section, ctx)
        self.path = Path(section.get_str("path", self.default_path))
        header = section.get_str("header_file", self.default_header) if self.default_header else ""
        self.header_path = Path(header) if header else None
        self.timeout = section.get_float("timeout", 60.0, minimum=1.0)
        self.configure(section)
        self.test_command = section.get_strings("test_command", []) or self.default_test()
        self.reload_command = section.get_strings("reload_command", []) or self.default_reload()
        self.pending = PendingReload(self.path, self.server)
        # Root runs these: only programs nobody but root can replace (cfallow.trust).
        # Every one the config names, before anything runs (nginx's -V runs even with
        # a custom test_command and reload_command).
        programs = {what: [prog] for what, prog in self.executables().items()}
        programs.update(test_command=self.test_command, reload_command=self.reload_command)
        for what, argv in programs.items():
            if argv:
                check_executable(argv[0], f"[{section.where}] {what}")

    def write_paths(self) -> tuple[Path, ...]:
        """The directory of the list (written by rename), and of the header file."""
        dirs = [self.path.parent] + ([self.header_path.parent] if self.header_path else [])
        return tuple(dict.fromkeys(dirs))

    def own_dirs(self) -> tuple[Path, ...]:
        """The same directories: cfallow creates them when it writes a file there."""
        return self.write_paths()

    # -- what a subclass fills in --------------------------------------------------------

    def configure(self, section: Section) -> None:
        """Read the server's own config keys (called before the commands are built)."""

    def program(self) -> str:
        """The binary ``check`` looks for."""
        return self.test_command[0]

    def executables(self) -> dict[str, str]:
        """The server's own programs named in config (key -> name or path), e.g. ``nginx``."""
        return {}

    def head(self) -> str:
        """The comment lines above the etag line (each ends in a newline)."""
        return (
            f"# Managed by cfallow: Cloudflare's ranges, for {self.server}. cfallow\n"
            "# rewrites this file (edits are lost); remove it with\n"
            f"# cfallow remove --backend {self.name}\n"
        )

    def render_body(self, cidrs: Sequence[str]) -> str:
        """The entries in the server's syntax (one CIDR a line unless overridden)."""
        return "".join(f"{c}\n" for c in cidrs)

    def parse_line(self, line: str) -> str | None:
        """The CIDR text of one entry line, or None if the line is not one."""
        return line if line and " " not in line else None

    def header_text(self) -> str:
        """The write-once header file's content (only if ``default_header``)."""
        raise NotImplementedError

    def default_test(self) -> list[str]:
        """argv testing the whole configuration."""
        raise NotImplementedError

    def default_reload(self) -> list[str]:
        """argv reloading the server (an empty list: :meth:`activate` is overridden)."""
        raise NotImplementedError

    def verify(self, output: str) -> None:
        """After a passing test: raise if its output shows the file is not in effect."""

    def activate(self, plan: Plan[Step]) -> None:
        """Make the running server use the new file (default: the reload command)."""
        self.run(self.reload_command, "reload")

    def records_reloads(self) -> bool:
        """Does :class:`PendingReload` stand for what the server holds? (HAProxy's
        runtime API is read back instead.)"""
        return True

    def unloaded(self, nets: Networks) -> str | None:
        """Why the running server may not hold the file's entries ``nets`` (None: it does)."""
        return self.pending.drift() if self.pending.exists() else None

    # -- the shared cycle ----------------------------------------------------------------

    def check(self) -> None:
        prog = self.program()
        if shutil.which(prog) is None:
            raise Unavailable(f"{prog}: command not found (is {self.server} installed?)")

    def render(self, nets: Networks, etag: str | None) -> bytes:
        """The list file for ``nets``: deterministic bytes (sorted, no timestamp)."""
        head = f"{self.head()}{ETAG_LINE}{etag_or_none(etag)}\n"
        return (head + self.render_body([str(parse_cidr(c)) for c in as_strings(nets)])).encode()

    def parse(self, data: bytes) -> tuple[Networks, str | None, tuple[str, ...]]:
        """``(entries, etag, problems)`` of the list file's bytes."""
        nets: set[IPNetwork] = set()
        problems: list[str] = []
        etag: str | None = None
        for raw in data.decode("utf-8", "replace").splitlines():
            line = raw.strip()
            if line.startswith(ETAG_LINE.strip()):
                etag = line[len(ETAG_LINE.strip()) :].strip() or None
                continue
            if not line or line.startswith("#"):
                continue
            found = self.parse_line(line)
            texts = found.split() if found is not None else []
            try:
                nets.update(parse_cidr(t) for t in texts)
            except ValidationError:
                texts = []
            if found is None or (found and not texts):  # "": a list line with no entries
                problems.append(f"line not written by cfallow in {self.path}: {line[:60]!r}")
        return frozenset(nets), etag, tuple(problems)

    def read(self) -> Seen:
        data = ManagedFile(self.path).read()
        nets, etag, problems = self.parse(data) if data is not None else (frozenset(), None, ())
        header = self.header_path is not None and os.path.lexists(self.header_path)
        return Seen(data, nets, etag, problems, header, self.unloaded(nets))

    def diff(self, observed: Seen, desired: Networks | None) -> Plan[Step]:
        want = desired if desired is not None else frozenset()
        drift = list(observed.problems)
        steps: list[Step] = []
        new: bytes | None = None
        if desired is not None:
            etag = observed.etag if want == observed.owned else etag_of(desired)
            new = self.render(want, etag)
        if observed.data != new:
            steps.append(Write(str(self.path), observed.data, new))
            if want == observed.owned and not drift:
                what = "is cfallow's" if new is None else "differs from what cfallow writes"
                drift.append(f"{self.path} {what}")
        elif observed.unloaded is not None:
            steps.append(Reload(str(self.path), observed.data))
        if observed.unloaded is not None:
            drift.append(observed.unloaded)
        if self.header_path is not None:
            hdr = self.header_text().encode()
            if desired is not None and not observed.header:
                steps.append(Write(str(self.header_path), None, hdr))
                drift.append(f"{self.header_path} is missing")
            elif desired is None and observed.header:
                steps.append(Write(str(self.header_path), hdr, None, keep_if_edited=True))
                drift.append(f"{self.header_path} goes too, unless you edited it")
        return make_plan(self.name, want, observed.owned, drift=drift, steps=tuple(steps))

    def apply(self, plan: Plan[Step]) -> None:
        # A signal waits: the apply finishes (or rolls back) before the process ends.
        with signals_held():
            self._apply(plan)

    def _apply(self, plan: Plan[Step]) -> None:
        steps: list[Write] = []
        owed = False
        for step in plan.steps:
            # Every file is checked before any is written: TargetMoved leaves all as they are.
            if isinstance(step, Reload):
                ManagedFile(Path(step.path)).expect(step.data)
                owed = True
                continue
            if step.keep_if_edited:
                now = ManagedFile(Path(step.path)).read()
                if now != step.old:
                    if now is not None:
                        self.ctx.log.warning("%s: kept %s: it was edited", self.name, step.path)
                    continue
            ManagedFile(Path(step.path)).expect(step.old)
            steps.append(step)
        if not steps:
            if owed:
                self._finish_reload(plan)
            return
        if steps[0].old is not None:
            as_admins(self.test)  # a configuration broken without cfallow's change is the admin's
        if not self.records_reloads():
            self._install(steps, lambda: self.activate(plan))
            return
        # The record goes first: from the rename on, a stopped run leaves it behind.
        owed_before = self.pending.exists()
        started = False

        def activate() -> None:
            nonlocal started
            started = True
            self.activate(plan)

        self.pending.set()
        try:
            self._install(steps, activate)
        except BaseException:
            if not started and not owed_before:
                self.pending.clear()  # the old bytes are back, and the server never left them
            raise
        self.pending.clear()

    def _finish_reload(self, plan: Plan[Step]) -> None:
        # The bytes on disk are already right; the running server has not loaded them.
        self.test()
        self.activate(plan)
        if self.records_reloads():
            self.pending.clear()

    def _install(self, steps: list[Write], activate: Callable[[], None]) -> None:
        # Files nest: each one's test hook installs the next, so a failure anywhere
        # (the last one's test or the reload) puts every file back.
        first, rest = steps[0], steps[1:]
        target = ManagedFile(Path(first.path))
        if rest:
            target.install(
                first.new, expected=first.old, test=lambda: self._install(rest, activate)
            )
        else:
            target.install(first.new, expected=first.old, test=self.test, activate=activate)

    def test(self) -> None:
        """Test the whole configuration as it is on disk now; raise with the server's words."""
        try:
            done = self.ctx.runner.run(self.test_command, timeout=self.timeout)
        except CommandFailed as exc:
            raise BackendError(
                f"{self.server} rejects the configuration "
                f"({' '.join(self.test_command)}): {quote(exc.stderr)}"
            ) from None
        self.verify(done.stdout)

    def run(self, argv: Sequence[str], what: str) -> str:
        """Run one of the server's commands; a failure quotes the server."""
        try:
            return self.ctx.runner.run(list(argv), timeout=self.timeout).stdout
        except CommandFailed as exc:
            raise BackendError(
                f"{self.server} {what} failed ({' '.join(argv)}): {quote(exc.stderr)}"
            ) from None
