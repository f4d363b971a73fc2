"""A run builds only the subparser of the command it runs, and parses as the whole grammar.

Building every subcommand's parser was about 17 million instructions of a run that finds
everything in step; help, errors, abbreviations and completion still get the whole grammar.
"""

from __future__ import annotations

import pytest

from cfallow.cli.args import COMMANDS, command_of, parser
from cfallow.errors import UsageError


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["-q", "sync", "--offline"], "sync"),
        (["--config", "sync", "status"], "status"),  # a file named like a command
        (["--state-dir=/s", "-vv", "ranges"], "ranges"),
        (["--verbose", "--quiet", "remove", "--dry-run"], "remove"),
        (["--conf", "x", "sync"], None),  # an abbreviation: the whole grammar decides
        (["-h", "sync"], None),
        (["--version"], None),
        (["bogus"], None),
        ([], None),
    ],
)
def test_the_command_word_is_found_only_where_it_is_certain(
    argv: list[str], command: str | None
) -> None:
    assert command_of(argv) == command


@pytest.mark.parametrize(
    "argv",
    [
        ["-q", "sync", "--offline"],
        ["--config", "/c.toml", "status", "--json", "--backend", "iptables"],
        ["check", "--unit", "/u"],
        ["verify", "--uplink", "eth0", "--timeout", "2"],
        ["accept", "--dry-run"],
        ["prepare"],
    ],
)
def test_one_subparser_parses_as_the_whole_grammar(argv: list[str]) -> None:
    one = parser(argv)
    assert one.parse_args(argv) == parser().parse_args(argv)
    (sub,) = [a for a in one._actions if a.dest == "command"]
    assert list(sub.choices or ()) == [command_of(argv)]


def test_an_unknown_command_is_refused_with_every_command_named() -> None:
    with pytest.raises(UsageError) as caught:
        parser(["bogus"]).parse_args(["bogus"])
    assert all(repr(name) in str(caught.value) for name, _, _ in COMMANDS)


def test_a_bad_option_of_the_command_is_refused_as_before() -> None:
    argv = ["sync", "--bogus"]
    said = []
    for grammar in (parser(argv), parser()):
        with pytest.raises(UsageError) as caught:
            grammar.parse_args(argv)
        said.append(str(caught.value))
    assert said == ["unrecognized arguments: --bogus"] * 2
