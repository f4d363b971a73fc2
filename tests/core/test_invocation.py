"""The CLI builds one frozen invocation and passes values one way: the command line is
read once, a dry run is decided once, the fetch log is read once a run."""

from __future__ import annotations

import ast
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from support.cli_helpers import fixture_text, run_cli, write_config

from cfallow.cli.args import parser
from cfallow.cli.config import SourceConfig
from cfallow.cli.invocation import Options
from cfallow.fetch import cadence
from cfallow.fetch.cadence import FETCH_LOG

CLI = Path(__file__).resolve().parents[2] / "cfallow" / "cli"
_reads: list[list[str]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _reads and event == "open" and str(args[0]).endswith(FETCH_LOG) and args[1] in ("r", None):
        _reads[-1].append(str(args[0]))


sys.addaudithook(_audit)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status"], Options("status", dry_run=True)),
        (["sync"], Options("sync")),
        (
            shlex.split(
                "-v --state-dir /s sync --dry-run --json --backend a --backend b --offline "
                "--scheduled --force --verify --lock-timeout 5 --source bundled "
                "--source-file /l.json"
            ),
            Options(
                "sync",
                state_dir=Path("/s"),
                verbose=1,
                json=True,
                dry_run=True,
                backends=("a", "b"),
                source="bundled",
                source_file=Path("/l.json"),
                offline=True,
                scheduled=True,
                force=True,
                verify=True,
                lock_timeout=5.0,
            ),
        ),
        (["-q", "remove", "--dry-run"], Options("remove", quiet=True, dry_run=True)),
        (["accept", "--dry-run"], Options("accept", dry_run=True)),
        (
            ["--config", "/c.toml", "ranges", "--source", "last-known-good"],
            Options("ranges", config=Path("/c.toml"), source="last-known-good"),
        ),
        (
            ["check", "--unit", "/u1", "--unit", "/u2"],
            Options("check", units=(Path("/u1"), Path("/u2"))),
        ),
        (
            ["verify", "--uplink", "eth0", "--timeout", "2"],
            Options("verify", uplink="eth0", timeout=2.0),
        ),
    ],
)
def test_the_command_line_is_read_once_into_options(argv: list[str], expected: Options) -> None:
    opts = Options.parse(parser().parse_args(argv))
    assert opts == expected
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.dry_run = False  # type: ignore[misc]


def _cli_sources() -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text()) for p in sorted(CLI.glob("*.py"))}


def test_only_the_invocation_reads_the_namespace_and_decides_a_dry_run() -> None:
    namespace, deciders = set(), set()
    for name, tree in _cli_sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "Namespace":
                namespace.add(name)
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr":
                namespace.add(name)
            if isinstance(node, (ast.If, ast.IfExp, ast.BoolOp, ast.UnaryOp)):
                test = node.test if isinstance(node, (ast.If, ast.IfExp)) else node
                if any(
                    getattr(n, "attr", getattr(n, "id", "")) == "dry_run" for n in ast.walk(test)
                ):
                    deciders.add(name)
    assert namespace == {"invocation.py"}
    assert deciders == {"invocation.py"}


def test_a_run_reads_the_fetch_log_once(
    tmp_path: Path,
    httpserver: HTTPServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    httpserver.expect_request("/client/v4/ips").respond_with_data(fixture_text("api-ips.json"))
    config = write_config(
        tmp_path / "c.toml",
        httpserver.url_for("").rstrip("/"),
        backends=f'[backends.fake]\npath = "{tmp_path / "target.json"}"\n',
    )
    base = ("--config", str(config), "--state-dir", str(tmp_path / "state"))
    now = 1_800_000_000
    monkeypatch.setenv("CFALLOW_NOW", str(now))
    assert run_cli(capsys, *base, "sync").rc == 0  # the first run writes the log
    for args in (("sync",), ("sync", "--scheduled"), ("status",), ("sync", "--dry-run")):
        now += 30 * 86400  # the list is a month old: a scheduled run fetches
        if "--scheduled" in args:  # at this host's point (4 a period for an overdue list)
            quarter = SourceConfig().refresh / cadence.MAX_AGE
            offset = cadence.phase(tmp_path / "state") * quarter
            now = int(offset + ((now - offset) // quarter + 1) * quarter) + 1
        monkeypatch.setenv("CFALLOW_NOW", str(now))
        asked = len(httpserver.log)
        _reads.append([])
        try:
            r = run_cli(capsys, *base, *args)
            reads = _reads[-1]
        finally:
            _reads.pop()
        assert r.rc == 0, r.err
        assert len(httpserver.log) == asked + 1  # it fetched
        assert len(reads) == 1, (args, reads)
