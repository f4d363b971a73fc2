"""The one subprocess runner: argv lists, and environment layering."""

from __future__ import annotations

import sys

import pytest

from cfallow.runner import Runner

SHOW = "import os; print(os.environ.get('A'), os.environ.get('B'), os.environ['LC_ALL'])"


def test_a_command_s_own_env_goes_over_the_runner_s() -> None:
    runner = Runner(env={"A": "runner", "B": "runner"})
    out = runner.run([sys.executable, "-c", SHOW], env={"B": "call"}).stdout.split()
    assert out == ["runner", "call", "C"]
    assert runner.run([sys.executable, "-c", SHOW]).stdout.split() == ["runner", "runner", "C"]


def test_a_shell_string_is_refused() -> None:
    with pytest.raises(TypeError):
        Runner().run("echo hi")  # type: ignore[arg-type]
