"""The pure analysis over rulesets real ``nft`` produced (loaded in a namespace, read with -j)."""

from __future__ import annotations

import pytest
from cfallow.backends.iptables.advice import iptables_allow
from support import namespace, ns_exec, sh
from support.nftables.helpers import ADMIN_DROP, Nft

from cfallow.netfilter import host as hostfw
from cfallow.netfilter.advice import recommend
from cfallow.netfilter.host import Host, outcome, parse_ruleset
from cfallow.netfilter.save import input_chain as save_input
from cfallow.runner import Runner
from cfallow.section import PortRange

pytestmark = pytest.mark.root
WEB = (PortRange(80, 80), PortRange(443, 443))


def host_of(ruleset: str) -> Host:
    with namespace("hfw") as ns:
        nft = Nft(ns)
        nft.load(ruleset)
        return Host(parse_ruleset(nft("-j", "list", "ruleset")), iptables="nft")


def verdict(
    host: Host, version: int = 4, *, cloudflare: bool = True, **kw: object
) -> tuple[str, str]:
    out = outcome(host, version, "tcp", WEB, cloudflare=cloudflare, **kw)  # type: ignore[arg-type]
    return out.verdict, out.why


def chain(body: str, policy: str = "drop", extra: str = "") -> str:
    return (
        "table inet filter {\n" + extra + "\tchain input {\n\t\ttype filter hook input priority 0; "
        f"policy {policy};\n{body}\t}}\n}}\n"
    )


def test_debian_policy_drop_names_table_chain_and_policy() -> None:
    host = host_of(ADMIN_DROP % "")
    assert verdict(host) == ("drop", "inet filter input: policy drop")
    assert verdict(host, 6) == ("drop", "inet filter input: policy drop")
    error, _ = iptables_allow(host, (4, 6), "tcp", WEB, "CFALLOW")
    assert error is not None and error.startswith(
        "allow mode cannot take effect here: inet filter input: policy drop"
    )
    assert recommend(host).startswith('nftables (mode = "sets" or "lockdown")')


def test_an_accept_for_the_ports_lets_it_through() -> None:
    host = host_of(ADMIN_DROP % "\t\ttcp dport { 80, 443 } accept\n")
    assert verdict(host)[0] == "accept" and verdict(host, cloudflare=False)[0] == "accept"
    only_443 = host_of(ADMIN_DROP % "\t\ttcp dport 443 accept\n")
    assert verdict(only_443)[0] == "drop"  # port 80 is still dropped: the worst port wins


def test_a_drop_rule_and_a_jump_into_a_dropping_chain() -> None:
    host = host_of(chain("\t\ttcp dport 443 reject with tcp reset\n", "accept"))
    kind, why = verdict(host)
    assert kind == "drop" and why.startswith("inet filter input: rule handle")
    jumped = host_of(
        "table inet filter {\n\tchain web {\n\t\ttcp dport 80 drop\n\t}\n"
        "\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n"
        "\t\tjump web\n\t}\n}\n"
    )
    assert verdict(jumped)[0] == "drop" and "inet filter web" in verdict(jumped)[1]


def test_loopback_established_icmp_and_udp_rules_do_not_decide() -> None:
    host = host_of(
        chain(
            '\t\tiif "lo" drop\n\t\tct state invalid drop\n\t\tmeta l4proto icmp drop\n'
            "\t\tudp dport 443 drop\n\t\tct state established,related drop\n",
            "accept",
        )
    )
    assert verdict(host) == ("accept", "no base chain drops it")


def test_source_matches_decide_only_for_cfallows_sets() -> None:
    sets = "\tset cloudflare_v4 { type ipv4_addr; flags interval; }\n"
    host = host_of(chain("\t\tip saddr @cloudflare_v4 tcp dport { 80, 443 } accept\n", extra=sets))
    assert verdict(host, own_sets={"cloudflare_v4"})[0] == "accept"
    assert verdict(host, cloudflare=False, own_sets={"cloudflare_v4"})[0] == "drop"
    assert verdict(host)[0] == "unknown"  # a set not known as cfallow's: cannot tell
    other = host_of(chain("\t\tip saddr 10.0.0.0/8 accept\n"))
    assert verdict(other)[0] == "unknown"
    assert verdict(other, 6)[0] == "drop"  # an ip match never matches IPv6


def test_what_it_does_not_understand_is_unknown_never_ok() -> None:
    for body in (
        "\t\tmeta mark 0x1 drop\n",
        '\t\tiifname "eth0" drop\n',
        "\t\tfib daddr type local drop\n",
    ):
        assert verdict(host_of(chain(body, "accept")))[0] == "unknown", body


def test_iptables_nft_tables_are_the_accepts_own() -> None:
    host = host_of(
        "table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority 0; "
        "policy drop;\n\t}\n}\n"
    )
    error, notes = iptables_allow(host, (4,), "tcp", WEB, "CFALLOW")
    assert error is None and notes == ()


def test_legacy_filter_input_from_save_text() -> None:
    text = (
        "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m multiport --dports 80,443 "
        "-m comment --comment cfallow -j CFALLOW\nCOMMIT\n"
    )
    legacy = save_input(text, 4)
    assert legacy is not None and legacy.policy == "accept"
    host = Host(hostfw.Ruleset(), iptables="legacy", inputs=(legacy,))
    assert verdict(host, cloudflare=False, skip_jumps={"CFALLOW"})[0] == "accept"
    dropping = save_input(text.replace("ACCEPT [0:0]", "DROP [0:0]"), 4)
    assert dropping is not None
    assert (
        verdict(
            Host(hostfw.Ruleset(), inputs=(dropping,)), cloudflare=False, skip_jumps={"CFALLOW"}
        )[0]
        == "drop"
    )


def test_read_without_nft_is_cannot_tell() -> None:
    host = hostfw.read(Runner(prefix=["/nonexistent-cfallow-wrapper"]))
    assert host.nft is None and host.nft_error == "nft is not installed"
    assert verdict(host)[0] == "unknown"


def test_a_jump_into_a_chain_whose_rules_were_not_read_is_cannot_tell() -> None:
    """iptables' own chains are read from iptables-save, not nft: a jump there is not "ok"."""
    rules = (
        "*filter\n:INPUT ACCEPT [0:0]\n:ADMIN - [0:0]\n-A INPUT -j ADMIN\n"
        "-A ADMIN -p tcp -j DROP\nCOMMIT\n"
    )
    with namespace("hfj") as ns:
        sh(ns_exec(ns, "iptables-restore"), input=rules)
        host = hostfw.read(Runner(prefix=ns_exec(ns)))
    assert host.iptables == "nft" and host.inputs
    assert verdict(host, cloudflare=False, skip_jumps={"CFALLOW"})[0] == "unknown"
    _, notes = iptables_allow(host, (4, 6), "tcp", WEB, "CFALLOW")
    assert notes == (
        "allow mode: INPUT policy is ACCEPT and nothing later drops tcp/80,443 (IPv6) — "
        'outsiders still get in; mode = "lockdown" restricts',
    )
