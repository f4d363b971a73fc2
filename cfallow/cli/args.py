"""The command line's grammar: every subcommand and option, each repeated option defined once."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cfallow.cli import config
from cfallow.errors import UsageError

Sub = argparse.ArgumentParser


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are :class:`UsageError` (exit 2, one line)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _common() -> Parser:
    common = Parser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        default=argparse.SUPPRESS,
        help=f"config file (default {config.DEFAULT_CONFIG}, built-in defaults if absent)",
    )
    common.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        default=argparse.SUPPRESS,
        help=f"state directory (default {config.DEFAULT_STATE_DIR})",
    )
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="debug lines on stderr"
    )
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="only each backend's summary line (and warnings, errors on stderr)",
    )
    return common


def json_opt(sp: Sub) -> None:
    """``--json``."""
    sp.add_argument(
        "--json",
        action="store_true",
        help="the report as one JSON document on stdout (failures too)",
    )


def backend_opt(sp: Sub) -> None:
    """``--backend NAME`` (repeatable)."""
    sp.add_argument(
        "--backend", action="append", metavar="NAME", help="only this backend (repeatable)"
    )


def source_opt(sp: Sub) -> None:
    """``--source live|bundled``."""
    sp.add_argument(
        "--source",
        choices=("live", "bundled"),
        default="live",
        help="live: Cloudflare (API, then text lists); bundled: the shipped snapshot",
    )


def lock_opt(sp: Sub) -> None:
    """``--lock-timeout SECONDS``."""
    sp.add_argument(
        "--lock-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for another run's lock (default 60)",
    )


def _sync(s: Sub) -> None:
    s.add_argument("--dry-run", action="store_true", help="show the plan; write nothing")
    json_opt(s)
    backend_opt(s)
    s.add_argument(
        "--source",
        choices=("live", "bundled", "last-known-good"),
        default="live",
        help="live: Cloudflare (API, then text lists); bundled: the shipped snapshot; "
        "last-known-good: the list this host runs on (else the snapshot), no fetch",
    )
    s.add_argument(
        "--offline",
        action="store_true",
        help="no network: the last-known-good list (else the bundled snapshot)",
    )
    s.add_argument(
        "--scheduled",
        action="store_true",
        help="as the timer runs it: fetch only when [source] refresh (or retry) is due",
    )
    s.add_argument(
        "--source-file",
        type=Path,
        metavar="FILE",
        help="no network: a list fetched elsewhere (`cfallow ranges --json` on the "
        "controller), checked and guarded like a fetched one",
    )
    s.add_argument(
        "--force",
        action="store_true",
        help="accept a list the shrink or growth guard refuses (it becomes the accepted list)",
    )
    s.add_argument(
        "--verify",
        action="store_true",
        help="apply the plan in a scratch copy of this host's firewall first; "
        "touch the host only if Cloudflare gets in there (else exit 5)",
    )
    lock_opt(s)


def _status(st: Sub) -> None:
    json_opt(st)
    backend_opt(st)
    source_opt(st)
    st.add_argument("--offline", action="store_true", help="compare with the last-known-good list")


def _check(ck: Sub) -> None:
    backend_opt(ck)
    ck.add_argument(
        "--unit",
        type=Path,
        action="append",
        metavar="FILE",
        help="an installed systemd unit whose sandbox to compare (repeatable; default: "
        "cfallow.service and cfallow-restore.service where systemd finds them, "
        "/etc/systemd/system first, /lib/systemd/system last, with their drop-ins; "
        "absent: skipped)",
    )
    json_opt(ck)


def _verify(v: Sub) -> None:
    json_opt(v)
    backend_opt(v)
    v.add_argument("--uplink", metavar="IFACE", help="the interface traffic arrives on")
    v.add_argument("--timeout", type=float, default=0.5, metavar="S", help="wait for a dropped SYN")


def _remove(rm: Sub) -> None:
    backend_opt(rm)
    rm.add_argument("--dry-run", action="store_true", help="show what would go; remove nothing")
    json_opt(rm)
    lock_opt(rm)


def _ranges(r: Sub) -> None:
    r.add_argument(
        "--source",
        choices=("live", "bundled", "last-known-good"),
        default="live",
        help="live: Cloudflare (API, then text lists); bundled: the shipped snapshot; "
        "last-known-good: the list this host runs on (with its date and etag)",
    )
    json_opt(r)


def _accept(a: Sub) -> None:
    source_opt(a)
    a.add_argument("--dry-run", action="store_true", help="show the difference; record nothing")
    lock_opt(a)


COMMANDS = (
    ("ranges", "print the validated Cloudflare list", _ranges),
    ("sync", "bring every configured backend in step with the list", _sync),
    ("status", "compare every backend with the list (read-only; exit 3 on drift)", _status),
    ("backends", "list installed backend plugins and whether each can run here", json_opt),
    (
        "check",
        "check the config, each backend's preflight and the paths a run writes "
        "(read-only; exit 0 or 2)",
        _check,
    ),
    (
        "prepare",
        "create the directories the configured backends write into (the systemd units "
        "run this outside their sandbox before each run)",
        None,
    ),
    ("verify", "prove in scratch namespaces that Cloudflare gets in (exit 5 if not)", _verify),
    ("remove", "remove everything cfallow owns from the backends", _remove),
    (
        "accept",
        "show the list against the accepted one and accept it: the growth guard's new anchor "
        "(the ceiling still holds)",
        _accept,
    ),
)


class _Version(argparse.Action):
    """``--version``: the installed version, read only when asked for."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        import sys

        import cfallow

        sys.stdout.write(f"cfallow {cfallow.__version__}\n")
        parser.exit()


#: Top-level options that take a value (the word after them is not the command).
_VALUED = ("--config", "--state-dir")
#: Top-level options that take none (``-v`` may be repeated: ``-vv``).
_FLAGS = ("-q", "--quiet", "--verbose")


def command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs, when only the top-level options spelled in full come
    before it; None for anything else (``-h``, ``--version``, an abbreviation, an
    unknown word): that gets the whole grammar."""
    words = iter(argv)
    for word in words:
        if word in _VALUED:
            next(words, None)
        elif (
            word in _FLAGS
            or word.startswith(("--config=", "--state-dir="))
            or (word[:2] == "-v" and set(word[1:]) == {"v"})
        ):
            continue
        else:
            return word if word in {name for name, _, _ in COMMANDS} else None
    return None


def parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The command line: every command, or with ``argv`` only the command it names (a
    run builds the one subparser it parses; help and errors get the whole grammar)."""
    common = _common()
    p = Parser(
        prog="cfallow",
        parents=[common],
        description="Keep allowlists in step with Cloudflare's published IP ranges.",
    )
    p.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    only = None if argv is None else command_of(argv)
    for name, text, fill in COMMANDS:
        if only is not None and name != only:
            continue
        sp = sub.add_parser(name, help=text, parents=[common], description=text)
        if fill is not None:
            fill(sp)
    return p
