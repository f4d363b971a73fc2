"""Hosts with ufw's, firewalld's and Docker's rules: verify names what really decides."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from support import need_root, need_tool, ns_exec, sh
from support.verify_host import Host, host, scratch_namespaces

pytestmark = [pytest.mark.xdist_group("verify"), pytest.mark.root]

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "verify"
MODES = ("allow", "lockdown")


def config(mode: str) -> str:
    return f'[backends.iptables]\nports = [80, 443]\nmode = "{mode}"\nvariant = "nft"\n'


def verify(h: Host, mode: str) -> tuple[int, list[dict[str, Any]]]:
    res = h.cfallow(config(mode), "verify", "--json")
    return res.returncode, json.loads(res.stdout)["verify"]["probes"]


def sync(h: Host, mode: str) -> None:
    res = h.cfallow(config(mode), "sync", "--source", "bundled")
    assert res.returncode == 0, res.stderr


def by_kind(probes: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [p for p in probes if p["kind"] == kind]


@pytest.fixture(autouse=True)
def _tools() -> None:
    need_root()
    need_tool("nft", "iptables-nft", "nsenter")


def ufw(h: Host, root: Path, *args: str) -> None:
    """The real ufw with a private root (its config, state and init script copied there)."""
    sh(ns_exec(h.ns, "ufw", f"--rootdir={root}", f"--datadir={root}", *args))


def ufw_root(tmp: Path) -> Path:
    root = tmp / "ufwroot"
    for d in ("etc", "lib", "usr/share", "usr/sbin"):
        (root / d).mkdir(parents=True)
    shutil.copytree("/etc/ufw", root / "etc/ufw")
    shutil.copytree("/etc/default", root / "etc/default")
    shutil.copytree("/usr/lib/ufw", root / "lib/ufw")
    (root / "usr/share/ufw").symlink_to("/usr/share/ufw")
    for tool in (
        "iptables",
        "ip6tables",
        "iptables-restore",
        "ip6tables-restore",
        "iptables-save",
        "ip6tables-save",
        "sysctl",
    ):
        found = shutil.which(tool)
        assert found, tool
        (root / "usr/sbin" / tool).symlink_to(found)
    return root


@pytest.mark.parametrize("mode", MODES)
def test_ufw(tmp_path: Path, mode: str) -> None:
    need_tool("ufw")
    with host(tmp_path) as h:
        root = ufw_root(tmp_path)
        ufw(h, root, "--force", "enable")
        ufw(h, root, "allow", "80/tcp")
        ufw(h, root, "allow", "443/tcp")
        assert "xt match" in h.ruleset()  # ufw's rules do not list as plain nft
        sync(h, mode)
        rc, probes = verify(h, mode)
        assert rc == 0, probes
        assert all(p["verdict"] == "accept" for p in by_kind(probes, "cloudflare"))
        out = by_kind(probes, "outsider")
        if mode == "lockdown":
            assert all(p["verdict"] == "drop" and "CFALLOW" in p["decided_by"] for p in out)
        else:  # ufw itself opens 80 and 443 to everyone: allow mode adds, never restricts
            assert all(
                p["verdict"] == "accept" and "-user-input: rule tcp dport" in p["decided_by"]
                for p in out
            ), [(p["verdict"], p["decided_by"]) for p in out]
    assert scratch_namespaces() == []


def firewalld_ruleset(open_web: bool) -> str:
    text = (FIXTURES / "firewalld.nft").read_text()
    if not open_web:
        text = text.replace("\t\ttcp dport 80 accept\n", "").replace(
            "\t\ttcp dport 443 accept\n", ""
        )
    return text


@pytest.mark.parametrize("mode", MODES)
def test_firewalld_with_http_and_https_open(tmp_path: Path, mode: str) -> None:
    with host(tmp_path) as h:
        h.nft(firewalld_ruleset(open_web=True))
        sync(h, mode)
        rc, probes = verify(h, mode)
        assert rc == 0, probes
        out = by_kind(probes, "outsider")
        want = "drop" if mode == "lockdown" else "accept"
        assert all(p["verdict"] == want for p in out)
        if mode == "allow":
            assert all("inet firewalld" in p["decided_by"] for p in out), [
                p["decided_by"] for p in out
            ]
    assert scratch_namespaces() == []


@pytest.mark.parametrize("mode", MODES)
def test_firewalld_rejects_what_its_zone_does_not_open(tmp_path: Path, mode: str) -> None:
    with host(tmp_path) as h:
        h.nft(firewalld_ruleset(open_web=False))
        sync(h, mode)
        res = h.cfallow(config(mode), "verify")
        assert res.returncode == 5
        fails = [x for x in res.stderr.splitlines() if "verify:" in x and "should be" in x]
        assert fails and all(
            "(cloudflare " in x and "): reject, should be accepted" in x for x in fails
        ), fails
        assert all(
            "inet firewalld filter_IN_public: rule reject with icmpx admin-prohibited" in x
            for x in fails
        ), [x for x in fails if "filter_IN_public:" not in x]
    assert scratch_namespaces() == []


@pytest.mark.parametrize("mode", MODES)
def test_docker_chains(tmp_path: Path, mode: str) -> None:
    with host(tmp_path, extra=[("docker0", ["172.17.0.1/16"])]) as h:
        sh(ns_exec(h.ns, "iptables-nft-restore"), input=(FIXTURES / "docker.rules").read_text())
        sync(h, mode)
        rc, probes = verify(h, mode)
        assert rc == 0, probes
        cf = by_kind(probes, "cloudflare")
        assert all("CFALLOW" in p["decided_by"] for p in cf), [p["decided_by"] for p in cf]
        out = by_kind(probes, "outsider")
        assert all(p["verdict"] == ("drop" if mode == "lockdown" else "accept") for p in out)
        assert "DOCKER" in sh(ns_exec(h.ns, "iptables-nft-save"))
    assert scratch_namespaces() == []
