"""``cfallow check``: everything a run needs, checked without changing anything.

The config (already parsed, every backend section built, when this runs),
each selected backend's preflight (``check()``), the paths a real run writes
(state directory, ``metrics_file``, what the backends name in ``write_paths()``)
and, when the systemd unit is installed, whether its sandbox lets the run
write them (``ReadWritePaths=``, ``StateDirectory=``, drop-ins included).
Exit 0 when all is well, 2 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cfallow import backend, config, report
from cfallow.errors import EXIT_OK, EXIT_USAGE, CfallowError
from cfallow.state import State


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


def _unit_paths(unit: Path) -> tuple[list[Path], bool]:
    """The writable paths the unit (and its ``.d`` drop-ins) grant, and whether
    ``ProtectSystem=strict`` makes everything else read-only."""
    files = [unit, *sorted((unit.parent / f"{unit.name}.d").glob("*.conf"))]
    paths: list[Path] = []
    strict = False
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            key, sep, value = line.strip().partition("=")
            if not sep:
                continue
            key, value = key.strip(), value.strip()
            if key == "ReadWritePaths":
                if not value:  # an empty assignment resets the list (systemd.exec)
                    paths = []
                paths += [Path(v.lstrip("-+")) for v in value.split()]
            elif key == "StateDirectory":
                paths += [Path("/var/lib") / v.split(":")[0] for v in value.split()]
            elif key == "ProtectSystem":
                strict = value == "strict"
    return paths, strict


def _granted(path: Path, grants: Iterable[Path]) -> bool:
    return any(path == g or g in path.parents for g in grants)


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
    cfg: config.Config, state: State, built: list[backend.AnyBackend], unit: Path
) -> list[Finding]:
    """Every check, in order: config, backends, paths, unit."""
    out = [Finding("config", True, str(cfg.path or "built-in defaults (no config file)"))]
    for b in built:
        try:
            b.check()
            out.append(Finding(f"backend {b.name}", True, "preflight passed"))
        except CfallowError as exc:
            out.append(Finding(f"backend {b.name}", False, str(exc)))
    if cfg.metrics_file is not None:
        from cfallow import metrics

        try:
            metrics.check_path(cfg.metrics_file)
            out.append(Finding("metrics_file", True, str(cfg.metrics_file)))
        except CfallowError as exc:
            out.append(Finding("metrics_file", False, str(exc)))
    for what, path in _needs(cfg, state, built):
        if what != "metrics_file directory":  # checked above: cfallow never creates it
            why = _writable(path)
            out.append(Finding(f"{what} {path}", why is None, why or "writable"))
    out += _unit_findings(cfg, state, built, unit)
    return out


def _unit_findings(
    cfg: config.Config, state: State, built: list[backend.AnyBackend], unit: Path
) -> list[Finding]:
    if not unit.is_file():
        return [Finding("unit", True, f"{unit} not installed: sandbox not checked")]
    grants, strict = _unit_paths(unit)
    if not strict:
        return [Finding("unit", True, f"{unit}: no ProtectSystem=strict, every path writable")]
    out = []
    for what, path in _needs(cfg, state, built):
        if _granted(path, grants):
            continue
        out.append(
            Finding(
                "unit",
                False,
                f"{what} {path} is not in {unit.name}'s ReadWritePaths: the run cannot "
                f"write it under systemd (add ReadWritePaths=-{path} with "
                f"`systemctl edit {unit.name}`)",
            )
        )
    return out or [Finding("unit", True, f"{unit}: ReadWritePaths cover every path")]


def run(
    args: argparse.Namespace,
    cfg: config.Config,
    state: State,
    ctx: backend.Context,
    built: list[backend.AnyBackend],
) -> int:
    """Print every finding; exit 0 if all passed, 2 if any failed."""
    found = findings(cfg, state, built, args.unit)
    ok = all(f.ok for f in found)
    if getattr(args, "json", False):
        doc = {
            "ok": ok,
            "checks": [{"what": f.what, "ok": f.ok, "detail": f.detail} for f in found],
        }
        if not ok:
            doc.update(error="check failed", exit_code=EXIT_USAGE)
        report.write_json(sys.stdout, doc)
    else:
        for f in found:
            if f.ok and getattr(args, "quiet", False):
                continue
            print(f"{'ok' if f.ok else 'FAIL':<5} {f.what}: {f.detail}")
        bad = sum(not f.ok for f in found)
        print(f"check: {'all passed' if ok else f'{bad} problem(s)'}")
    return EXIT_OK if ok else EXIT_USAGE
