"""What the CLI calls: expectations from the configured backends, the scratch apply, the report."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from cfallow import backend, engine
from cfallow.errors import VerifyFailed
from cfallow.model import Networks
from cfallow.runner import Runner
from cfallow.verify import Expectation, Probe, Report, prove
from cfallow.verify.lab import PREFIX, CannotVerify, Lab, alive

TMP_PREFIX = PREFIX


class Terminated(BaseException):
    """SIGTERM arrived: unwind so every scratch namespace is deleted on the way out."""


class Stopped(VerifyFailed):
    """SIGTERM stopped the verify (the scratch namespaces were deleted on the way out)."""

    exit_code = 128 + signal.SIGTERM

    def __init__(self) -> None:
        super().__init__("verify: terminated; the scratch namespaces were removed")


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the duration (cleanup runs in ``finally``)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def expectations(backends: Sequence[backend.AnyBackend]) -> tuple[list[Expectation], list[str]]:
    """What each host-firewall backend promises (mode, TCP ports, families); notes for the rest.

    A backend that decides elsewhere than the kernel says why in a ``cannot_verify``
    string (a WAF, say): its note is "cannot verify: WHY", and the run goes on.
    """
    wants, notes = [], []
    for b in backends:
        p = b.promise()
        if p is None and b.cannot_verify:
            notes.append(f"{b.name}: cannot verify: {b.cannot_verify}")
        elif p is None:
            notes.append(f"{b.name}: not a firewall on this host: not probed")
        elif p.protocol != "tcp":
            notes.append(f"{b.name}: protocol {p.protocol}: only TCP is probed")
        elif not p.ports:
            notes.append(f"{b.name}: no TCP port to probe")
        else:
            wants.append(Expectation(b.name, p.mode, p.ports, p.families, p.allowed))
    return wants, notes


def clean_temp_leftovers() -> None:
    """Temp dirs of killed runs (``cfverify-PID-*`` with a dead PID)."""
    tmp = Path(tempfile.gettempdir())
    for path in tmp.glob(f"{TMP_PREFIX}*"):
        pid = path.name[len(TMP_PREFIX) :].split("-")[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def scratch_apply(
    hosts: Sequence[backend.AnyBackend],
    sections: dict[str, dict[str, object]],
    ctx: backend.Context,
    desired: Networks,
    tmp: str,
) -> Any:
    """A ``before_probe`` for :func:`cfallow.verify.prove`: the plan applied in the scratch origin.

    The backends are built again, from their :meth:`~cfallow.backend.Backend.scratch_section`,
    on a runner that runs every command inside the scratch origin.
    """

    def apply(lab: Lab) -> list[str]:
        runner = Runner(prefix=lab.exec_prefix(), env=ctx.runner.env)
        sctx = replace(ctx, runner=runner, state_dir=Path(tmp) / "state")
        (Path(tmp) / "state").mkdir(exist_ok=True)
        built = []
        for host in hosts:
            section = host.scratch_section(dict(sections.get(host.name, {})), Path(tmp))
            if section is None:
                raise CannotVerify(
                    f"cannot verify: {host.name} cannot be applied to a scratch copy "
                    "(it does not write through commands alone); run cfallow verify after sync"
                )
            built.append(backend.build(host.name, section, sctx))
        results = engine.run(built, desired, dry_run=False).results
        failed = [f"{r.name}: {r.error}" for r in results if r.error is not None]
        if failed:
            raise CannotVerify(
                "cannot verify: the plan fails in the scratch copy: " + "; ".join(failed)
            )
        return [f"{r.name}: plan applied in the scratch copy ({_count(r)})" for r in results]

    return apply


def _count(r: engine.BackendResult) -> str:
    if r.plan is None or not r.plan.changed:
        return "no change"
    return f"+{len(r.plan.add)} -{len(r.plan.remove)}"


def verify_ranges(
    runner: Runner,
    desired: Networks,
    wants: list[Expectation],
    *,
    uplink: str | None,
    timeout: float,
    before: Any = None,
) -> Report:
    """:func:`cfallow.verify.prove` with SIGTERM unwinding and leftovers of killed runs removed."""
    try:
        with sigterm_unwinds():
            clean_temp_leftovers()
            return prove(
                runner, desired, wants, uplink=uplink, timeout=timeout, before_probe=before
            )
    except Terminated:
        raise Stopped() from None


@contextlib.contextmanager
def scratch_dir() -> Iterator[str]:
    """A private temp dir named so a killed run's is recognised; always removed."""
    path = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_text(out: TextIO, report: Report, *, quiet: bool = False) -> None:
    """The text report: what each backend promises, a grid of range x family x port with
    the kernel's verdict, the deciding rule of each failed cell, then the verdict line
    (``quiet``: the verdict line alone)."""
    from cfallow.report import table

    lines: list[str] = []
    if not quiet:
        for e in report.expectations:
            ports = ",".join(str(p) for p in e.ports)
            fams = "+".join(f"IPv{v}" for v in e.families)
            lines.append(f"{e.backend}: {e.mode} on TCP {ports} ({fams})")
        lines += grid(report.probes)
        lines += [f"note: {note}" for note in report.notes]
    n = len(report.probes)
    if report.ok:
        lines.append(f"verify: ok ({n} probes)")
    else:
        lines.append(f"verify: FAILED ({len(report.failures())} of {n} probes)")
    for line in lines:
        for part in table.wrap(line, indent=6 if line.startswith("  ") else 4):
            out.write(part + "\n")


#: Ports side by side in one grid (more go to the next grid): keeps it within 100 columns.
GRID_PORTS = 6


def _cell(probes: Sequence[Probe]) -> str:
    verdicts = sorted({p.verdict for p in probes})
    text = verdicts[0] if len(verdicts) == 1 else "mixed"
    return text if all(p.ok for p in probes) else text + " *"


def grid(probes: Sequence[Probe]) -> list[str]:
    """One row per Cloudflare range (its first and last address) and one for the outsiders
    of each family, one column per port; ``*`` marks what the mode did not promise, and
    the rule that decided each such cell follows the grid."""
    from cfallow.report import table

    if not probes:
        return []
    cells: dict[tuple[int, str], dict[int, list[Probe]]] = {}
    for p in probes:
        row = (p.version, p.net if p.kind == "cloudflare" else "outsiders")
        cells.setdefault(row, {}).setdefault(p.port, []).append(p)
    ports = sorted({p.port for p in probes})
    lines: list[str] = []
    for at in range(0, len(ports), GRID_PORTS):
        some = ports[at : at + GRID_PORTS]
        rows: list[list[str]] = []
        for (version, net), by_port in cells.items():
            label = net
            if net == "outsiders":
                label = f"outsiders ({len({p.source for ps in by_port.values() for p in ps})})"
            marks = [_cell(by_port[q]) if q in by_port else "" for q in some]
            rows.append([f"IPv{version}", label, *marks])
        lines += table.render(["family", "range", *(f"TCP {q}" for q in some)], rows)
    return lines + _failed(probes, cells)


def _failed(
    probes: Sequence[Probe], cells: dict[tuple[int, str], dict[int, list[Probe]]]
) -> list[str]:
    """The ``*`` cells by what decided them: ``drop, should be accepted; decided by RULE``,
    then the family, port and ranges (``every Cloudflare range`` when it is all of them)."""
    groups: dict[tuple[str, str, str], dict[tuple[int, int], list[str]]] = {}
    for p in probes:
        if p.ok:
            continue
        want = "accepted" if p.want == "accept" else "refused"
        where = groups.setdefault((p.verdict, want, p.decided), {})
        nets = where.setdefault((p.version, p.port), [])
        name = p.net or f"outsider {p.source}"
        if name not in nets:
            nets.append(name)
    lines = []
    for (verdict, want, decided), where in groups.items():
        lines.append(f"* {verdict}, should be {want}; decided by {decided}")
        for (version, port), nets in where.items():
            every = [n for (v, n) in cells if v == version and n != "outsiders"]
            what = "every Cloudflare range" if sorted(nets) == sorted(every) else " ".join(nets)
            lines.append(f"  IPv{version} TCP {port}: {what}")
    return lines
