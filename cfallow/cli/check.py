"""``cfallow check``: everything a run needs, checked without changing anything.

The config (already parsed, every backend section built, when this runs),
each selected backend's preflight (``check()``), the paths a real run writes
(state directory, ``metrics_file``, what the backends name in ``write_paths()``)
and, for each installed systemd unit (``cfallow.service`` and
``cfallow-restore.service``), whether its sandbox lets the run write them
(``ReadWritePaths=``, ``StateDirectory=``, drop-ins included). systemd
silently drops a ``-`` ``ReadWritePaths=`` entry whose path does not exist
when the unit starts (the path then stays read-only): such an entry counts
only if the unit creates the path first (``ExecStartPre=+`` running
``cfallow prepare``, ``touch`` or ``mkdir``). Exit 0 when all is well, 2 otherwise.

:func:`prepare` (``cfallow prepare``) is what the units run outside their
sandbox before the run: it creates the directories the configured backends
write their own files into.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cfallow import backend, report
from cfallow.cli import config
from cfallow.errors import EXIT_OK, EXIT_USAGE, CfallowError
from cfallow.fetch.state import State

if TYPE_CHECKING:
    from cfallow.cli.invocation import Invocation

#: The units ``cfallow check`` compares by default (``--unit``: others).
UNIT_NAMES = ("cfallow.service", "cfallow-restore.service")
#: systemd's system unit search path, highest priority first (systemd.unit(5)): the
#: Debian package installs into /lib/systemd/system, an admin's copy or ``systemctl
#: edit`` drop-in into /etc/systemd/system.
UNIT_DIRS = (
    Path("/etc/systemd/system"),
    Path("/run/systemd/system"),
    Path("/usr/local/lib/systemd/system"),
    Path("/usr/lib/systemd/system"),
    Path("/lib/systemd/system"),
)


def installed_units(dirs: Iterable[Path] | None = None) -> tuple[Path, ...]:
    """Each of :data:`UNIT_NAMES` where systemd finds it (the first directory of
    ``dirs``, default :data:`UNIT_DIRS`, that has it); one not installed anywhere is
    named under the first directory."""
    dirs = tuple(UNIT_DIRS if dirs is None else dirs)
    found = []
    for name in UNIT_NAMES:
        hits = [d / name for d in dirs if (d / name).is_file()]
        found.append(hits[0] if hits else dirs[0] / name)
    return tuple(found)


def _dropins(unit: Path, dirs: Iterable[Path] | None) -> list[Path]:
    """``unit``'s ``.d/*.conf`` drop-ins from its own directory, or from every directory of
    the search path when it is installed in one (same file name: the earlier directory
    wins), in file-name order as systemd applies them."""
    dirs = tuple(UNIT_DIRS if dirs is None else dirs)
    where = dirs if unit.parent in dirs else (unit.parent,)
    by_name: dict[str, Path] = {}
    for d in where:
        for f in sorted((d / f"{unit.name}.d").glob("*.conf")):
            by_name.setdefault(f.name, f)
    return [by_name[n] for n in sorted(by_name)]


@dataclass(frozen=True)
class Finding:
    """One checked item."""

    what: str
    ok: bool
    detail: str


def _writable(path: Path) -> str | None:
    """``None`` if a run can write ``path`` (or create it), else why not."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return f"{path}: no existing parent directory"
        probe = probe.parent
    if probe == path and path.is_file():
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    if not probe.is_dir():
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


@dataclass(frozen=True)
class UnitGrants:
    """What one unit (with its drop-ins) lets a run write."""

    #: ``ReadWritePaths=`` entries (with ``optional``: ``-``-prefixed) and ``StateDirectory=``
    paths: tuple[tuple[Path, bool], ...]
    #: ``ProtectSystem=strict``: everything else is read-only
    strict: bool
    #: paths its ``ExecStartPre=+`` commands create outside the sandbox (``touch``, ``mkdir``)
    created: tuple[Path, ...]
    #: an ``ExecStartPre=+`` runs ``cfallow prepare`` (creates the backends' own directories)
    prepares: bool


def _exec_pre(value: str, created: list[Path]) -> bool:
    """Note what one ``ExecStartPre=`` creates; True if it runs ``cfallow prepare``."""
    prefix = value[: len(value) - len(value.lstrip("-+!@:|"))]
    if "+" not in prefix:
        return False  # inside the sandbox: it cannot create what the sandbox forbids
    argv = value[len(prefix) :].split()
    if not argv:
        return False
    tool = Path(argv[0]).name
    if tool in ("touch", "mkdir"):
        created += [Path(a) for a in argv[1:] if a.startswith("/")]
    return tool.startswith("cfallow") and "prepare" in argv[1:]


def unit_grants(unit: Path, dirs: Iterable[Path] | None = None) -> UnitGrants:
    """Parse ``unit`` and its ``.d`` drop-ins (later assignments add, an empty one resets)."""
    files = [unit, *_dropins(unit, dirs)]
    paths: list[tuple[Path, bool]] = []
    created: list[Path] = []
    strict = prepares = False
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            key, sep, value = line.strip().partition("=")
            if not sep:
                continue
            key, value = key.strip(), value.strip()
            if key == "ReadWritePaths":
                if not value:  # an empty assignment resets the list (systemd.exec)
                    paths = []
                paths += [(Path(v.lstrip("-+")), v.startswith("-")) for v in value.split()]
            elif key == "StateDirectory":  # systemd creates it
                paths += [(Path("/var/lib") / v.split(":")[0], False) for v in value.split()]
            elif key == "ProtectSystem":
                strict = value == "strict"
            elif key == "ExecStartPre":
                if not value:
                    created, prepares = [], False
                else:
                    prepares = _exec_pre(value, created) or prepares
    return UnitGrants(tuple(paths), strict, tuple(created), prepares)


def _needs(
    cfg: config.Config, state: State, built: list[backend.AnyBackend]
) -> list[tuple[str, Path]]:
    needs = [("state directory", state.dir)]
    if cfg.metrics_file is not None:
        needs.append(("metrics_file directory", cfg.metrics_file.parent))
    for b in built:
        needs += [(f"{b.name} path", p) for p in b.write_paths()]
    return needs


def findings(
    cfg: config.Config, state: State, built: list[backend.AnyBackend], units: Iterable[Path]
) -> list[Finding]:
    """Every check, in order: config, backends, paths, units."""
    out = [Finding("config", True, str(cfg.path or "built-in defaults (no config file)"))]
    for b in built:
        try:
            b.check()
            out.append(Finding(f"backend {b.name}", True, "preflight passed"))
        except CfallowError as exc:
            out.append(Finding(f"backend {b.name}", False, str(exc)))
    if cfg.metrics_file is not None:
        from cfallow.report import metrics

        try:
            metrics.check_path(cfg.metrics_file)
            out.append(Finding("metrics_file", True, str(cfg.metrics_file)))
        except CfallowError as exc:
            out.append(Finding("metrics_file", False, str(exc)))
    for what, path in _needs(cfg, state, built):
        if what != "metrics_file directory":  # checked above: cfallow never creates it
            why = _writable(path)
            out.append(Finding(f"{what} {path}", why is None, why or "writable"))
    for unit in units:
        out += _unit_findings(cfg, state, built, unit)
    return out


def prepare(built: list[backend.AnyBackend]) -> list[Path]:
    """Create the configured backends' missing own directories whose parent exists.

    Run as root outside the units' sandbox (``ExecStartPre=+``), so the run's
    ``ReadWritePaths=`` finds them. A directory whose parent is missing is left
    alone (e.g. ``/etc/nginx/conf.d`` without nginx): the backend says why.
    """
    made = []
    for b in built:
        for d in b.own_dirs():
            if not d.exists() and d.parent.is_dir():
                try:
                    d.mkdir()
                    d.chmod(0o755)  # what an admin's mkdir makes, whatever the unit's UMask=
                except FileExistsError:
                    continue
                except OSError as exc:
                    raise CfallowError(f"cannot create {d}: {exc.strerror or exc}") from None
                made.append(d)
    return made


def _will_exist(path: Path, grants: UnitGrants, own: set[Path]) -> bool:
    if path.exists() or path in grants.created:
        return True
    return grants.prepares and path in own and path.parent.is_dir()


def _under(path: Path, grant: Path) -> bool:
    """``path`` is ``grant`` or inside it, symlinks resolved as systemd resolves them
    (fail2ban's default socket is under ``/var/run``, the units grant ``/run``)."""
    p, g = Path(os.path.realpath(path)), Path(os.path.realpath(grant))
    return p == g or g in p.parents


def _unit_findings(
    cfg: config.Config, state: State, built: list[backend.AnyBackend], unit: Path
) -> list[Finding]:
    if not unit.is_file():
        return [Finding("unit", True, f"{unit} not installed: sandbox not checked")]
    grants = unit_grants(unit)
    if not grants.strict:
        return [Finding("unit", True, f"{unit}: no ProtectSystem=strict, every path writable")]
    own = {d for b in built for d in b.own_dirs()}
    out = []
    for what, path in _needs(cfg, state, built):
        covering = [(g, opt) for g, opt in grants.paths if _under(path, g)]
        if not covering:
            out.append(
                Finding(
                    "unit",
                    False,
                    f"{what} {path} is not in {unit.name}'s ReadWritePaths: the run cannot "
                    f"write it under systemd (add ReadWritePaths=-{path} with "
                    f"`systemctl edit {unit.name}`)",
                )
            )
        elif all(opt and not _will_exist(g, grants, own) for g, opt in covering):
            g = covering[0][0]
            out.append(
                Finding(
                    "unit",
                    False,
                    f"{unit.name}: ReadWritePaths=-{g} does not exist, so systemd drops it and "
                    f"the run cannot write {what} {path}: create it "
                    f"({'touch' if g.suffix == '.lock' else 'mkdir -p'} {g}), or install "
                    f"the shipped unit (its ExecStartPre=+ runs `cfallow prepare`)",
                )
            )
    return out or [Finding("unit", True, f"{unit}: ReadWritePaths cover every path")]


def run(inv: Invocation) -> int:
    """Print every finding; exit 0 if all passed, 2 if any failed."""
    opts = inv.opts
    found = findings(inv.config, inv.state, list(inv.backends), opts.units or installed_units())
    ok = all(f.ok for f in found)
    if opts.json:
        doc = {
            "ok": ok,
            "checks": [{"what": f.what, "ok": f.ok, "detail": f.detail} for f in found],
        }
        if not ok:
            doc.update(error="check failed", exit_code=EXIT_USAGE)
        report.write_json(sys.stdout, doc)
    else:
        for f in found:
            if f.ok and opts.quiet:
                continue
            print(f"{'ok' if f.ok else 'FAIL':<5} {f.what}: {f.detail}")
        bad = sum(not f.ok for f in found)
        print(f"check: {'all passed' if ok else f'{bad} problem(s)'}")
    return EXIT_OK if ok else EXIT_USAGE


def run_prepare(built: list[backend.AnyBackend]) -> int:
    """``cfallow prepare``: one line per directory created; exit 0."""
    for d in prepare(built):
        print(f"created {d}")
    return EXIT_OK
