"""What the web servers' real-IP backends share: one list file cfallow owns, tested and reloaded.

Each server (nginx, Apache, HAProxy, Caddy) is its own backend (its own
entry point and config section) built on :class:`RealIpBackend`, which owns
the whole cycle; a server module only says how a list looks in its syntax,
how its whole configuration is tested and how it reloads::

    read   the list file (one file; nothing else on a no-change run)
    diff   render the wanted file deterministically (sorted, no timestamp, the
           source etag in a comment) and compare bytes; a hand edit is drift
    apply  ManagedFile: candidate next to the target -> rename -> test the
           whole server config with the file in place -> reload; the previous
           bytes come back if the test or the reload fails. A pending-reload
           record (:mod:`.realip_pending`) is written before the rename and
           removed once the reload is confirmed: a run stopped in between
           leaves it, and the next run shows drift and finishes the reload.
           Signals wait until the apply is done.

An optional second file (nginx's ``real_ip_header``, Apache's
``RemoteIPHeader``) is written once when missing and never rewritten: it is
the admin's to edit. ``remove`` deletes the list file (and that file, if it is
still exactly as cfallow wrote it), tests the configuration without them and
refuses, putting them back, if the server then rejects it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Union

from netaddr import IPNetwork

from cfallow.backend import Backend, Context
from cfallow.errors import BackendError, CommandFailed, TargetMoved, Unavailable, ValidationError
from cfallow.files import ManagedFile
from cfallow.model import Networks, Plan, as_strings, make_plan, parse_cidr
from cfallow.section import Section
from cfallow.trust import check_executable

from .pending import PendingReload, signals_held

ETAG_LINE = "# source etag: "
_ERROR_RE = re.compile(r"alert|emerg|error|fail|invalid|unknown|could not|cannot", re.I)
_ETAG_RE = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


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


class RealIpBackend(Backend[Seen, Step]):
    """A server's trust list in one file cfallow owns; subclasses fill in the server's syntax."""

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
        """The directory of the trust list (written by rename), and of the header file."""
        dirs = [self.path.parent] + ([self.header_path.parent] if self.header_path else [])
        return tuple(dict.fromkeys(dirs))

    def own_dirs(self) -> tuple[Path, ...]:
        """The same directories: cfallow creates them when it writes a file there."""
        return self.write_paths()

    # -- what a server module fills in ---------------------------------------------------

    def configure(self, section: Section) -> None:
        """Read the server's own config keys (called before the commands are built)."""

    def program(self) -> str:
        """The binary ``check`` looks for."""
        return self.test_command[0]

    def executables(self) -> dict[str, str]:
        """The server's own programs named in config (key -> name or path), e.g. ``nginx``."""
        return {}

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
        head = (
            f"# Managed by cfallow: Cloudflare's ranges, trusted by {self.server} to pass the\n"
            "# client address. cfallow rewrites this file (edits are lost); remove it with\n"
            f"# cfallow remove --backend {self.name}\n"
            f"{ETAG_LINE}{etag_or_none(etag)}\n"
        )
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
            etag = observed.etag if want == observed.owned else self.ctx.etag
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
            now = ManagedFile(Path(step.path)).read()
            if isinstance(step, Reload):
                if now != step.data:
                    raise TargetMoved(f"{step.path} changed since it was read")
                owed = True
                continue
            if now != step.old and step.keep_if_edited:
                if now is not None:
                    self.ctx.log.warning("%s: kept %s: it was edited", self.name, step.path)
                continue
            if now != step.old:
                raise TargetMoved(f"{step.path} changed since it was read")
            steps.append(step)
        if not steps:
            if owed:
                self._finish_reload(plan)
            return
        if steps[0].old is not None:
            self._baseline()
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

    def _baseline(self) -> None:
        # A configuration already broken without cfallow's change is the admin's to fix.
        try:
            self.test()
        except BackendError as exc:
            raise BackendError(
                f"the configuration fails before cfallow changes anything (not cfallow's file): "
                f"{exc}"
            ) from None

    def _install(self, steps: list[Write], activate: Callable[[], None]) -> None:
        # Files nest: each one's test hook installs the next, so a failure anywhere
        # (the last one's test or the reload) puts every file back.
        first, rest = steps[0], steps[1:]
        target = ManagedFile(Path(first.path))
        if rest:
            target.install(first.new, test=lambda: self._install(rest, activate))
        else:
            target.install(first.new, test=self.test, activate=activate)

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
