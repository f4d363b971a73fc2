"""Docs that cannot drift from the code: flags, config keys, paths, install hints."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

from support.fresh.root import readme_block

from cfallow.cli.commands import _parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
#: The command table, exit codes, output and configuration (moved out of the README).
REFERENCE = (ROOT / "docs" / "reference.md").read_text()
DOCS = README + "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
UNIT = (ROOT / "systemd" / "cfallow.service").read_text()
GETTERS = {"get_str", "get_bool", "get_int", "get_float", "get_choice", "get_strings", "raw"}
GLOBAL = {"--config", "--state-dir", "--verbose", "--quiet", "--help", "--version"}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _table_row(command: str) -> str:
    rows = [ln for ln in REFERENCE.splitlines() if ln.startswith(f"| `cfallow {command}")]
    assert len(rows) == 1, f"docs/reference.md's command table has no single row for {command}"
    return rows[0]


def test_every_flag_help_lists_is_in_the_reference_command_table() -> None:
    """(Was ``..._in_the_readme_command_table``: the table moved to docs/reference.md.)"""
    missing = []
    for name, sub in _subcommands().items():
        row = _table_row(name)
        for action in sub._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag not in GLOBAL and flag not in row:
                    missing.append(f"{name} {flag}")
    assert missing == []
    for flag in sorted(GLOBAL - {"--help", "--version"}):
        assert f"`{flag}" in REFERENCE, flag


def _keys_read_by_the_code() -> set[str]:
    """Every literal key passed to a Section getter (or ``parse_ports``) in the code."""
    keys: set[str] = set()
    files = [*(ROOT / "cfallow").rglob("*.py"), *(ROOT / "backends").rglob("*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args = node.args
            if name in GETTERS and args:
                first = args[0]
            elif name in ("parse_ports", "_prefix") and len(args) >= 2:
                first = args[1]
            else:
                continue
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                keys.add(first.value)
    return keys


def test_every_config_key_the_code_reads_is_documented() -> None:
    keys = _keys_read_by_the_code() | {"ports", "enabled"}
    assert {"metrics_file", "api_url", "parent", "security_group_ids", "jails"} <= keys
    undocumented = sorted(
        k for k in keys if not re.search(rf"(^|\s){re.escape(k)} =|`{re.escape(k)}`", DOCS, re.M)
    )
    assert undocumented == []


def test_every_metrics_example_path_is_writable_under_the_unit() -> None:
    """One example path everywhere, and it is in the unit's ReadWritePaths."""
    grants = {
        p.lstrip("-")
        for ln in UNIT.splitlines()
        if ln.startswith("ReadWritePaths=")
        for p in ln.split("=", 1)[1].split()
    }
    texts = [DOCS, *(p.read_text() for p in (ROOT / "ansible").rglob("*.md"))]
    texts += [(ROOT / "ansible" / "roles" / "cfallow" / "defaults" / "main.yml").read_text()]
    found = set()
    for text in texts:
        found |= set(re.findall(r"metrics_file[\"'`:= ]+\"?(/[^\s\"'`]+\.prom)", text))
    assert found, "no metrics_file example found"
    for path in found:
        assert str(Path(path).parent) in grants, (path, sorted(grants))
    assert len(found) == 1, found


def test_no_install_hint_points_at_a_package_index() -> None:
    """cfallow is on no index: `pip install cfallow[...]` would install someone else's package."""
    bad = re.compile(r"pip install\s+(--\S+\s+)*['\"]?cfallow\b")
    texts = {
        str(p.relative_to(ROOT)): p.read_text()
        for p in [
            *ROOT.glob("*.md"),
            *(ROOT / "docs").glob("*.md"),
            *(ROOT / "ansible").rglob("*.md"),
            *(ROOT / "ansible").rglob("*.yml"),
            *(ROOT / "cfallow").rglob("*.py"),
            *(ROOT / "backends").rglob("*.py"),
        ]
    }
    hits = [f"{name}: {m.group(0)}" for name, text in texts.items() for m in bad.finditer(text)]
    assert hits == []


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """The quick start's test command is what CI runs: .ci/run's last line, verbatim."""
    (command,) = readme_block("run-tests").strip().splitlines()
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip()]
    assert ci[-1] == command, (ci[-1], command)
    assert "export CI=true" in ci


def test_quick_start_installs_cfallow_alone() -> None:
    """The first command installs nothing but cfallow (no bootstrap, no apt) and dry-runs."""
    (command,) = readme_block("quick-start").strip().splitlines()
    assert "bootstrap" not in command and "apt" not in command, command
    assert command.endswith("cfallow sync --dry-run"), command
