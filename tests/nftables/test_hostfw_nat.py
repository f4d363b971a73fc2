"""The NAT part of the host analysis: what iptables-save and nft -j say, and the lines it gives."""

from __future__ import annotations

import json

import pytest
from support import namespace, need_tool, ns_exec, sh

from cfallow.netfilter.nat import NatRule, nat_tables, notes, parse_nft, parse_save, read
from cfallow.runner import Runner
from cfallow.section import PortRange

LOCKED = (PortRange(80, 80), PortRange(443, 443))
HINT = "docker = true guards DNAT'ed connections in the forward hook"


def test_iptables_save_redirect_and_dnat_forms() -> None:
    v4 = parse_save(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n"
        "-A PREROUTING -p tcp -m tcp --dport 443 -j REDIRECT --to-ports 8443\n"
        "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80\n"
        "-A PREROUTING -p tcp -m multiport --dports 80,8000:8080 -j REDIRECT --to-ports 9000-9001\n"
        "-A PREROUTING -p tcp -m tcp ! --dport 22 -j DNAT --to-destination 10.0.0.5\n"
        "-A OUTPUT -p tcp -m tcp --dport 443 -j REDIRECT --to-ports 8443\n"
        "-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE\nCOMMIT\n",
        4,
    )
    p = PortRange
    assert v4 == [
        NatRule("ip nat PREROUTING", (4,), "tcp", (p(443, 443),), (p(8443, 8443),), None),
        NatRule("ip nat DOCKER", (4,), "tcp", (p(8080, 8080),), (p(80, 80),), "172.17.0.2"),
        NatRule(
            "ip nat PREROUTING", (4,), "tcp", (p(80, 80), p(8000, 8080)), (p(9000, 9001),), None
        ),
        NatRule("ip nat PREROUTING", (4,), "tcp", None, None, "10.0.0.5"),
    ]
    (v6,) = parse_save(
        "-A PREROUTING -p tcp -m tcp --dport 443 -j DNAT --to-destination [2001:db8::5]:8443\n", 6
    )
    assert (v6.to_addr, v6.to_port, v6.where) == (
        "2001:db8::5",
        (p(8443, 8443),),
        "ip6 nat PREROUTING",
    )


def test_nft_json_redirect_and_dnat() -> None:
    heads = {
        "nftables": [
            {
                "chain": {
                    "family": "inet",
                    "table": "adminnat",
                    "name": "pre",
                    "type": "nat",
                    "hook": "prerouting",
                }
            },
            {
                "chain": {
                    "family": "ip",
                    "table": "nat",
                    "name": "PREROUTING",
                    "type": "nat",
                    "hook": "prerouting",
                }
            },
        ]
    }
    assert nat_tables(json.dumps(heads)) == [("inet", "adminnat")]  # iptables-nft's: from save
    tcp = {"payload": {"protocol": "tcp", "field": "dport"}}
    table = {
        "nftables": [
            {"chain": {"family": "inet", "table": "adminnat", "name": "pre", "hook": "prerouting"}},
            {
                "rule": {
                    "family": "inet",
                    "table": "adminnat",
                    "chain": "pre",
                    "expr": [
                        {"match": {"op": "==", "left": tcp, "right": 443}},
                        {"redirect": {"port": 8443}},
                    ],
                }
            },
            {
                "rule": {
                    "family": "inet",
                    "table": "adminnat",
                    "chain": "pre",
                    "expr": [
                        {
                            "match": {
                                "op": "==",
                                "left": tcp,
                                "right": {"set": [8443, {"range": [9000, 9001]}]},
                            }
                        },
                        {"dnat": {"family": "ip6", "addr": "2001:db8::1", "port": 443}},
                    ],
                }
            },
        ]
    }
    got = parse_nft({("inet", "adminnat"): json.dumps(table)})
    p = PortRange
    assert got == [
        NatRule("inet adminnat pre", (4, 6), "tcp", (p(443, 443),), (p(8443, 8443),), None),
        NatRule(
            "inet adminnat pre",
            (6,),
            "tcp",
            (p(8443, 8443), p(9000, 9001)),
            (p(443, 443),),
            "2001:db8::1",
        ),
    ]


def test_lines_for_onto_off_and_forwarded() -> None:
    p = PortRange
    off = NatRule("ip nat PREROUTING", (4,), "tcp", (p(443, 443),), (p(8443, 8443),), None)
    onto = NatRule("inet n pre", (4, 6), "tcp", (p(8443, 8443),), (p(443, 443),), None)
    anyport = NatRule("inet n pre", (4, 6), None, None, (p(80, 80),), None)
    fwd = NatRule("ip nat DOCKER", (4,), "tcp", (p(443, 443),), (p(443, 443),), "172.17.0.2")
    inside = NatRule("inet n pre", (4, 6), "tcp", (p(80, 80),), (p(443, 443),), None)
    udp = NatRule("inet n pre", (4, 6), "udp", (p(443, 443),), (p(8443, 8443),), None)
    lines = notes([off, onto, anyport, fwd, inside, udp], (4, 6), "tcp", LOCKED, forward_hint=HINT)
    assert lines == (
        "NAT: ip nat PREROUTING moves tcp/443 to port 8443 (IPv4): the lockdown matches the port "
        "clients connect to, so 443 stays locked; 8443 itself is not",
        "NAT: inet n pre moves tcp/8443 onto locked port 443 (IPv4, IPv6): the lockdown matches "
        "the port clients connect to, so connections to 8443 reach it unrestricted; add that "
        "port to ports or drop it in your own rules",
        "NAT: inet n pre moves tcp/any port onto locked port 80 (IPv4, IPv6): the lockdown "
        "matches the port clients connect to, so connections to any port reach it "
        "unrestricted; add that port to ports or drop it in your own rules",
        "NAT: ip nat DOCKER sends tcp/443 to 172.17.0.2 port 443 (IPv4): connections it forwards "
        f"to another host never reach the input hook; {HINT}",
    )
    assert notes([off], (6,), "tcp", LOCKED, forward_hint=HINT) == ()  # not a family it locks


@pytest.mark.root
def test_reading_a_legacy_host_creates_no_nat_table() -> None:
    """``iptables-legacy-save -t nat`` creates the table it is asked for: it is asked only
    where the table is listed, and then its rules are read."""
    need_tool("iptables-legacy", "iptables-legacy-save")
    with namespace("natr") as ns:
        runner = Runner(prefix=ns_exec(ns))
        names = ["cat", "/proc/net/ip_tables_names"]
        assert read(runner, "legacy") == ()
        assert "nat" not in sh(ns_exec(ns, *names)).split()
        sh(
            ns_exec(
                ns,
                "iptables-legacy",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-p",
                "tcp",
                "--dport",
                "443",
                "-j",
                "REDIRECT",
                "--to-ports",
                "8443",
            )
        )
        (rule,) = read(runner, "legacy")
        assert (rule.where, rule.to_port) == ("ip nat PREROUTING", (PortRange(8443, 8443),))
