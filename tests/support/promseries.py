"""Turn metrics files cfallow wrote into ``promtool test rules`` input series.

A test runs the real CLI once per kind of run and keeps the file each run wrote; a
scenario is a sequence of those files, one per timer run. Timestamps that a
run sets to its own time (the last run; the last success when the run succeeded; the
fetch when it succeeded) follow the test's clock; the others keep their distance from
the first run (a failed run keeps the last success it found, a held list keeps its
fetch time), so a list can age and a failure can last.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

Key = tuple[str, tuple[tuple[str, str], ...]]
TARGET = (("instance", "web1"), ("job", "node"))


def read(path: Path) -> dict[Key, float]:
    """A metrics file's samples by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): float(s.value)
        for fam in text_string_to_metric_families(path.read_text())
        for s in fam.samples
    }


def _follows_clock(name: str, run: dict[Key, float]) -> bool:
    if name == "cfallow_last_run_timestamp_seconds":
        return True
    if name == "cfallow_last_success_timestamp_seconds":
        return run.get(("cfallow_last_run_success", ()), 0) == 1
    if name == "cfallow_source_fetched_timestamp_seconds":
        return run.get(("cfallow_source_fetch_success", ()), 0) == 1
    return False


def _values(
    runs: Sequence[dict[Key, float] | None], interval: int
) -> dict[Key, list[float | None]]:
    first = next(r for r in runs if r is not None)
    base = first[("cfallow_last_run_timestamp_seconds", ())]
    keys = sorted({k for r in runs if r is not None for k in r})
    out: dict[Key, list[float | None]] = {k: [] for k in keys}
    for i, run in enumerate(runs):
        now = float(i * interval)
        if run is None:  # no run at this step: the collector keeps exporting the old file
            for key in keys:
                out[key].append(out[key][-1])
            continue
        for key in keys:
            name = key[0]
            if key not in run:
                out[key].append(None)
            elif _follows_clock(name, run):
                out[key].append(now)
            elif name == "cfallow_source_age_seconds":
                fetched = ("cfallow_source_fetched_timestamp_seconds", ())
                stamp = now if _follows_clock(fetched[0], run) else run[fetched] - base
                out[key].append(now - stamp)
            elif name.endswith("_timestamp_seconds") and run[key] > 0:
                out[key].append(run[key] - base)
            else:
                out[key].append(run[key])
    return out


def _number(v: float) -> str:
    return str(int(v)) if v == int(v) else repr(v)


def _encode(values: Sequence[float | None]) -> str:
    """promtool's expanding notation: ``a+bxn`` for runs of a constant step, ``_xn`` gaps."""
    parts: list[str] = []
    i = 0
    while i < len(values):
        v = values[i]
        j = i
        if v is None:
            while j + 1 < len(values) and values[j + 1] is None:
                j += 1
            parts.append(f"_x{j - i + 1}" if j > i else "_")
        else:
            nxt = values[i + 1] if i + 1 < len(values) else None
            step = nxt - v if nxt is not None else 0.0
            while j + 1 < len(values):
                later, here = values[j + 1], values[j]
                if later is None or here is None or later - here != step:
                    break
                j += 1
            sign = "+" if step >= 0 else "-"
            parts.append(f"{_number(v)}{sign}{_number(abs(step))}x{j - i}" if j > i else _number(v))
        i = j + 1
    return " ".join(parts)


def series(runs: Sequence[Path | None], *, interval: int = 240) -> list[dict[str, str]]:
    """``input_series`` for runs ``interval`` seconds apart, each given by the metrics file
    it wrote (``None``: no run then, the file stays as it was)."""
    read_runs = [read(r) if r is not None else None for r in runs]
    out = []
    for (name, labels), values in _values(read_runs, interval).items():
        inner = ",".join(f'{k}="{v}"' for k, v in (*labels, *TARGET))
        out.append({"series": f"{name}{{{inner}}}", "values": _encode(values)})
    return out
