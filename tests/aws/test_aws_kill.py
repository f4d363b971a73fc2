"""``cfallow sync`` with the aws backend SIGKILLed mid-change, against moto_server on 127.0.0.1.

After each kill (at a random, reproducible instant; the seed is printed) the next
run converges: moto reads back exactly cfallow's rules for the new list in every
group, no duplicate, and the admin's rules untouched.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from support.aws.harness import REGION, World, aws_env, owned_by_cfallow, rule_key, shared_server
from support.cfdata import CURRENT, OLD
from support.kill_points import KILLS, Killer, sync_argv

from cfallow.engine import run_backend


@pytest.fixture
def world(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> World:
    aws_env(monkeypatch)
    return World(shared_server(request, tmp_path_factory))


def owned(world: World, group: str) -> Counter[tuple[str, int, int, str]]:
    """cfallow's rules of one group as moto reports them, duplicates counted."""
    return Counter(rule_key(r) for r in world.rules(group) if owned_by_cfallow(r))


def test_sigkill_mid_change_then_the_next_run_converges(world: World, tmp_path: Path) -> None:
    world.add_foreign()
    theirs = world.unowned()
    cfg = tmp_path / "config.toml"
    groups = ", ".join(f'"{g}"' for g in world.groups)
    cfg.write_text(
        f'[backends.aws]\nregion = "{REGION}"\nsecurity_group_ids = [{groups}]\n'
        f'ports = [80, 443]\nendpoint_url = "{world.server.url}"\n'
    )
    argv = sync_argv(cfg, tmp_path / "state")
    env = dict(os.environ)
    killer = Killer("aws")

    def reset() -> None:
        assert run_backend(world.backend(), OLD, dry_run=False).error is None

    killer.measure(reset, argv, env)
    # what an uninterrupted run gives: the current list on both ports, less the one rule
    # the admin already has by hand (173.245.48.0/20 on 443: left to the admin's rule)
    want = {g: owned(world, g) for g in world.groups}
    for g in world.groups:
        assert set(want[g]) == {("tcp", p, p, str(n)) for n in CURRENT for p in (80, 443)} - {
            ("tcp", 443, 443, "173.245.48.0/20")
        }
        assert set(want[g].values()) == {1}
    for i in range(KILLS):
        reset()
        killer.kill_one(argv, env)
        left = owned(world, world.groups[0])
        killer.landed("new" if left == want[world.groups[0]] else "old-or-between")
        done = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=120, check=False
        )
        where = killer.where(i)
        assert done.returncode == 0, f"{where}: {done.stderr}"
        for g in world.groups:
            assert owned(world, g) == want[g], f"{where}: {g} is not the current list"
        assert world.unowned() == theirs, f"{where}: an admin's rule changed"
    killer.summary()
