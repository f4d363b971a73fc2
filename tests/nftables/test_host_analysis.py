"""The host analysis end to end: the real CLI in a namespace, the real kernel deciding.

No more silent no-ops: iptables allow mode refuses where a native base chain drops
anyway, says when it restricts nothing, and still works where iptables decides.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support import namespace, ns_exec, sh
from support.cli_helpers import unwrapped
from support.iptables.traffic import CF, OUTSIDE, Pair, pair
from support.nftables.helpers import ADMIN_DROP, Nft, cli

from cfallow.cli.config import DEFAULT_CONFIG

pytestmark = pytest.mark.root

#: The first paragraph of the issue: Debian's nftables.conf, as shipped plus ssh.
DEBIAN = "flush ruleset\n" + ADMIN_DROP % ""
ONE_LINE = (
    "iptables: allow mode cannot take effect here: inet filter input: policy drop still drops "
    "tcp/80,443 from Cloudflare after iptables' accept (IPv4); enable [backends.nftables] with "
    'mode = "sets" (your rule references the set) or "lockdown"'
)
OPEN_NOTE = (
    "allow mode: INPUT policy is ACCEPT and nothing later drops tcp/80,443 — outsiders still "
    'get in; mode = "lockdown" restricts'
)
#: What ufw (iptables-nft) leaves in the filter table, reduced: policy DROP and its chains.
UFW = """*filter
:INPUT DROP [0:0]
:ufw-before-input - [0:0]
:ufw-user-input - [0:0]
-A INPUT -j ufw-before-input
-A INPUT -j ufw-user-input
-A ufw-before-input -i lo -j ACCEPT
-A ufw-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A ufw-before-input -p ipv6-icmp -j ACCEPT
-A ufw-user-input -p tcp --dport 22 -j ACCEPT
COMMIT
"""
IPT = "[backends.iptables]\n"


@pytest.fixture
def lab() -> Iterator[Pair]:
    with pair() as p:
        yield p


def reach(p: Pair) -> dict[str, bool]:
    sources = (*CF, *OUTSIDE)
    with ThreadPoolExecutor(len(sources)) as pool:
        return dict(zip(sources, pool.map(p.can_connect, sources)))


def test_native_policy_drop_and_iptables_allow_mode_exit_1_with_one_line(
    lab: Pair, tmp_path: Path
) -> None:
    nft = Nft(lab.server)
    nft.load(DEBIAN)
    before = nft.ruleset()
    result = cli(lab.server, tmp_path, IPT, "sync", "--source", "bundled")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"cfallow: error: {ONE_LINE}"]
    assert nft.ruleset() == before  # nothing written
    assert not any(reach(lab).values())
    if not DEFAULT_CONFIG.exists():  # the built-in default (no config file) says the same
        argv = [sys.executable, "-m", "cfallow", "--state-dir", str(tmp_path / "st")]
        default = subprocess.run(
            ns_exec(lab.server, *argv, "sync", "--source", "bundled"),
            capture_output=True,
            text=True,
            check=False,
        )
        assert default.returncode == 1 and ONE_LINE in default.stderr
    status = cli(lab.server, tmp_path, IPT, "status", "--source", "bundled")
    assert status.returncode == 1 and ONE_LINE in status.stderr
    backends = cli(lab.server, tmp_path, IPT, "backends")
    shown = unwrapped(backends.stdout)  # lines wrap at 100 columns
    assert "nftables: inet filter input (hook input, priority 0, policy drop" in shown
    assert 'enforces the allowlist here: nftables (mode = "sets" or "lockdown")' in shown


def test_iptables_only_host_works_as_before(lab: Pair, tmp_path: Path) -> None:
    policy_drop = (
        "*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\n"
        "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n"
    )
    sh(ns_exec(lab.server, "iptables-restore"), input=policy_drop)
    sh(
        ns_exec(lab.server, "ip6tables-restore"),
        input=policy_drop.replace("COMMIT", "-A INPUT -p ipv6-icmp -j ACCEPT\nCOMMIT"),
    )
    result = cli(lab.server, tmp_path, IPT, "sync", "--source", "bundled")
    assert result.returncode == 0, result.stderr
    assert "note:" not in result.stdout and result.stderr == ""
    assert reach(lab) == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}


def test_ufw_style_chains_work_as_before(lab: Pair, tmp_path: Path) -> None:
    sh(ns_exec(lab.server, "iptables-restore"), input=UFW)
    sh(ns_exec(lab.server, "ip6tables-restore"), input=UFW)
    result = cli(lab.server, tmp_path, IPT, "sync", "--source", "bundled")
    assert result.returncode == 0, result.stderr
    assert OPEN_NOTE not in result.stdout
    assert reach(lab) == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}
    backends = cli(lab.server, tmp_path, IPT, "backends")
    assert "ufw: active" in backends.stdout


def test_allow_mode_on_a_default_host_says_it_restricts_nothing(lab: Pair, tmp_path: Path) -> None:
    dry = cli(lab.server, tmp_path, IPT, "sync", "--source", "bundled", "--dry-run")
    assert unwrapped(f"note: {OPEN_NOTE}") in unwrapped(dry.stdout)
    result = cli(lab.server, tmp_path, IPT, "sync", "--source", "bundled")
    assert result.returncode == 0 and unwrapped(f"note: {OPEN_NOTE}") in unwrapped(result.stdout)
    assert reach(lab) == dict.fromkeys((*CF, *OUTSIDE), True)  # what the note says
    status = cli(lab.server, tmp_path, IPT, "status", "--source", "bundled")
    # status: a table, the note in its note column
    assert status.returncode == 0 and unwrapped(OPEN_NOTE) in unwrapped(status.stdout)
    verbose = cli(lab.server, tmp_path, IPT, "-v", "sync", "--source", "bundled", "--dry-run")
    assert "cfallow: host firewall: enforces the allowlist here: iptables mode" in verbose.stderr
    lockdown = cli(lab.server, tmp_path, IPT + 'mode = "lockdown"\n', "sync", "--source", "bundled")
    assert lockdown.returncode == 0 and "note:" not in lockdown.stdout
    assert reach(lab) == {CF[0]: True, CF[1]: True, OUTSIDE[0]: False, OUTSIDE[1]: False}


def test_a_ruleset_it_does_not_understand_is_cannot_tell_not_ok(tmp_path: Path) -> None:
    with namespace("nfu") as ns:
        Nft(ns).load(
            "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority 0; "
            "policy accept;\n\t\tmeta mark 0x1 drop\n\t}\n}\n"
        )
        result = cli(ns, tmp_path, IPT, "sync", "--source", "bundled", "--dry-run")
        assert result.returncode == 0, result.stderr
        assert (
            "note: cannot tell whether iptables' accept takes effect (IPv4): inet filter input: "
            "a rule this analysis does not understand"
        ) in unwrapped(result.stdout)
        assert unwrapped(OPEN_NOTE) not in unwrapped(result.stdout)


def test_sets_mode_errors_are_one_clear_line(tmp_path: Path) -> None:
    conf = f'[backends.nftables]\nmode = "sets"\ntable = "inet filter"\nfile = "{tmp_path}/s.nft"\n'
    with namespace("nfe") as ns:
        missing = cli(ns, tmp_path, conf, "sync", "--source", "bundled")
        assert missing.returncode == 1
        assert missing.stderr.splitlines() == [
            'cfallow: error: nftables: table inet filter not found: mode = "sets" manages sets '
            "inside your own table (create it in /etc/nftables.conf, see docs/nftables.md, "
            "or set table = ...)"
        ]
        # "add set" with other flags on an existing set succeeds and keeps the old flags:
        # the set is read back, and a wrong one is refused, not "fixed" in silence
        Nft(ns).load(
            'table inet filter {\n\tset cloudflare_v4 { type ipv4_addr; comment "cfallow"; }\n}\n'
        )
        wrong = cli(ns, tmp_path, conf, "sync", "--source", "bundled")
        assert wrong.returncode == 1
        assert (
            "nftables: set inet filter cloudflare_v4 is type ipv4_addr, flags none: cfallow "
            "needs type ipv4_addr; flags interval (no auto-merge)"
        ) in wrong.stderr
        assert not (tmp_path / "s.nft").exists()


def test_sets_mode_remove_says_what_still_references_the_set(tmp_path: Path) -> None:
    conf = f'[backends.nftables]\nmode = "sets"\nfile = "{tmp_path}/s.nft"\n'
    with namespace("nfx") as ns:
        nft = Nft(ns)
        nft.load(
            "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority 0; "
            "policy accept;\n\t}\n}\n"
        )
        assert cli(ns, tmp_path, conf, "sync", "--source", "bundled").returncode == 0
        nft("add", "rule", "inet", "filter", "input", "ip", "saddr", "@cloudflare_v4", "accept")
        removed = cli(ns, tmp_path, conf, "remove")
        assert removed.returncode == 0, removed.stderr
        assert (
            "note: set inet filter cloudflare_v4 emptied, not deleted: still referenced by "
            "inet filter input (rule handle"
        ) in unwrapped(removed.stdout)
        assert nft.elements("inet", "filter", "cloudflare_v4") == frozenset()
        assert nft.elements("inet", "filter", "cloudflare_v6") == frozenset()
        assert "cloudflare_v6" not in nft.ruleset()  # unreferenced: deleted
        assert not (tmp_path / "s.nft").exists()


def test_without_host_check_a_referenced_set_is_one_clear_error(tmp_path: Path) -> None:
    conf = f'[backends.nftables]\nmode = "sets"\nhost_check = false\nfile = "{tmp_path}/s.nft"\n'
    with namespace("nfy") as ns:
        nft = Nft(ns)
        nft.load(
            "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority 0; "
            "policy accept;\n\t}\n}\n"
        )
        assert cli(ns, tmp_path, conf, "sync", "--source", "bundled").returncode == 0
        nft("add", "rule", "inet", "filter", "input", "ip", "saddr", "@cloudflare_v4", "accept")
        before = nft.ruleset()
        removed = cli(ns, tmp_path, conf, "remove")
        assert removed.returncode == 1
        assert removed.stderr.splitlines() == [
            "cfallow: error: nftables: a set in inet filter is still referenced by a rule: nothing "
            "changed; remove the rule first (with host_check = true the set is emptied and the "
            "rule named)"
        ]
        assert nft.ruleset() == before


#: The admin drops the web ports with a verdict map, and keeps a set of ports: the
#: native chain drops what iptables' accept lets through, whatever the policy says.
VMAP = """table inet filter {
	set webports { type inet_service; elements = { 80, 443 }; }
	chain input {
		type filter hook input priority filter; policy accept;
		iif "lo" accept
		ct state vmap { established : accept, related : accept, invalid : drop }
		tcp dport vmap { 80 : drop, 443 : drop, 22 : accept }
	}
}
"""


def test_a_verdict_map_that_drops_the_ports_is_seen(lab: Pair, tmp_path: Path) -> None:
    """Not "success": the kernel drops Cloudflare's connections, so the sync exits 1 and
    names the rule; a set of ports in the admin's table is read without error."""
    Nft(lab.server).load(VMAP)
    result = cli(lab.server, tmp_path, IPT, "sync", "--source", "bundled")
    assert not any(reach(lab).values())  # what the kernel does
    assert result.returncode == 1, result.stdout
    line = unwrapped(result.stderr)
    assert "allow mode cannot take effect here: inet filter input: rule handle" in line
    assert "(drop) still drops tcp/80,443 from Cloudflare after iptables' accept" in line
