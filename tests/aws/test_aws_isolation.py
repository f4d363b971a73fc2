"""The aws backend (security groups): one group's trouble stays its own; the cadence.

On moto_server, ten groups with one over its quota: before, the quota
pre-flight of that one group stopped the run for all ten (0 of 10 written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.aws.moto import MotoServer, World, aws_env, shared_server
from support.cfdata import CURRENT

from cfallow.engine import run_backend


@pytest.fixture
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> MotoServer:
    aws_env(monkeypatch)
    return shared_server(request, tmp_path_factory)


def test_a_group_over_its_quota_fails_alone_and_the_others_are_written(server: MotoServer) -> None:
    world = World(server, groups=10)
    full = world.groups[3]
    for i in range(31):  # 31 of the admin's + 30 of cfallow's (15 x 2 ports) > 60 IPv4
        world.authorize(full, 10000 + i, f"198.18.{i}.0/24", "admin")
    for dry_run in (True, False):
        result = run_backend(world.backend(), CURRENT, dry_run=dry_run)
        assert result.error == (
            f"{full} needs 61 IPv4 rules (30 cfallow + 31 other), quota 60; to fit: fewer"
            " ports, a security group for cfallow alone, or a quota increase (then set"
            " rules_per_group)"
        )
    written = [g for g in world.groups if world.owned(g)]
    assert written == [g for g in world.groups if g != full]
    assert world.owned(full) == set()
    assert [c.params["GroupId"] for c in server.cfallow_writes()] == written


def test_a_scheduled_run_reads_the_groups_only_every_interval(
    server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    world = World(server, groups=2)

    def run(**options: Any) -> Any:
        backend = world.backend(interval="2h", **options)
        backend.ctx.scheduled = True
        return run_backend(backend, CURRENT, dry_run=False)

    monkeypatch.setenv("CFALLOW_NOW", "5000000")
    assert run().error is None
    server.reset_recording()
    monkeypatch.setenv("CFALLOW_NOW", str(5000000 + 3600))
    skipped = run()
    assert skipped.error is None and skipped.plan is not None and not skipped.changed
    assert skipped.plan.notes[0].startswith("not due: AWS last read 60 min ago, interval 2 h")
    assert [c for c in server.calls() if c.by_cfallow] == []
    monkeypatch.setenv("CFALLOW_NOW", str(5000000 + 2 * 3600))
    assert run().error is None
    assert next(c for c in server.calls() if c.by_cfallow).action == "DescribeSecurityGroups"
