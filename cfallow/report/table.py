"""Text that fits a terminal: summary words, tables and the verify grid (at most
:data:`WIDTH` columns; a long cell wraps under its own column)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from cfallow.engine import BackendResult

#: No text line is wider than this.
WIDTH = 100


def state(result: BackendResult, *, verb: str, dry_run: bool) -> str:
    """What happened to one backend, in words: ``in sync``, ``changed``, ``would change
    (dry run)``, ``differs``, ``removed``, ``would remove (dry run)``, ``failed``."""
    if result.error is not None:
        return "failed"
    plan = result.plan
    changed = plan is not None and plan.changed
    dry = " (dry run)" if dry_run and verb != "status" else ""
    if verb == "remove":
        if not changed:
            return "nothing to remove" + dry
        return ("would remove" if dry_run else "removed") + dry
    if not changed:
        return "in sync" + dry
    if verb == "status":
        return "differs"
    return ("would change" if dry_run else "changed") + dry


def counts(result: BackendResult) -> tuple[int, int, int] | None:
    """Added, removed, kept (``None`` for a failed backend)."""
    plan = result.plan
    if result.error is not None or plan is None:
        return None
    return len(plan.add), len(plan.remove), len(plan.kept)


def wrap(line: str, indent: int = 4) -> list[str]:
    """``line`` in lines of at most :data:`WIDTH` columns, continued ``indent`` in (a word
    longer than that, a long path, stays whole: it must copy and paste as one)."""
    if len(line) <= WIDTH:
        return [line]
    return textwrap.wrap(
        line,
        WIDTH,
        subsequent_indent=" " * indent,
        break_long_words=False,
        break_on_hyphens=False,
    )


def render(header: Sequence[str], rows: Sequence[Sequence[str]], *, right: int = 0) -> list[str]:
    """Columns sized to their widest cell; the last column wraps to fit :data:`WIDTH`.

    ``right``: how many columns before the last are right-aligned (numbers).
    """
    cols = len(header)
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(cols - 1)]
    lead = sum(widths) + 2 * (cols - 1)
    room = max(WIDTH - lead, 20)
    out = []
    for row in (header, *rows):
        cells = []
        for i, cell in enumerate(row[:-1]):
            numeric = cols - 1 - right <= i
            cells.append(cell.rjust(widths[i]) if numeric else cell.ljust(widths[i]))
        last = textwrap.wrap(row[-1], room, break_long_words=False, break_on_hyphens=False) or [""]
        out.append(("  ".join(cells) + "  " + last[0]).rstrip())
        out += [" " * lead + more for more in last[1:]]
    return out


def status_rows(results: Sequence[BackendResult]) -> list[str]:
    """``status`` as a table: backend, state, + / - / =, note (drift and notes)."""
    rows = []
    for r in results:
        n = counts(r)
        plan = r.plan
        note = ""
        if r.error is not None:
            note = "; ".join(["the error is on stderr", *(plan.notes if plan else ())])
        elif plan is not None:
            note = "; ".join([*(f"drift: {d}" for d in plan.drift), *plan.notes])
        nums = [str(v) for v in n] if n is not None else ["-", "-", "-"]
        rows.append([r.name, state(r, verb="status", dry_run=True), *nums, note])
    return render(["backend", "state", "+", "-", "=", "note"], rows, right=3)
