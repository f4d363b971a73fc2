"""Run the real CLI in-process (fast) or as a subprocess (end to end)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cfallow.cli.commands import main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cloudflare"


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> Result:
    capsys.readouterr()
    rc = main(list(args))
    cap = capsys.readouterr()
    return Result(rc, cap.out, cap.err)


def run_proc(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "cfallow", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def write_config(path: Path, base: str, *, backends: str = "", **source: Any) -> Path:
    """A config whose sources point at ``base`` (a local test server)."""
    lines = [
        "[source]",
        f'api_url = "{base}/client/v4/ips"',
        f'text_urls = ["{base}/ips-v4", "{base}/ips-v6"]',
        f"timeout = {source.pop('timeout', 2)}",
        f"attempts = {source.pop('attempts', 2)}",
        f"backoff = {source.pop('backoff', 0.01)}",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in source.items()]
    path.write_text("\n".join(lines) + "\n\n" + backends)
    return path


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


def plant_lkg(state: Path, fixture: str = "api-ips.json", etag: str = "e1") -> None:
    """A last-known-good list in ``state`` (made here), from one of the real responses."""
    state.mkdir(exist_ok=True)
    api = json.loads(fixture_text(fixture))["result"]
    doc = {"ipv4": api["ipv4_cidrs"], "ipv6": api["ipv6_cidrs"], "etag": etag, "fetched_at": 1e9}
    (state / "last-known-good.json").write_text(json.dumps(doc))


def unwrapped(text: str) -> str:
    """``text`` with every run of whitespace one space: a long line the CLI wrapped to fit
    100 columns (its continuation indented) reads as the one line it stands for."""
    return " ".join(text.split())
