"""ManagedFile: compare, candidate, check, rename, test in place, activate, roll back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cfallow.errors import BackendError, TargetMoved
from cfallow.files import ManagedFile


def _fail(msg: str) -> None:
    raise BackendError(msg)


def test_first_install_writes_tests_in_place_and_activates(tmp_path: Path) -> None:
    target = ManagedFile(tmp_path / "conf.d" / "list.conf")
    seen: list[str] = []

    def test() -> None:
        seen.append("test:" + target.path.read_text())

    assert target.install(b"a\n", test=test, activate=lambda: seen.append("activate"))
    assert target.path.read_bytes() == b"a\n"
    assert seen == ["test:a\n", "activate"]
    assert oct(target.path.stat().st_mode & 0o777) == "0o644"
    assert not target.candidate_path.exists()


def test_same_bytes_write_nothing_and_activate_nothing(tmp_path: Path) -> None:
    target = ManagedFile(tmp_path / "list.conf")
    target.install(b"a\n")
    before = target.path.stat()
    calls: list[str] = []
    assert not target.install(
        b"a\n", test=lambda: calls.append("t"), activate=lambda: calls.append("a")
    )
    after = target.path.stat()
    assert calls == []
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_rejected_candidate_never_reaches_the_target(tmp_path: Path) -> None:
    target = ManagedFile(tmp_path / "list.conf")
    target.install(b"old\n")
    checked: list[bytes] = []

    def check(path: Path) -> None:
        checked.append(path.read_bytes())
        _fail("syntax error in candidate")

    with pytest.raises(BackendError, match="syntax error"):
        target.install(b"new\n", check_candidate=check)
    assert checked == [b"new\n"]
    assert target.path.read_bytes() == b"old\n"
    assert not target.candidate_path.exists()


@pytest.mark.parametrize("stage", ["test", "activate"])
def test_failure_in_place_restores_previous_bytes(tmp_path: Path, stage: str) -> None:
    target = ManagedFile(tmp_path / "list.conf")
    target.install(b"old\n")
    hooks = {stage: lambda: _fail(f"{stage} failed")}
    with pytest.raises(BackendError, match=f"{stage} failed"):
        target.install(b"new\n", **hooks)  # type: ignore[arg-type]
    assert target.path.read_bytes() == b"old\n"


def test_failure_on_first_install_leaves_no_file(tmp_path: Path) -> None:
    target = ManagedFile(tmp_path / "list.conf")
    with pytest.raises(BackendError):
        target.install(b"new\n", test=lambda: _fail("nope"))
    assert not target.path.exists()


def test_removal_is_tested_and_undone_on_failure(tmp_path: Path) -> None:
    target = ManagedFile(tmp_path / "list.conf")
    target.install(b"old\n")
    with pytest.raises(BackendError):
        target.install(None, test=lambda: _fail("config needs the file"))
    assert target.path.read_bytes() == b"old\n"
    assert target.install(None, test=lambda: None)
    assert not target.path.exists()
    assert not target.install(None)


def test_baseline_failure_is_reported_as_the_admins(tmp_path: Path) -> None:
    target = ManagedFile(tmp_path / "list.conf")
    with pytest.raises(BackendError, match="fails before cfallow changes anything"):
        target.install(b"new\n", test=lambda: _fail("admin's typo"), baseline=True)
    assert not target.path.exists()


def test_links_and_special_files_are_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("keep")
    link = tmp_path / "list.conf"
    link.symlink_to(secret)
    with pytest.raises(BackendError, match="cannot read"):
        ManagedFile(link).install(b"x")
    assert secret.read_text() == "keep"
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo)
    with pytest.raises(BackendError, match="not a regular file"):
        ManagedFile(fifo).read()


@pytest.mark.parametrize("expected", [b"read\n", None])
def test_a_target_that_moved_since_it_was_read_is_targetmoved_and_untouched(
    tmp_path: Path, expected: bytes | None
) -> None:
    target = ManagedFile(tmp_path / "list.conf")
    target.install(b"theirs\n")  # the plan was made from `expected`; someone wrote this since
    calls: list[str] = []
    with pytest.raises(TargetMoved, match="changed since it was read"):
        target.install(
            b"new\n",
            expected=expected,
            check_candidate=lambda p: calls.append("check"),
            test=lambda: calls.append("test"),
            activate=lambda: calls.append("activate"),
        )
    assert target.path.read_bytes() == b"theirs\n"
    assert calls == [] and not target.candidate_path.exists()
    with pytest.raises(TargetMoved):
        target.install(None, expected=b"read\n")  # a removal checks too
    assert target.path.read_bytes() == b"theirs\n"


def test_a_target_that_still_holds_the_expected_bytes_is_replaced(tmp_path: Path) -> None:
    target = ManagedFile(tmp_path / "list.conf")
    assert target.install(b"old\n", expected=None)  # no file expected, none there
    assert target.install(b"new\n", expected=b"old\n")
    assert target.path.read_bytes() == b"new\n"
    with pytest.raises(TargetMoved):
        target.install(b"x\n", expected=None)  # a file appeared where none was read
    assert target.path.read_bytes() == b"new\n"
