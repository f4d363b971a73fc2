"""What the iptables backend refuses to own: other programs' chains, targets, odd parents.

Also the settings that would silently undo the allowlist (``also_allow`` of
everything) or lock the admin out (SSH in lockdown). Pure parts first, then a
real Fail2Ban-style chain holding bans in a namespace, both variants, through
the CLI.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfallow.backends.iptables.backend import IptablesBackend
from cfallow.backends.iptables.diff import assess, assess_removal
from cfallow.backends.iptables.rules import Settings, observe
from cfallow.backends.iptables.save import Table, parse_save
from support import namespace, ns_exec
from support.cfdata import CURRENT
from support.iptables.helpers import JUMPS, VARIANTS, Fw, legacy_bin

from cfallow.backend import Context, build
from cfallow.errors import BackendError, ConfigError

V4 = frozenset(n for n in CURRENT if n.version == 4)
F2B = Settings(chain="f2b-sshd")
F2B_JUMP = "-p tcp -m multiport --dports 22 -j f2b-sshd"
BANS = [
    "-s 203.0.113.7/32 -j REJECT --reject-with icmp-port-unreachable",
    "-s 198.51.100.9/32 -j REJECT --reject-with icmp-port-unreachable",
    "-j RETURN",
]


def backend(**section: Any) -> IptablesBackend:
    made = build("iptables", section, Context())
    assert isinstance(made, IptablesBackend)
    return made


def table(**chains: list[str]) -> Table:
    lines = ["*filter", ":INPUT ACCEPT [0:0]"]
    lines += [f":{name.replace('_', '-')} - [0:0]" for name in chains if name != "INPUT"]
    for name, rules in chains.items():
        lines += [f"-A {name.replace('_', '-')} {r}" for r in rules]
    return parse_save("\n".join([*lines, "COMMIT"]))


# -- config ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"chain": "MARK"}, "chain: not a usable chain name: 'MARK' is an iptables target"),
        ({"chain": "DNAT"}, "'DNAT' is an iptables target"),
        ({"chain": "CT"}, "'CT' is an iptables target"),
        ({"chain": "TRACE"}, "'TRACE' is an iptables target"),
        ({"chain": "log"}, "'log' is an iptables target"),
        ({"chain": "PREROUTING"}, "'PREROUTING' is not a chain cfallow can own"),
        ({"chain": "OUTPUT"}, "'OUTPUT' is not a chain cfallow can own"),
        ({"parent": "OUTPUT"}, "parent: must be one of INPUT, DOCKER-USER, got 'OUTPUT'"),
        ({"parent": "FORWARD"}, "parent: must be one of INPUT, DOCKER-USER, got 'FORWARD'"),
        ({"parent": "MY-CHAIN"}, "parent: must be one of INPUT, DOCKER-USER"),
        ({"also_allow": ["0.0.0.0/0"]}, "also_allow: covers every IPv4 address"),
        ({"also_allow": ["0.0.0.0/1", "128.0.0.0/1"]}, "covers every IPv4 address"),
        ({"also_allow": ["::/0"]}, "also_allow: covers every IPv6 address"),
        ({"mode": "lockdown", "ports": [22, 443]}, "lockdown on port 22 lets only Cloudflare"),
        ({"mode": "lockdown", "ports": ["1-65535"]}, "set lockdown_ssh = true"),
        ({"adopt_chain": "yes"}, "adopt_chain: expected true or false"),
    ],
)
def test_config_errors(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        backend(**section)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_confirmed_ssh_lockdown_is_accepted_and_a_huge_port_range_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert backend(mode="lockdown", ports=[22], lockdown_ssh=True).settings.ports[0].first == 22
    assert backend(ports=[22]).settings.mode == "allow"  # allow mode: nothing is locked
    assert backend(mode="lockdown", protocol="udp", ports=[22]).settings.protocol == "udp"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    backend(mode="lockdown", ports=["1-65535"], lockdown_ssh=True)
    warned = {r.getMessage() for r in caplog.records if r.levelno == logging.WARNING}
    assert warned == {
        "iptables: lockdown on 65535 ports: every service on them answers only Cloudflare"
    }


# -- ownership (pure) ------------------------------------------------------------------


def test_a_fail2ban_chain_is_refused_for_sync_and_removal() -> None:
    t = table(INPUT=[F2B_JUMP], f2b_sshd=BANS)
    obs = observe(t, 4, F2B)
    for call in (lambda: assess(obs, F2B, V4), lambda: assess_removal(obs, F2B)):
        with pytest.raises(BackendError) as exc:
            call()
        msg = str(exc.value)
        assert msg.startswith("IPv4: chain f2b-sshd exists and is not cfallow's (3 rule(s); ")
        assert "jumped to from INPUT without the cfallow comment" in msg
        assert msg.endswith("or set adopt_chain = true to let cfallow replace it")


@pytest.mark.parametrize(
    "chains",
    [
        {"INPUT": [F2B_JUMP], "f2b_sshd": []},  # empty, but something else jumps into it
        {"f2b_sshd": BANS},  # nothing jumps into it, but it holds rules of another shape
    ],
)
def test_unmarked_chains_are_refused(chains: dict[str, list[str]]) -> None:
    with pytest.raises(BackendError, match="exists and is not cfallow's"):
        assess(observe(table(**chains), 4, F2B), F2B, V4)


@pytest.mark.parametrize(
    "chains",
    [
        {"CFALLOW": []},  # empty and unreferenced: nothing to lose
        {"CFALLOW": [f"-s {n} -j ACCEPT" for n in V4][:3]},  # cfallow's shapes, jump deleted
        {"INPUT": list(JUMPS), "CFALLOW": ["-s 1.2.3.0/24 -j LOG"]},  # marked jumps: a hand edit
    ],
)
def test_chains_with_cfallows_marks_are_taken(chains: dict[str, list[str]]) -> None:
    _, ops = assess(observe(table(**chains), 4, Settings()), Settings(), V4)
    assert (ops.jumps == Settings().jumps()) != ops.declare  # the jumps put back, or a rewrite
    assert not ops.empty
    removal = assess_removal(observe(table(**chains), 4, Settings()), Settings())[1]
    assert removal.drop_chain


def test_adopt_chain_takes_it_over() -> None:
    adopt = Settings(chain="f2b-sshd", adopt=True)
    drift, ops = assess(observe(table(INPUT=[F2B_JUMP], f2b_sshd=BANS), 4, adopt), adopt, V4)
    assert ops.declare and ops.jumps == adopt.jumps()
    assert [d.spec for d in ops.delete] == [F2B_JUMP]
    wants = " and ".join(j.spec() for j in adopt.jumps())
    assert f"IPv4: jump differs from config: is {F2B_JUMP}; config wants {wants}" in drift


# -- a real Fail2Ban-style chain ---------------------------------------------------------


@pytest.fixture(params=VARIANTS)
def fw(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fw]:
    with namespace("ipo") as ns:
        yield Fw(ns, request.param, tmp_path)


def cli(fw: Fw, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    conf = fw.tmp / "config.toml"
    conf.write_text(config)
    path = os.environ["PATH"]
    if fw.variant == "legacy":
        path = f"{legacy_bin(fw.tmp / 'legacy-bin')}:{path}"
    argv = ["/usr/bin/env", f"PATH={path}", sys.executable, "-m", "cfallow", "--config", str(conf)]
    argv += ["--state-dir", str(fw.tmp / "state"), *args]
    env = {**os.environ, "XTABLES_LOCKFILE": fw.lock}
    return subprocess.run(
        ns_exec(fw.ns, *argv), capture_output=True, text=True, env=env, timeout=120, check=False
    )


def add_fail2ban_chain(fw: Fw) -> None:
    """What Fail2Ban's iptables-multiport action builds for jail sshd, with two bans."""
    for version, bans in ((4, ("203.0.113.7", "198.51.100.9")), (6, ("2001:db8::7",))):
        fw.ipt(version, "-N", "f2b-sshd")
        fw.ipt(version, "-A", "f2b-sshd", "-j", "RETURN")
        fw.ipt(
            version,
            "-I",
            "INPUT",
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            "22",
            "-j",
            "f2b-sshd",
        )
        for ip in bans:
            fw.ipt(version, "-I", "f2b-sshd", "1", "-s", ip, "-j", "REJECT")


def test_a_fail2ban_chain_with_bans_is_refused_and_left_byte_identical(fw: Fw) -> None:
    add_fail2ban_chain(fw)
    before = fw.both(counters=True)
    assert "-A f2b-sshd -s 203.0.113.7/32 -j REJECT" in before
    conf = '[backends.iptables]\nchain = "f2b-sshd"\n'
    runs = (("sync", "--dry-run"), ("sync",), ("status",), ("remove", "--dry-run"), ("remove",))
    for args in runs:
        done = cli(fw, conf, *args, *(("--source", "bundled") if args[0] != "remove" else ()))
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        errors = [ln for ln in done.stderr.splitlines() if "error" in ln]
        assert len(errors) == 1, done.stderr
        assert "chain f2b-sshd exists and is not cfallow's" in errors[0]
        assert fw.both(counters=True) == before, args
    adopted = cli(fw, conf + "adopt_chain = true\n", "sync", "--source", "bundled")
    assert adopted.returncode == 0, adopted.stderr
    assert fw.chain(4, "f2b-sshd")[0].endswith("-j ACCEPT")
    assert cli(fw, conf, "status", "--source", "bundled").returncode == 0  # now marked
