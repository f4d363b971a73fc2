"""A real firewalld, a real ``cfallow sync`` SIGKILLed mid-change: the next run converges.

The change is the 2021 one (104.16.0.0/12 -> /13 + /14), the one that bridges
the overlap with a short-lived zone source (zone mode) or priority rule
(restrict mode). A run killed between the bridge and its removal used to leave
the bridge bound, and every later sync failed with ZONE_ALREADY_SET while the
kernel kept 104.16.0.0/12.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import need_root
from support.cfdata import CURRENT, OLD
from support.firewalld.harness import FwHarness, Lab, kernel_set, owned
from support.firewalld.harness import lab as make_lab
from support.iptables.traffic import CF, OLD_ONLY, OUTSIDE
from support.kill_points import KILLS, Killer, sync_argv

from cfallow.engine import run_backend
from cfallow.model import family

pytestmark = pytest.mark.root
ADMIN = {"zone": (), "restrict": (("--zone=public", "--add-service=https"),)}
BRIDGE = "104.16.0.0/13"


@pytest.fixture(scope="module", params=["zone", "restrict"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def lab(mode: str) -> Iterator[Lab]:
    need_root()
    with make_lab(ADMIN[mode]) as lb:
        yield lb


@pytest.fixture
def harness(clean: Lab, mode: str) -> FwHarness:
    return FwHarness(clean.fw, clean.monitor, mode)


def bridge_rule() -> str:
    return (
        f'rule priority="-32768" family="ipv4" source address="{BRIDGE}" port port="443" '
        'protocol="tcp" accept'
    )


def assert_converged(h: FwHarness, lab: Lab, where: str) -> None:
    assert owned(h.fw) == CURRENT, f"{where}: runtime/permanent not the current list"
    if h.mode == "zone":
        sources = h.fw.cmd("--zone=cloudflare", "--list-sources").split()
        assert sources == ["ipset:cloudflare-v4", "ipset:cloudflare-v6"], f"{where}: {sources}"
    else:
        rules = h.fw.cmd("--zone=public", "--list-rich-rules").splitlines()
        assert all("ipset=" in r for r in rules) and len(rules) == 2, f"{where}: {rules}"
    assert lab.net.can_connect(CF[0]), f"{where}: Cloudflare refused"
    assert not lab.net.can_connect(OLD_ONLY), f"{where}: the range removed in 2021 gets in"
    assert not lab.net.can_connect(OUTSIDE[0]), f"{where}: an outsider gets in"


def test_a_bridge_left_by_a_stopped_run_is_taken_and_removed(
    harness: FwHarness, clean: Lab
) -> None:
    assert run_backend(harness.backend(), OLD, dry_run=False).error is None
    # what a run killed right after its first bridge call leaves behind (runtime only)
    if harness.mode == "zone":
        clean.fw.cmd("--zone=cloudflare", f"--add-source={BRIDGE}")
    else:
        clean.fw.cmd("--zone=public", "--add-rich-rule", bridge_rule())
    result = run_backend(harness.backend(), CURRENT, dry_run=False)
    assert result.error is None, result.error
    assert_converged(harness, clean, "after a leftover bridge")


def cli_argv(h: FwHarness, tmp: Path) -> list[str]:
    cfg = tmp / "config.toml"
    section = "".join(f"{k} = {_toml(v)}\n" for k, v in h.config().items())
    cfg.write_text("[backends.firewalld]\n" + section)
    return sync_argv(cfg, tmp / "state")


def _toml(v: object) -> str:
    return str(v).replace("'", '"') if isinstance(v, list) else f'"{v}"'


def test_sigkill_mid_change_then_the_next_run_converges(
    harness: FwHarness, clean: Lab, tmp_path: Path
) -> None:
    argv, env = cli_argv(harness, tmp_path), dict(os.environ)
    killer = Killer(f"firewalld {harness.mode}")

    def reset() -> None:
        assert run_backend(harness.backend(), OLD, dry_run=False).error is None

    killer.measure(reset, argv, env)
    assert_converged(harness, clean, "a full run")
    for i in range(KILLS):
        reset()
        killer.kill_one(argv, env)
        left = kernel_set(clean.fw, "cloudflare-v4")
        killer.landed(
            "old" if left == family(OLD, 4) else "new" if left == family(CURRENT, 4) else "between"
        )
        assert clean.fw.state() == "running", clean.fw.log_tail()
        done = subprocess.run(
            argv, capture_output=True, text=True, env=env, timeout=120, check=False
        )
        assert done.returncode == 0, f"{killer.where(i)}: {done.stderr}"
        assert_converged(harness, clean, killer.where(i))
    killer.summary()
