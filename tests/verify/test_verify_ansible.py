"""Ansible ``verify: true``: a plan that would not work fails the task; the host is untouched."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support import need_root, need_tool
from support.verify_host import host, ipset_host

pytestmark = [pytest.mark.root, pytest.mark.slow]


def _harness() -> ModuleType:
    """The real-ansible-playbook harness of tests/ops (one collection build per use)."""
    path = Path(__file__).resolve().parents[1] / "ops" / "test_ansible.py"
    spec = importlib.util.spec_from_file_location("cfallow_ansible_harness", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_verify_true_fails_the_task_with_the_lines_and_changes_nothing(tmp_path: Path) -> None:
    need_root()
    need_tool("nft", "iptables-nft", "ipset")
    h = _harness()
    need_tool(str(h.BIN / "ansible-playbook"), str(h.BIN / "ansible-galaxy"))
    ansible = h.Ansible(tmp_path / "ansible")
    with host(tmp_path) as hst:
        ipset_host(hst)  # the admin's blocklist holds a Cloudflare range
        before = hst.ruleset()
        config = tmp_path / "config.toml"
        config.write_text(
            '[backends.iptables]\nports = [443]\nmode = "lockdown"\nvariant = "nft"\n'
        )
        args: dict[str, Any] = {
            "config": str(config),
            "state_dir": str(tmp_path / "state"),
            "executable": str(h.CFALLOW),
            "source": "bundled",
            "verify": True,
        }
        run = ansible.play([h.module_task("v", **args, ignore_errors=True)], ns=hst.ns)
        assert run.ignored == 1, run.stdout
        res = run.results["v"]
        assert res["rc"] == 5 and res["failed"] is True
        assert "verify did not hold, nothing changed" in res["msg"]
        assert res["verify_failures"]
        assert all("ip raw PREROUTING" in line for line in res["verify_failures"])
        assert hst.ruleset() == before
        # the same module on an open host: the proof holds and the sync is applied
        hst.nft("flush ruleset\n")
        run = ansible.play([h.module_task("ok", **args)], ns=hst.ns)
        assert run.failed == 0 and run.results["ok"]["changed"] is True, run.stdout
        assert "CFALLOW" in hst.ruleset()
