"""The in-step record: a ``cfallow sync`` that found everything in step is said again
without planning while all it rested on holds, and anything it rested on that moves
(a commit by anyone, the config, the state, the command line, the environment, the
clock) makes the next run a full one, which repairs what drifted.

The command is the installed ``cfallow`` (what ships), run in the server namespace of a
veth pair with the admin's policy DROP; traffic from the client decides. A run was said
again when it exited as the recorded one did and left the record untouched (a full run
always writes it again or removes it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import ns_exec
from support.cli_helpers import plant_lkg
from support.iptables.helpers import Fw, legacy_bin, tool
from support.iptables.traffic import CF, OUTSIDE, POLICY_DROP, Pair, pair, reach

from cfallow import instep
from cfallow.fetch import cadence

pytestmark = [pytest.mark.root, pytest.mark.slow]

CFALLOW = str(Path(sys.executable).with_name("cfallow"))
IN = {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}


@dataclass
class Run:
    code: int
    out: str
    err: str
    said_again: bool


@dataclass
class Lab:
    p: Pair
    fw: Fw
    tmp: Path
    config: Path
    state: Path
    env: dict[str, str]

    def sync(self, *args: str, env: dict[str, str] | None = None, stdout: int | None = None) -> Run:
        """``cfallow --config C --state-dir S sync ARGS`` (``--offline`` unless told)."""
        record = self.state / instep.FILE
        before = _identity(record)
        argv = [CFALLOW, "--config", str(self.config), "--state-dir", str(self.state), "sync"]
        argv += list(args or ("--offline",))
        r = subprocess.run(
            ns_exec(self.p.server, *argv),
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            env=env or self.env,
            cwd=self.tmp,
            timeout=120,
        )
        again = before is not None and _identity(record) == before
        return Run(r.returncode, r.stdout or "", r.stderr, again)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _lab(tmp: Path, variant: str, lkg: bool = True) -> Iterator[Lab]:
    with pair() as p:
        fw = Fw(p.server, variant, tmp)
        for version in (4, 6):
            fw.restore(version, POLICY_DROP[version])
        config = tmp / "config.toml"
        config.write_text(f'[backends.iptables]\nvariant = "{variant}"\n')
        state = tmp / "state"
        if lkg:
            plant_lkg(state)
        env = {k: v for k, v in os.environ.items() if k != "CFALLOW_NO_INSTEP"}
        if variant == "legacy":
            env["PATH"] = f"{legacy_bin(tmp / 'legacy-bin')}:{env.get('PATH', '')}"
            env["XTABLES_LOCKFILE"] = fw.lock
        yield Lab(p, fw, tmp, config, state, env)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    yield from _lab(tmp_path, "nft")


@pytest.fixture
def legacy(tmp_path: Path) -> Iterator[Lab]:
    yield from _lab(tmp_path, "legacy")


def recorded(lab: Lab) -> Run:
    """Sync until a run records (the first writes, the second reads cfallow's own commit
    and records); that run's outcome."""
    first = lab.sync()
    assert first.code == 0, first.err
    assert "+22" in first.out, first.out
    assert not (lab.state / instep.FILE).exists(), "a run that changed something records nothing"
    second = lab.sync()
    assert second.code == 0 and not second.said_again, second.err
    assert "+0 -0 =22 in sync" in second.out, second.out
    assert (lab.state / instep.FILE).exists()
    return second


def assert_again(lab: Lab, full: Run) -> None:
    again = lab.sync()
    assert again.said_again, (again.out, again.err)
    assert (again.code, again.out, again.err) == (full.code, full.out, full.err)


def test_a_run_in_step_is_said_again_while_the_kernel_keeps_the_allowlist(lab: Lab) -> None:
    full = recorded(lab)
    assert reach(lab.p) == IN
    for _ in range(3):
        assert_again(lab, full)
    assert reach(lab.p) == IN
    doc = json.loads((lab.state / instep.FILE).read_text())
    asked = {w[0] for w, _ in doc["witnesses"]}
    assert asked == {"nf", "exe"}, doc["witnesses"]
    # every file of cfallow the run ran, the backend's too (wherever the install keeps it)
    from cfallow.backends.iptables import backend

    assert backend.__file__ in doc["files"], doc["files"]
    assert oct((lab.state / instep.FILE).stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("variant", ["nft", "legacy"])
def test_a_commit_by_anyone_is_a_full_run_that_repairs(tmp_path: Path, variant: str) -> None:
    """The admin flushes cfallow's chain (a new generation; on legacy, another digest):
    the next run plans, puts the rules back and Cloudflare gets in again."""
    for lab in _lab(tmp_path, variant):
        full = recorded(lab)
        assert_again(lab, full)
        lab.fw.ipt(4, "-F", "CFALLOW")
        lab.fw.ipt(6, "-F", "CFALLOW")
        assert reach(lab.p) == dict.fromkeys(IN, False), "the admin's DROP now stops everyone"
        repaired = lab.sync()
        assert not repaired.said_again and repaired.code == 0, repaired.err
        assert "+22 -0 =0 changed" in repaired.out, repaired.out
        assert reach(lab.p) == IN
        # a commit that changes nothing of cfallow's is a full run too, and records again
        lab.fw.ipt(4, "-A", "INPUT", "-s", "192.0.2.200/32", "-p", "tcp", "--dport", "22")
        after = lab.sync()
        assert not after.said_again and "+0 -0 =22 in sync" in after.out, after.out
        assert_again(lab, after)


def test_a_legacy_record_rests_on_the_tables_digest(legacy: Lab) -> None:
    full = recorded(legacy)
    assert_again(legacy, full)
    doc = json.loads((legacy.state / instep.FILE).read_text())
    xt = [w for w, _ in doc["witnesses"] if w[0] == "xt"]
    assert xt == [["xt", legacy.fw.lock, "4", "filter"], ["xt", legacy.fw.lock, "6", "filter"]]
    assert reach(legacy.p) == IN
    # held by another program: the run cannot ask the digest, so it runs in full
    held = subprocess.Popen(
        ["flock", legacy.fw.lock, "sleep", "30"], stdout=subprocess.DEVNULL, text=True
    )
    try:
        for _ in range(50):  # until flock holds it
            probe = subprocess.run(["flock", "-n", legacy.fw.lock, "true"], check=False)
            if probe.returncode != 0:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        busy = legacy.sync()
    finally:
        held.kill()
        held.wait()
    assert not busy.said_again and busy.code == 0, busy.err


def _edit_config(lab: Lab) -> None:
    lab.config.write_text(lab.config.read_text() + "# a comment\n")


def _new_list(lab: Lab) -> None:
    plant_lkg(lab.state, "api-ips-2021-03.json", etag="e0")


def _chmod_config(lab: Lab) -> None:
    lab.config.chmod(0o640)


@pytest.mark.parametrize(
    ("change", "plans"),
    [
        pytest.param(_edit_config, False, id="config bytes"),
        pytest.param(_chmod_config, False, id="config mode"),
        pytest.param(_new_list, True, id="the last-known-good list"),
    ],
)
def test_what_the_record_rests_on_in_files_forces_a_full_run(
    lab: Lab, change: Callable[[Lab], None], plans: bool
) -> None:
    full = recorded(lab)
    change(lab)
    run = lab.sync()
    assert not run.said_again and run.code == 0, run.err
    if plans:  # the 2021-03 list: 104.16.0.0/12 instead of /13 + /14
        assert "+1 -2 =20 changed" in run.out and "+ 104.16.0.0/12" in run.out, run.out
        assert reach(lab.p) == IN
    else:
        assert run.out == full.out


def test_the_command_line_environment_and_directory_are_part_of_it(lab: Lab) -> None:
    full = recorded(lab)
    quiet = lab.sync("-q", "--offline")
    assert not quiet.said_again and quiet.out == "iptables: +0 -0 =22 in sync\n"
    again_quiet = lab.sync("-q", "--offline")
    assert again_quiet.said_again and again_quiet.out == quiet.out
    lab_env = dict(lab.env, LANG="C.UTF-8", CFALLOW_TEST_MARK="1")
    other = lab.sync(env=lab_env)
    assert not other.said_again and other.out == full.out
    # what systemd sets anew each run is not part of it
    volatile = dict(lab_env, INVOCATION_ID="0123", TRIGGER_TIMER_REALTIME_USEC="42")
    assert lab.sync(env=volatile).said_again


@pytest.mark.parametrize(
    "args", [("--offline", "--dry-run"), ("--offline", "--json"), ("-v", "--offline")]
)
def test_dry_runs_json_and_debug_runs_always_plan(lab: Lab, args: tuple[str, ...]) -> None:
    recorded(lab)
    before = _identity(lab.state / instep.FILE)
    run = lab.sync(*args)
    assert run.code == 0, run.err
    if "--json" in args:
        doc = json.loads(run.out)
        assert [b["name"] for b in doc["backends"]] == ["iptables"]
    if "-v" in args:
        assert "host firewall:" in run.err
    # not recorded over (a dry run writes nothing; -v and --json are not said again)
    if "--dry-run" in args:
        assert _identity(lab.state / instep.FILE) == before


def test_the_journal_gets_its_own_record(lab: Lab) -> None:
    """Output to the journal is one line per backend: a record of a terminal's run is not
    said there (``JOURNAL_STREAM`` names stdout's device and inode)."""
    recorded(lab)
    out = lab.tmp / "journal.out"
    with out.open("w") as fh:
        st = os.fstat(fh.fileno())
        env = dict(lab.env, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        first = lab.sync(env=env, stdout=fh.fileno())
    assert first.code == 0 and not first.said_again, first.err
    text = out.read_text()
    assert text.startswith("source: ") and "+ 104." not in text
    with out.open("w") as fh:
        st = os.fstat(fh.fileno())
        env = dict(lab.env, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        again = lab.sync(env=env, stdout=fh.fileno())
    assert again.said_again and out.read_text() == text


def test_the_snapshots_age_in_days_ends_the_record(tmp_path: Path) -> None:
    """No list of its own yet: each run says how old the bundled snapshot is. The record
    holds until that count of days moves on, then a full run says the new count."""
    from cfallow.fetch import sources

    made = sources.bundled().fetched_at
    assert made is not None
    for lab in _lab(tmp_path, "nft", lkg=False):
        env = dict(lab.env, CFALLOW_NOW=str(made + 3 * 86400 + 10))
        lab.env = env
        full = recorded(lab)
        assert "(3 days old)" in full.err
        assert_again(lab, full)
        lab.env = dict(env, CFALLOW_NOW=str(made + 4 * 86400 - 1))
        assert_again(lab, full)
        lab.env = dict(env, CFALLOW_NOW=str(made + 4 * 86400))
        later = lab.sync()
        assert not later.said_again and "(4 days old)" in later.err, later.err


def test_a_scheduled_run_is_said_again_only_while_no_fetch_is_due(lab: Lab) -> None:
    """``--scheduled`` between fetches: the cadence is asked again each run; once a fetch
    is due the run is a full one and fetches (here from a source that is not there: the
    allowlist is held at the last-known-good list, exit 4)."""
    lab.config.write_text(
        '[source]\napi_url = "http://127.0.0.1:9/client/v4/ips"\n'
        'text_urls = ["http://127.0.0.1:9/ips-v4", "http://127.0.0.1:9/ips-v6"]\n'
        + lab.config.read_text()
    )
    assert lab.sync().code == 0  # writes cfallow's rules (offline)
    refresh = 6 * 3600.0  # [source] refresh, the default
    ask = "import sys; from pathlib import Path; from cfallow.fetch import cadence; "
    ask += "print(cadence.phase(Path(sys.argv[1])))"
    said = subprocess.run(  # in the namespace: its network cards are part of the phase
        ns_exec(lab.p.server, sys.executable, "-c", ask, str(lab.state)),
        capture_output=True,
        text=True,
        check=True,
    )
    point = float(said.stdout)
    start = (1_900_000_000 // refresh + 1) * refresh + point * refresh + 1200  # past a point
    known = json.loads((lab.state / "last-known-good.json").read_text())
    known["fetched_at"] = start - 300
    (lab.state / "last-known-good.json").write_text(json.dumps(known))

    def at(t: float) -> Run:
        lab.env = dict(lab.env, CFALLOW_NOW=str(t))
        return lab.sync("--scheduled")

    def due(t: float) -> bool:
        log = cadence.read_log(lab.state)
        return cadence.fetch_due(log, start - 300, t, refresh, point)[0]

    assert not due(start) and not due(start + 3600)
    full = at(start)
    assert full.code == 0 and not full.said_again, full.err
    assert "+0 -0 =22 in sync" in full.out
    again = at(start + 3600)
    assert again.said_again and (again.out, again.err) == (full.out, full.err)
    later = start + refresh - 900  # 300 s after the next period's point: due
    assert due(later)
    fetched = at(later)
    assert not fetched.said_again and fetched.code == 4, (fetched.code, fetched.err)
    assert reach(lab.p) == IN
    # the fetch failed: until its retry, each run says how long to wait (never recorded)
    waits = [at(later + d) for d in (5, 10, 15)]
    assert all(w.code == 0 and not w.said_again for w in waits), [w.err for w in waits]
    assert all("next retry in" in w.err for w in waits), waits[0].err
    assert len({w.err for w in waits}) == 3, "each run says its own wait"
    assert not (lab.state / instep.FILE).exists()


def test_a_changing_run_leaves_no_record_and_a_stale_one_is_never_said(lab: Lab) -> None:
    recorded(lab)
    record = lab.state / instep.FILE
    stale = record.read_text()
    _new_list(lab)
    changed = lab.sync()
    assert "changed" in changed.out and not record.exists()
    # the record of the earlier list put back: its state no longer matches, a full run
    record.write_text(stale)
    run = lab.sync()
    assert not run.said_again and "+0 -0 =21 in sync" in run.out, run.out


def test_a_witness_answering_otherwise_is_a_full_run(lab: Lab) -> None:
    """The record's own answers edited (as an upgraded iptables would answer): a full run."""
    full = recorded(lab)
    record = lab.state / instep.FILE
    doc = json.loads(record.read_text())
    for item in doc["witnesses"]:
        if item[0] == ["exe", tool("nft", 4, "-save")]:
            item[1] = item[1] + "x"
    record.write_text(json.dumps(doc))
    run = lab.sync()
    assert not run.said_again and run.out == full.out


def test_a_run_started_with_stdout_closed_is_said_again_into_nothing(lab: Lab) -> None:
    recorded(lab)
    argv = [CFALLOW, "--config", str(lab.config), "--state-dir", str(lab.state)]
    closed = ns_exec(lab.p.server, "sh", "-c", 'exec "$@" >&-', "sh", *argv, "sync", "--offline")
    r = subprocess.run(closed, capture_output=True, text=True, env=lab.env, check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert reach(lab.p) == IN


def test_a_record_out_of_shape_or_from_a_later_clock_is_a_full_run(lab: Lab) -> None:
    """Whatever the record holds, a run never fails on it: each of these is a full run
    that says what a run says, and records again."""
    full = recorded(lab)
    record = lab.state / instep.FILE
    good = json.loads(record.read_text())
    broken = [
        {**good, "output": [["tty", "x"]]},
        {**good, "output": [["out"]]},
        {**good, "output": "text"},
        {**good, "code": 1},
        {**good, "key": ["not", "a", "dict"]},
        {**good, "witnesses": []},
        {**good, "witnesses": [["nf"]]},
        {**good, "files": "x"},
        {**good, "at": None},
        {**good, "at": good["at"] + 3600},  # made an hour from now: the clock went back
    ]
    for doc in [*broken, "[1, 2]", "{"]:
        record.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        run = lab.sync()
        assert run.code == 0 and not run.said_again, (doc, run.err)
        assert (run.out, run.err) == (full.out, full.err), doc
    assert_again(lab, full)


def test_a_config_behind_a_link_rests_on_the_directories_it_is_trusted_by(lab: Lab) -> None:
    """The trust check follows the config's links: a directory above where it really is
    that others may write makes a full run refuse (exit 2); said again it was exit 0."""
    real = lab.tmp / "real"
    real.mkdir(mode=0o755)
    (real / "config.toml").write_text(lab.config.read_text())
    lab.config.unlink()
    lab.config.symlink_to(real / "config.toml")
    recorded(lab)
    real.chmod(0o777)
    run = lab.sync()
    assert run.code == 2, (run.code, run.out)  # (a run refused before its lock records nothing)
    assert "writable by group or others" in run.err, run.err


def _while_reading(lab: Lab, flag: Path, action: str) -> None:
    """Put iptables-nft programs first on the runs' PATH that do ``action`` (a shell
    command) once, the first time one runs after ``flag`` is made, then the real program."""
    import shutil

    shim = lab.tmp / "shim"
    shim.mkdir()
    for name in [tool("nft", v, s) for v in (4, 6) for s in ("", "-save")]:
        real = shutil.which(name)
        assert real is not None
        path = shim / name
        path.write_text(
            f'#!/bin/sh\nif rm "{flag}" 2>/dev/null; then {action}; fi\nexec {real} "$@"\n'
        )
        path.chmod(0o755)
    lab.env = dict(lab.env, PATH=f"{shim}:{lab.env['PATH']}")


def test_a_config_changed_while_a_run_records_makes_the_next_a_full_run(lab: Lab) -> None:
    """The config is read when the run starts: one that changes before the run records
    (here while it reads the tables) is not what the recorded outcome rests on."""
    flag = lab.tmp / "edit-config"
    _while_reading(lab, flag, f'printf "ports = [80, 443, 8443]\\n" >> "{lab.config}"')
    recorded(lab)
    (lab.state / "iptables-read.json").unlink()  # the next run reads the tables
    flag.touch()
    during = lab.sync()
    assert during.code == 0 and "+0 -0 =22 in sync" in during.out, during.err
    assert not flag.exists() and "8443" in lab.config.read_text()
    after = lab.sync()
    assert not after.said_again, after.out
    assert "in sync" not in after.out and after.code == 0, (after.out, after.err)


def test_a_record_another_user_could_write_is_never_said(lab: Lab) -> None:
    """A state directory others may write is refused by a full run; a record made there
    by another user (whatever it claims to rest on) is not said instead."""
    recorded(lab)
    record = lab.state / instep.FILE
    doc = json.loads(record.read_text())
    lab.state.chmod(0o777)
    doc["key"]["statedir"] = instep._dirs(str(lab.state))  # as another user would write it
    record.write_text(json.dumps(doc))
    os.chown(record, 65534, 65534)
    run = lab.sync()
    assert run.code != 0 and "refusing state directory" in run.err, (run.code, run.out)


def test_a_file_of_cfallow_changed_while_a_run_records_leaves_no_record(lab: Lab) -> None:
    """An upgrade while a run runs (here: the bundled snapshot touched while it reads the
    tables): the run may have read the file before or after; it records nothing."""
    import shutil

    import cfallow

    # a copy of cfallow of this test's own (touching the shared one would spoil the
    # records other tests make meanwhile)
    src, pkg = Path(cfallow.__file__).parent, lab.tmp / "pkg" / "cfallow"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(src, pkg, ignore=skip)
    if not (pkg / "backends").exists():  # an editable install keeps them beside it
        shutil.copytree(src.parent / "backends", pkg / "backends", ignore=skip)
    target = sorted((pkg / "data").glob("*.json"))[0]
    lab.env = dict(lab.env, PYTHONPATH=str(pkg.parent))
    import time

    time.sleep(1.1)  # a file changed within a second before a run: that run records nothing
    flag = lab.tmp / "touch-data"
    _while_reading(lab, flag, f'touch "{target}"')
    recorded(lab)
    (lab.state / "iptables-read.json").unlink()  # the next run reads the tables
    flag.touch()
    during = lab.sync()
    assert during.code == 0 and "+0 -0 =22 in sync" in during.out, during.err
    assert not flag.exists()
    assert not (lab.state / instep.FILE).exists()


def test_a_read_that_could_not_count_the_references_into_its_chain_is_not_said_again(
    lab: Lab,
) -> None:
    """The kernel's count of references into cfallow's chain (an nft verdict map's jump no
    rule read shows) could not be had: the run says what it can and records nothing, so
    the next run asks the kernel again instead of repeating a report without the count."""
    probe = (
        "import sys; from cfallow.netfilter import generation; "
        "generation.chains = lambda runner: None; "
        "from cfallow.__main__ import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = [sys.executable, "-c", probe, "--config", str(lab.config)]
    argv += ["--state-dir", str(lab.state), "sync", "--offline"]
    for expect in ("+22 -0 =0 changed", "+0 -0 =22 in sync", "+0 -0 =22 in sync"):
        r = subprocess.run(
            ns_exec(lab.p.server, *argv),
            capture_output=True,
            text=True,
            env=lab.env,
            cwd=lab.tmp,
            check=False,
        )
        assert r.returncode == 0 and expect in r.stdout, r.stderr
        assert not (lab.state / instep.FILE).exists()
    assert reach(lab.p) == IN
    counted = lab.sync()  # the count had: the run records
    assert counted.code == 0 and (lab.state / instep.FILE).exists(), counted.err
    assert_again(lab, counted)
