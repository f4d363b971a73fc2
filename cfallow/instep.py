"""A run that found everything in step, said again without planning: the in-step record.

Most timer runs find nothing to do. Such a ``cfallow sync`` (a real one: no
``--dry-run``, ``--json`` or ``-v``) records in the state directory what its outcome
rested on:

* its command line, environment (what varies run to run under systemd left out),
  working directory, user and whether its output went to the journal;
* the interpreter and every file of cfallow it ran (an upgrade is another run);
* the config file (a digest of its bytes, its owner and mode, its directories');
* every file of the state directory (the list, the fetch log, the backends' memos);
* each backend's witnesses, with the answers its read had: nf_tables' ruleset
  generation, the legacy tables' digest, the programs that read them
  (:meth:`cfallow.backend.Backend.witnesses`);
* the last moment its output stays true (the bundled snapshot's age in days) and,
  for ``--scheduled``, what decides whether a fetch is due.

The next run with the same command line asks all of it again, holding the state
lock, and if every answer is the recorded one it prints what that run printed and
exits as it did, without importing the engine, the model or any backend: planning
again would find the same. Anything else (a part that differs, cannot be read or is
missing, the lock held by another run, a fetch due) is a full run, as always.

A run records only when it changed nothing, failed nowhere, fetched nothing, wrote
no metrics file, sent no notification, had no warning that repeats in short form,
and every backend gave witnesses (one whose state lives elsewhere, a web server's
file, Fail2Ban's server, a cloud API, gives none: a run with it always plans).
``CFALLOW_NO_INSTEP=1`` turns the record off.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
import sys
import time

# A run said again imports only what it asks with: typing, pathlib, shutil and logging
# would each add a tenth to its cost (mypy takes any TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path
    from typing import Any, TextIO

    from cfallow.netfilter.witness import Witness

FILE = "in-step.json"
LOCK_FILE = "lock"  # the state directory's lock (cfallow.fetch.state.LOCK_FILE)
FORMAT = 1
DEFAULT_STATE_DIR = "/var/lib/cfallow"  # cfallow.cli.config's
DEFAULT_CONFIG = "/etc/cfallow/config.toml"
#: Set by systemd (or the shell) anew for each run; cfallow reads none of them.
VOLATILE = frozenset(
    {
        "CFALLOW_NOW",  # the test clock: the cadence asks it again, the record's end too
        "INVOCATION_ID",
        "JOURNAL_STREAM",  # stands in the key as whether stdout is the journal
        "SYSTEMD_EXEC_PID",
        "TRIGGER_UNIT",
        "TRIGGER_PATH",
        "TRIGGER_TIMER_REALTIME_USEC",
        "TRIGGER_TIMER_MONOTONIC_USEC",
        "MANAGERPID",
        "OLDPWD",
        "_",
    }
)
#: The command line a record may stand for: ``sync`` and these options (exact
#: spellings; any other word, an abbreviation included, is a full run).
FLAGS = frozenset({"-q", "--quiet", "--offline", "--scheduled"})
VALUED = frozenset({"--config", "--state-dir", "--backend", "--lock-timeout"})


def where(argv: Sequence[str]) -> tuple[str, str] | None:
    """The state directory and config file of a command line a record may stand for;
    None for any other."""
    state, config, command = DEFAULT_STATE_DIR, DEFAULT_CONFIG, None
    words = iter(argv)
    for word in words:
        name, eq, value = word.partition("=")
        if word in FLAGS:
            continue
        if word == "sync" and command is None:
            command = word
            continue
        if name not in VALUED:
            return None
        if not eq:
            value = next(words, "")
            if not value:
                return None
        if name == "--state-dir":
            state = value
        elif name == "--config":
            config = value
    return (state, config) if command else None


# -- what a run rests on -------------------------------------------------------------


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode]


def _journal() -> bool:
    """Is stdout the journal (as :func:`cfallow.report.is_journal` decides)?"""
    want = os.environ.get("JOURNAL_STREAM", "")
    if not want:
        return False
    try:
        st = os.fstat(1)
    except OSError:
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def _env() -> str:
    kept = sorted((k, v) for k, v in os.environ.items() if k not in VOLATILE)
    return hashlib.sha256(json.dumps(kept).encode()).hexdigest()


def _config(path: str) -> list[Any]:
    """The config file's digest, owner and mode, where it really is and its directories'
    there (the trust check follows links, :func:`cfallow.trust.check_open_file`)."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            text = fh.read()
    except FileNotFoundError:
        return ["absent", path]
    except OSError:
        return ["unreadable", path]
    real = os.path.realpath(path)
    mine = [path, real, hashlib.sha256(text).hexdigest(), st.st_uid, st.st_gid, st.st_mode]
    dirs = _dirs(os.path.dirname(real))
    return ["unreadable", path] if dirs is None else [*mine, dirs]


def _dirs(path: str) -> list[Any] | None:
    """A directory's and its parents' owners and modes (what the trust checks look at)."""
    found, here = [], os.path.abspath(path)
    while True:
        try:
            st = os.stat(here)
        except OSError:
            return None
        found.append([st.st_ino, st.st_uid, st.st_gid, st.st_mode])
        up = os.path.dirname(here)
        if up == here:
            return found
        here = up


def _state(state_dir: str) -> list[Any] | None:
    """Every entry of the state directory but this record and the lock."""
    try:
        with os.scandir(state_dir) as it:
            found = []
            for entry in it:
                if entry.name in (FILE, LOCK_FILE):
                    continue
                st = entry.stat(follow_symlinks=False)
                found.append(
                    [entry.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode]
                )
    except OSError:
        return None
    return sorted(found)


def key(argv: Sequence[str], state_dir: str, config: str, files: Sequence[str]) -> dict[str, Any]:
    """Everything but the witnesses a recorded outcome rests on (see the module docstring)."""
    return {
        "format": FORMAT,
        "argv": list(argv),
        "env": _env(),
        "cwd": os.getcwd(),
        "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
        "journal": _journal(),
        "python": [sys.executable, sys.version, _stat(sys.executable)],
        "path": [[p, _stat(p)] for p in sys.path if p],
        "code": [_stat(f) for f in files],
        "config": _config(config),
        "statedir": _dirs(state_dir),
        "state": _state(state_dir),
    }


# -- the full run's side: capture, offer, seal ---------------------------------------


class _Tee:
    """A stream that also keeps, in order, what was written to it and its sibling."""

    def __init__(self, under: TextIO, name: str, kept: list[list[str]]) -> None:
        self._under, self._name, self._kept = under, name, kept

    def write(self, text: str) -> int:
        self._kept.append([self._name, text])
        return self._under.write(text)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._under, attr)


class _Run:
    def __init__(self, argv: list[str], state_dir: str, config: str) -> None:
        self.argv, self.state_dir, self.config = argv, state_dir, config
        self.kept: list[list[str]] = []
        self.until = float("inf")
        self.witnesses: list[Witness] | None = None
        self.cadence: dict[str, Any] | None = None
        self.spoiled = False
        #: The config as the run started (it loads it then): one changed by the time the
        #: run records is not what its outcome rests on.
        self.config_seen = _config(config)
        self.started = time.time_ns()


class _Current:
    run: _Run | None = None


_now = _Current()  # this process's run, while its output is kept


def capture(argv: list[str]) -> None:
    """Keep this run's output from here on, if its command line may be recorded."""
    found = where(argv)
    if found is None or os.environ.get("CFALLOW_NO_INSTEP") == "1":
        return
    run = _now.run = _Run(argv, *found)
    sys.stdout = _Tee(sys.stdout, "out", run.kept)
    sys.stderr = _Tee(sys.stderr, "err", run.kept)


def release() -> None:
    """Stop keeping output (the streams as they were)."""
    out, err = sys.stdout, sys.stderr
    if isinstance(out, _Tee):
        sys.stdout = out._under
    if isinstance(err, _Tee):
        sys.stderr = err._under
    _now.run = None


def before(moment: float) -> None:
    """This run's output says something true only until ``moment`` (wall clock)."""
    run = _now.run
    if run is not None:
        run.until = min(run.until, moment)


def scheduled(refresh: float, known_at: float | None, marks: str) -> None:
    """A scheduled run found no fetch due: the next must ask again (``marks``: the
    machine's, the phase's input)."""
    if _now.run is not None:
        digest = hashlib.sha256(marks.encode()).hexdigest()
        _now.run.cadence = {"refresh": refresh, "known_at": known_at, "marks": digest}


def offer(witnesses: Sequence[Witness]) -> None:
    """This run changed nothing, fetched nothing and failed nowhere (exit 0): it may be
    recorded, with the backends' ``witnesses``."""
    if _now.run is not None:
        _now.run.witnesses = list(witnesses)


def spoil() -> None:
    """This run may not be recorded, whatever it offers later (its output says something
    that changes run to run)."""
    if _now.run is not None:
        _now.run.spoiled = True


def seal(state_dir: str | Path) -> None:
    """Record this run if it was offered (under the state lock, after everything the
    run wrote); otherwise leave no record behind."""
    run = _now.run
    if run is None:
        return
    record = os.path.join(state_dir, FILE)
    if run.witnesses is None or run.spoiled or os.fspath(state_dir) != run.state_dir:
        _remove(record)
        return
    if _config(run.config) != run.config_seen:
        _remove(record)
        return
    pkg = os.path.dirname(os.path.abspath(__file__))
    files = sorted(  # by name: an editable install keeps cfallow.backends in backends/
        {
            str(vars(m)["__file__"])
            for name, m in list(sys.modules.items())
            if name.partition(".")[0] == "cfallow" and vars(m).get("__file__")
        }
        | {os.path.join(pkg, "data", f) for f in _listdir(os.path.join(pkg, "data"))}
    )
    keyed = key(run.argv, run.state_dir, run.config, files)
    # an upgrade while the run ran (its ctime on the kernel's coarse clock, a second's
    # slack): what the run read of it is not what the record would key
    since = run.started - 1_000_000_000
    if any(st is not None and st[4] >= since for st in [keyed["python"][2], *keyed["code"]]):
        _remove(record)
        return
    doc = {
        "key": keyed,
        "files": files,
        "witnesses": [[list(w), v] for w, v in run.witnesses],
        "at": _clock(),
        "until": run.until if run.until != float("inf") else None,
        "cadence": run.cadence,
        "output": run.kept,
        "code": 0,
    }
    from pathlib import Path

    from cfallow.fs import write_atomic

    try:
        write_atomic(Path(record), json.dumps(doc) + "\n", mode=0o600)
    except OSError:
        _remove(record)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(f for f in os.listdir(path) if f.endswith(".json"))
    except OSError:
        return []


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        return


# -- the next run's side: replay ------------------------------------------------------


def _clock() -> float:
    """Wall-clock seconds (``CFALLOW_NOW`` in tests), as :func:`cfallow.fetch.cadence.now`
    (not imported: its dataclasses and logging would double a run said again)."""
    fake = os.environ.get("CFALLOW_NOW")
    return float(fake) if fake else time.time()


def _load(path: str) -> dict[str, Any] | None:
    """The record, if this user wrote it (a file another user could write is none)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, encoding="utf-8") as fh:
            st = os.fstat(fd)
            mine = stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1
            if not mine or st.st_mode & 0o022:
                return None
            doc = json.load(fh)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _due(state_dir: str, cadence_doc: dict[str, Any]) -> bool:
    """Would this scheduled run fetch? (The cadence's own answer; unsure: yes.)"""
    from cfallow.fetch import cadence

    try:
        marks = cadence.machine_marks()
        if hashlib.sha256(marks.encode()).hexdigest() != cadence_doc["marks"]:
            return True
        from pathlib import Path

        point = cadence.phase(Path(state_dir), marks)
        refresh, known_at = float(cadence_doc["refresh"]), cadence_doc["known_at"]
        log = cadence.read_log(Path(state_dir))
        due, _ = cadence.fetch_due(log, known_at, cadence.now(), refresh, point)
    except (KeyError, TypeError, ValueError, OSError):
        return True
    return due


def _holds(doc: dict[str, Any], argv: Sequence[str], state_dir: str, config: str) -> bool:
    files = doc.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return False
    if doc.get("key") != json.loads(json.dumps(key(argv, state_dir, config, files))):
        return False
    at, until, now = doc.get("at"), doc.get("until"), _clock()
    if not isinstance(at, (int, float)) or now < at:  # the clock went back: in full
        return False
    if until is not None and not (isinstance(until, (int, float)) and now < until):
        return False
    plan = doc.get("cadence")
    scheduled_due = plan is not None and (not isinstance(plan, dict) or _due(state_dir, plan))
    if scheduled_due:
        return False
    from cfallow.netfilter import witness

    witnesses = doc.get("witnesses")
    if not isinstance(witnesses, list) or not witnesses:
        return False
    for item in witnesses:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], list)):
            return False
        what, answer = item
        if answer is None or witness.ask([str(w) for w in what]) != answer:
            return False
    return True


def replay(argv: Sequence[str]) -> int | None:
    """The exit code of a run whose record holds (its output printed); None: run in full."""
    found = where(argv)
    if found is None or os.environ.get("CFALLOW_NO_INSTEP") == "1":
        return None
    state_dir, config = found
    try:  # the state lock, as a run takes it (never created here: no record without it)
        fd = os.open(os.path.join(state_dir, LOCK_FILE), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another run holds it: the full run waits for it
            return None
        doc = _load(os.path.join(state_dir, FILE))
        try:
            said = _said(doc)
            if doc is None or said is None or not _holds(doc, argv, state_dir, config):
                return None
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None  # a part that cannot be asked (a working directory gone): in full
        streams: dict[str, TextIO] = {"out": sys.stdout, "err": sys.stderr}
        for name, text in said:
            streams[name].write(text)
        return 0
    finally:
        os.close(fd)


def _said(doc: dict[str, Any] | None) -> list[tuple[str, str]] | None:
    """What the recorded run printed, in order (None: not a record of this format)."""
    if doc is None or not isinstance(doc.get("key"), dict) or doc["key"].get("format") != FORMAT:
        return None
    output = doc.get("output")
    if doc.get("code") != 0 or not isinstance(output, list):
        return None
    said = []
    for item in output:
        ok = isinstance(item, list) and len(item) == 2 and item[0] in ("out", "err")
        if not ok or not isinstance(item[1], str):
            return None
        said.append((str(item[0]), item[1]))
    return said
