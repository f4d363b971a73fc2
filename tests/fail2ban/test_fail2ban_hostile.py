"""Hostile input to the fail2ban backend: the configuration tree, jail names, the socket."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netaddr import IPNetwork
from support import need_root, need_tool
from support.cfdata import CURRENT
from support.fail2ban.harness import JAILS, F2bHarness, running_server
from support.fail2ban.procs import child_running, config_file, processes, start_sync, wait_for
from support.fail2ban.server import BETA_IGNORE, DEFAULT_IGNORE, F2bServer, nets

from cfallow.engine import run_backend

pytestmark = pytest.mark.root

BASE = {"alpha": nets(DEFAULT_IGNORE), "beta": nets(BETA_IGNORE)}


@pytest.fixture(scope="module")
def f2b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[F2bServer]:
    need_root()
    need_tool("fail2ban-client", "fail2ban-server", "ip")
    with running_server(tmp_path_factory.mktemp("f2b"), "f2bhost") as srv:
        yield srv


@pytest.fixture
def harness(f2b: F2bServer, tmp_path: Path) -> Iterator[F2bHarness]:
    f2b.reset()
    yield F2bHarness(f2b, tmp_path / "state")
    for junk in ("zero", "fifo", "dangling", "big.bin"):
        path = f2b.conf / junk
        if path.is_symlink() or path.exists():
            path.unlink()


def synced(h: F2bHarness) -> None:
    for jail in JAILS:
        assert h.srv.live(jail) == BASE[jail] | CURRENT
    assert set(h.srv.dropin_ranges()) == set(JAILS)


def test_links_and_special_files_in_the_configuration(harness: F2bHarness) -> None:
    conf = harness.srv.conf
    (conf / "zero").symlink_to("/dev/zero")
    os.mkfifo(conf / "fifo")
    (conf / "dangling").symlink_to(conf / "nowhere")
    started = time.monotonic()
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert time.monotonic() - started < 30, "the copy read through a link or blocked on a FIFO"
    assert result.plan is not None
    assert any("not copied for checks (not a file): fifo" in n for n in result.plan.notes)
    synced(harness)
    # The admin's tree is as it was: the link is still a link, the FIFO still a FIFO.
    assert os.readlink(conf / "zero") == "/dev/zero" and (conf / "fifo").is_fifo()
    assert list((harness.state_dir / "fail2ban-tmp").iterdir()) == []


def test_a_configuration_over_the_size_cap_is_refused_in_one_line(harness: F2bHarness) -> None:
    from cfallow.backends.fail2ban import copy as fail2ban_copy

    with open(harness.srv.conf / "big.bin", "wb") as fh:
        fh.truncate(fail2ban_copy.MAX_BYTES + 1)  # sparse: no disk used in the real tree
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.error is not None
    assert result.error == (
        f"{harness.srv.conf} holds more than 32 MiB of files (cfallow copies the "
        "configuration to check its drop-in): move what Fail2Ban does not read out of it"
    )
    assert not harness.srv.dropin.exists() and harness.live_writes() == []
    assert list((harness.state_dir / "fail2ban-tmp").iterdir()) == []


def test_jails_with_names_cfallow_cannot_write_are_skipped_with_a_note(
    harness: F2bHarness,
) -> None:
    srv = harness.srv
    logs = srv.logs
    srv.write_jail_local(
        extra=(
            f"\n[my jail]\nenabled = true\nfilter = cfa-test\nlogpath = {logs}/alpha.log\n"
            f"\n[web/x]\nenabled = true\nfilter = cfa-test\nlogpath = {logs}/beta.log\n"
        )
    )
    srv.reload()
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert result.plan is not None
    for name in ("'my jail'", "'web/x'"):
        assert any(n.startswith(f"jail {name}: name cannot be written") for n in result.plan.notes)
    synced(harness)
    assert srv.live("my jail") == BASE["alpha"], "a skipped jail was changed"
    srv.reload()
    synced(harness)


def test_leftover_copies_of_a_killed_run_are_swept(harness: F2bHarness, tmp_path: Path) -> None:
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    config = config_file(harness.srv.socket, harness.srv.conf, tmp_path)
    proc = start_sync(config, harness.state_dir, tmpdir)
    try:
        assert wait_for(lambda: child_running(proc.pid, "-t"), 30)
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    copies = harness.state_dir / "fail2ban-tmp"
    # Wait for the orphaned fail2ban-client -t, then look: the copy is there, TMPDIR is empty.
    assert wait_for(lambda: not any(str(copies) in " ".join(a) for *_, a in processes()), 30)
    assert [p.name[:12] for p in copies.iterdir()] == ["cfallow-f2b-"]
    assert list(tmpdir.iterdir()) == []
    result = run_backend(harness.backend(), CURRENT, dry_run=True)
    assert result.error is None, result.error
    assert list(copies.iterdir()) == []


def test_a_socket_not_owned_by_root_is_refused(harness: F2bHarness) -> None:
    sock = harness.srv.socket
    os.chown(sock, 65534, 65534)
    try:
        result = run_backend(harness.backend(), CURRENT, dry_run=False)
    finally:
        os.chown(sock, 0, 0)
    assert (
        result.error == f"fail2ban socket {sock} belongs to uid 65534, not root: not talking to it"
    )
    assert not harness.srv.dropin.exists()


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (subprocess.call, (["touch", str(self.marker)],))


def test_a_reply_that_would_run_code_is_inert(tmp_path: Path) -> None:
    from cfallow.backends.fail2ban.socket import RemoteError, safe_loads

    marker = tmp_path / "pwned"
    reply = safe_loads(pickle.dumps((0, [_Evil(marker), "104.16.0.0/13"])))
    assert not marker.exists()
    code, value = reply  # type: ignore[misc]
    assert code == 0 and isinstance(value[0], RemoteError) and value[1] == "104.16.0.0/13"
    assert "subprocess.call" in str(value[0])
    # os.system through the protocol 0 opcodes too.
    assert not isinstance(safe_loads(b"cos\nsystem\n(S'touch /tmp/x'\ntR."), int)


def test_an_edit_is_seen_through_a_link_and_without_one(
    harness: F2bHarness, tmp_path: Path
) -> None:
    srv = harness.srv
    admin = tmp_path / "admin-jail.local"
    (srv.conf / "jail.local").rename(admin)
    (srv.conf / "jail.local").symlink_to(admin)
    assert run_backend(harness.backend(), CURRENT, dry_run=False).error is None
    harness.clear()
    assert not run_backend(harness.backend(), CURRENT, dry_run=True).changed
    assert harness.runner.calls == [], "an unchanged tree is not read again"
    # The admin lists a Cloudflare range in the file the link points to: it becomes theirs.
    text = admin.read_text().replace("192.0.2.0/24", "192.0.2.0/24 131.0.72.0/22", 1)
    admin.write_text(text)
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.plan is not None and result.plan.remove == {IPNetwork("131.0.72.0/22")}
    assert IPNetwork("131.0.72.0/22") not in srv.dropin_ranges()["alpha"]
    # And an edit of a plain file of the tree.
    (srv.conf / "jail.local").unlink()
    srv.write_jail_local()
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.plan is not None and result.plan.add == {IPNetwork("131.0.72.0/22")}
    assert IPNetwork("131.0.72.0/22") in srv.dropin_ranges()["alpha"]
