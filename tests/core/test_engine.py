"""The engine: order of a run, failure collection, re-plan when the target moved, plugin door."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from support.cfdata import CURRENT, OLD

from cfallow import backend as backend_mod
from cfallow import engine
from cfallow.backend import Context, build
from cfallow.errors import ConfigError
from cfallow.model import as_strings


def _fake(tmp: Path, name: str = "fake", **extra: Any) -> Any:
    return build(name, {"path": str(tmp / f"{name}.json"), **extra}, Context(state_dir=tmp))


def _owned(tmp: Path, name: str = "fake") -> list[str]:
    return list(json.loads((tmp / f"{name}.json").read_text())["owned"])


def test_every_backend_is_planned_before_any_is_applied(tmp_path: Path) -> None:
    order: list[str] = []
    one, two = _fake(tmp_path), _fake(tmp_path, "fake2")
    for b in (one, two):
        for method in ("read", "apply"):
            real = getattr(b, method)

            def spy(*args: Any, _real: Any = real, _tag: str = f"{b.name}.{method}") -> Any:
                order.append(_tag)
                return _real(*args)

            setattr(b, method, spy)
    result = engine.run([one, two], CURRENT, dry_run=False)
    assert not result.failed and result.changed
    assert order == ["fake.read", "fake2.read", "fake.apply", "fake2.apply"]


def test_a_failing_backend_does_not_stop_the_others(tmp_path: Path) -> None:
    result = engine.run(
        [_fake(tmp_path, fail="plan"), _fake(tmp_path, "fake2")], CURRENT, dry_run=False
    )
    bad, good = result.results
    assert bad.error == "fake: plan failed on purpose" and bad.plan is None
    assert good.error is None and good.applied
    assert _owned(tmp_path, "fake2") == as_strings(CURRENT)
    assert result.failed


def test_target_moved_is_read_again_and_replanned(tmp_path: Path) -> None:
    b = _fake(tmp_path)
    engine.run([b], OLD, dry_run=False)
    plan = b.plan(CURRENT)
    data = json.loads((tmp_path / "fake.json").read_text())
    data["writes"] += 1  # someone else wrote the target after the read
    (tmp_path / "fake.json").write_text(json.dumps(data))
    result = engine.BackendResult("fake", plan)
    reads: list[object] = []
    real_read = b.read
    b.read = lambda: reads.append(real_read()) or reads[-1]  # type: ignore[method-assign]
    engine._apply(b, CURRENT, result)
    # read again and planned again once (this was BackendResult.replans == 1, a counter
    # only this test read)
    assert result.error is None and result.applied and len(reads) == 1
    assert _owned(tmp_path) == as_strings(CURRENT)


def test_dry_run_never_calls_apply(tmp_path: Path) -> None:
    b = _fake(tmp_path, fail="apply")
    result = engine.run([b], CURRENT, dry_run=True)
    assert not result.failed and result.changed
    assert not (tmp_path / "fake.json").exists()


def test_two_plugins_with_one_name_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A second installed distribution (a real dist-info on the path) registering "fake".
    info = tmp_path / "someone_else-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: someone-else\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[cfallow.backends]\nfake = someone_else:Backend\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="two installed plugins register the backend 'fake'") as e:
        backend_mod.installed()
    assert "someone_else (someone_else:Backend)" in str(e.value)
    assert "cfallow_fake_backend (cfallow_fake:FakeBackend)" in str(e.value)


def test_entry_points_match_importlib_metadata() -> None:
    """The fast reader finds exactly what importlib.metadata finds for the group."""
    from cfallow import plugins

    want = {(e.name, e.value) for e in metadata.entry_points().select(group=backend_mod.GROUP)}
    got = {(e.name, e.value) for e in plugins.entry_points(backend_mod.GROUP)}
    assert got == want and len(got) >= 10


def test_entry_points_first_distribution_on_the_path_wins(tmp_path: Path) -> None:
    from cfallow import plugins

    for where, target in (("a", "first:Cls"), ("b", "second:Cls")):
        info = tmp_path / where / "Some.Plugin-1.0.dist-info"
        info.mkdir(parents=True)
        text = f"# comment\n[other]\nx = y:z\n\n[cfallow.backends]\n  p = {target} [extra]\n"
        (info / "entry_points.txt").write_text(text)
    eps = plugins.entry_points(backend_mod.GROUP, [str(tmp_path / "a"), str(tmp_path / "b")])
    assert [(e.name, e.value, e.dist) for e in eps] == [("p", "first:Cls [extra]", "Some.Plugin")]


def test_a_plan_with_failed_targets_is_an_error_and_the_rest_is_applied(tmp_path: Path) -> None:
    """``Plan.failed`` (one target of several over its quota, unreadable): the backend's error in
    a dry run and in a real run alike, and a real run still applies the rest of the plan."""
    import dataclasses

    for dry_run in (True, False):
        b = _fake(tmp_path)
        real_diff = b.diff

        def diff(observed: Any, desired: Any, _real: Any = real_diff) -> Any:
            return dataclasses.replace(_real(observed, desired), failed=("target-2: over quota",))

        b.diff = diff
        result = engine.run([b], CURRENT, dry_run=dry_run).results[0]
        assert result.error == "target-2: over quota"
        assert result.applied is (not dry_run)
    assert _owned(tmp_path) == as_strings(CURRENT)
