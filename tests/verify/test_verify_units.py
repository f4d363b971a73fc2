"""The pure parts: probe sources, and reading which rule decided from trace lines."""

# ruff: noqa: E501 - trace lines are kept whole, as nft prints them

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

from netaddr import IPAddress, IPNetwork, IPSet
from support.cfdata import CURRENT

from cfallow.backend import AnyBackend, Context, build
from cfallow.verify import Expectation, nftrace, sample, trace, xpath
from cfallow.verify.command import expectations

# Lines as nft 1.0.6 prints them (from a probe through firewalld's ruleset, shortened).
PKT = 'packet: iif "eth0" ip saddr 104.16.0.0 ip daddr 10.77.0.2 tcp sport 40000 tcp dport 80 tcp flags == syn'
LINES = [
    f"trace id aa inet cfallow_verify_trace pre {PKT}",
    "trace id aa inet cfallow_verify_trace pre rule tcp flags & (fin | syn | rst | ack) == syn meta nftrace set 1 (verdict continue)",
    f"trace id aa ip filter INPUT {PKT}",
    "trace id aa ip filter INPUT rule meta l4proto tcp counter packets 0 bytes 0 jump CFALLOW (verdict jump CFALLOW)",
    "trace id aa ip filter CFALLOW rule ip saddr 104.16.0.0/13 counter packets 3 bytes 180 accept (verdict accept)",
    f"trace id aa inet filter input {PKT}",
    "trace id aa inet filter input policy drop",
    f"trace id bb ip filter INPUT {PKT.replace('104.16.0.0', '198.51.100.7')}",
    "trace id bb ip filter INPUT policy accept",
    "trace id bb inet firewalld filter_IN_public_allow rule tcp dport 80 accept (verdict accept)",
    "trace id bb ip nat INPUT policy accept",
]


def test_a_drop_in_a_later_table_decides_over_an_earlier_accept() -> None:
    pkt = trace.parse(LINES)[("104.16.0.0", 80)]
    assert pkt.decided() == ("inet filter input", "policy drop", "drop")


def test_an_accepted_packet_is_named_by_the_last_rule_not_a_later_policy() -> None:
    pkt = trace.parse(LINES)[("198.51.100.7", 80)]
    assert pkt.decided() == (
        "inet firewalld filter_IN_public_allow",
        "rule tcp dport 80 accept",
        "accept",
    )


def test_counters_and_the_verdict_suffix_are_left_out_of_the_rule() -> None:
    lines = [LINES[0], LINES[4]]
    assert trace.parse(lines)[("104.16.0.0", 80)].decided() == (
        "ip filter CFALLOW",
        "rule ip saddr 104.16.0.0/13 accept",
        "accept",
    )


def test_a_reused_trace_id_starts_a_new_packet() -> None:
    # the kernel's trace id hashes the packet's buffer: a later SYN can get a dropped one's id
    again = PKT.replace("104.16.0.0", "9.9.9.9")
    lines = [
        f"trace id aa inet filter input {PKT}",
        "trace id aa inet filter input rule tcp dport 80 accept (verdict accept)",
        f"trace id aa inet filter input {again}",
        "trace id aa inet filter input policy drop",
    ]
    traced = trace.parse(lines)
    assert traced[("104.16.0.0", 80)].decided() == (
        "inet filter input",
        "rule tcp dport 80 accept",
        "accept",
    )
    assert traced[("9.9.9.9", 80)].decided() == ("inet filter input", "policy drop", "drop")


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _trace_msg(tid: int, chain: str, kind: int, *, code: int = 0, packet: bool = False) -> bytes:
    """An NFT_MSG_TRACE message as the kernel sends it (table ``inet filter``)."""
    body = b"\x01\x00\x00\x00"  # nfgenmsg: NFPROTO_INET
    body += _attr(1, b"filter\0") + _attr(2, chain.encode() + b"\0")
    body += _attr(4, struct.pack(">I", kind)) + _attr(6, struct.pack(">I", tid))
    if kind == nftrace.RULE:
        verdict = _attr(1, struct.pack(">i", code))
        body += _attr(3, struct.pack(">Q", 7)) + _attr(5 | 0x8000, verdict)
    else:
        body += _attr(16, struct.pack(">I", code))
    if packet:
        ip = bytes([0x45, 0, 0, 60, 0, 0, 0, 0, 64, 6, 0, 0, 104, 16, 0, 0, 10, 77, 0, 2])
        body += _attr(8, ip) + _attr(9, struct.pack(">HH", 40000, 80) + bytes(16))
    return struct.pack("=IHHII", 16 + len(body), (10 << 8) | 17, 0, 0, 0) + body


def test_kernel_trace_messages_read_as_the_lines_nft_monitor_prints() -> None:
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with tx, rx:
        rx.setblocking(False)
        tx.send(_trace_msg(0xAA, "input", nftrace.RULE, code=-1, packet=True))
        tx.send(_trace_msg(0xAA, "input", nftrace.RULE, code=-3))  # decides nothing: left out
        tx.send(_trace_msg(0xAA, "input", nftrace.POLICY, code=0))
        events, lost = nftrace.read(rx)
    assert not lost and len(events) == 2
    rules = nftrace.rule_texts(
        "table inet filter { # handle 1\n\tchain input { # handle 2\n"
        "\t\ttype filter hook input priority filter; policy drop;\n"
        '\t\ttcp dport 22 counter packets 0 bytes 0 accept comment "ssh # handle 3" # handle 7\n'
        "\t}\n}\n"
    )
    lines = [line for e in events for line in e.line(rules)]
    assert lines == [
        "trace id 000000aa inet filter input packet: ip saddr 104.16.0.0 tcp dport 80",
        "trace id 000000aa inet filter input rule tcp dport 22 counter packets 0 bytes 0 "
        'accept comment "ssh # handle 3" (verdict continue)',
        "trace id 000000aa inet filter input policy drop ",
    ]
    assert trace.parse(lines)[("104.16.0.0", 80)].decided() == (
        "inet filter input",
        "policy drop",
        "drop",
    )


def test_the_stream_names_each_drop_once_and_counts_the_fence() -> None:
    def event(tid: int, kind: int, port: int = 0, verdict: str = "", policy: str = "") -> Any:
        src = "104.16.0.0" if port else ""
        return nftrace.Event(tid, "inet", "filter", "input", kind, 7, verdict, policy, src, port)

    stream = trace.Stream(fence=9)
    assert stream.add([event(1, nftrace.RULE, 80, verdict="continue")]) == []
    assert stream.add([event(1, nftrace.POLICY, policy="drop")]) == [("104.16.0.0", 80)]
    assert stream.add([event(1, nftrace.RULE, verdict="drop")]) == []  # named once
    assert stream.add([event(2, nftrace.POLICY, 9, policy="accept")]) == []
    assert stream.fences == 1 and stream.drops == {("104.16.0.0", 80)}


def test_sources_are_both_ends_of_every_range() -> None:
    for version in (4, 6):
        cf = sample.cloudflare_sources(CURRENT, version)
        nets = [n for n in CURRENT if n.version == version]
        assert {n for _, n in cf} == set(nets) and len(cf) == 2 * len(nets)
        assert all(IPAddress(a) in n for a, n in cf)
        assert {IPAddress(a) for a, _ in cf} == {
            IPAddress(x) for n in nets for x in (n.first, n.last)
        }


def test_outsiders_are_public_and_outside_every_range() -> None:
    import ipaddress

    for version in (4, 6):
        out = sample.outsiders(CURRENT, version)
        assert len(out) >= 10
        assert all(IPAddress(a) not in IPSet(CURRENT) for a in out)
        assert all(ipaddress.ip_address(a).is_global for a in out)  # no documentation space
        nets = [n for n in CURRENT if n.version == version]
        # just below and just above a range that has no published neighbour
        lone = min(nets, key=lambda n: n.value)
        assert {str(IPAddress(lone.first - 1)), str(IPAddress(lone.last + 1))} <= set(out)
    also = frozenset({IPNetwork("9.9.9.0/24")})
    assert "9.9.9.9" not in sample.outsiders(CURRENT, 4, also)


BEFORE = """*filter
:INPUT ACCEPT [10:600]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [4:240]
:CFALLOW - [0:0]
[5:300] -A INPUT -p tcp -m multiport --dports 443 -m comment --comment cfallow -j CFALLOW
[2:120] -A CFALLOW -i lo -j RETURN
[3:180] -A CFALLOW -s 2400:cb00::/32 -j RETURN
[0:0] -A CFALLOW -j DROP
COMMIT
"""


def test_the_legacy_path_is_every_rule_whose_counter_grew() -> None:
    after = (
        BEFORE.replace("[10:600]", "[11:680]")
        .replace("[5:300]", "[6:380]")
        .replace("[2:120]", "[3:200]")
        .replace("[4:240]", "[5:320]")  # the SYN-ACK going out: OUTPUT's policy counts it too
    )
    assert xpath.grown(BEFORE, after, 6) == (
        "ip6 filter: INPUT policy ACCEPT; "
        "ip6 filter: -A INPUT -p tcp -m multiport --dports 443 -m comment --comment cfallow -j CFALLOW; "
        "ip6 filter: -A CFALLOW -i lo -j RETURN"
    )  # the reply's OUTPUT policy is left out


def _built(name: str, section: dict[str, object]) -> AnyBackend:
    return build(name, section, Context())


def test_each_backend_states_its_own_promise_and_the_rest_are_notes() -> None:
    hosts = [
        _built(
            "iptables",
            {
                "mode": "lockdown",
                "ports": [443, "8000-8080"],
                "ipv6": False,
                "also_allow": ["192.0.2.0/24"],
            },
        ),
        _built("nftables", {"mode": "sets", "table": "ip6 filter", "ports": [80]}),
        _built("firewalld", {"mode": "restrict", "services": ["http", "https", "ssh"]}),
        _built("iptables", {"protocol": "udp"}),
        _built("fail2ban", {}),
    ]
    wants, notes = expectations(hosts)
    assert wants == [
        Expectation("iptables", "lockdown", (443, 8000, 8080), (4,), ("192.0.2.0/24",)),
        Expectation("nftables", "allow", (80,), (6,)),
        Expectation("firewalld", "lockdown", (80, 443), (4, 6)),
    ]
    assert notes == [
        "iptables: protocol udp: only TCP is probed",
        "fail2ban: not a firewall on this host: not probed",
    ]
    waf = _built("nginx", {})
    waf.cannot_verify = "it decides inside the web server"  # type: ignore[misc]
    assert expectations([waf]) == ([], ["nginx: cannot verify: it decides inside the web server"])


def test_only_backends_that_write_through_commands_get_a_scratch_section(tmp_path: Path) -> None:
    nft = _built("nftables", {"file": "/etc/nftables.d/cfallow.nft", "ports": [443]})
    assert nft.scratch_section(
        {"file": "/etc/nftables.d/cfallow.nft", "ports": [443]}, tmp_path
    ) == {
        "file": str(tmp_path / "nftables.file"),
        "ports": [443],
    }
    assert _built("iptables", {}).scratch_section({"ports": [80]}, tmp_path) == {"ports": [80]}
    assert _built("firewalld", {}).scratch_section({}, tmp_path) is None
    assert _built("fail2ban", {}).scratch_section({}, tmp_path) is None


def test_the_late_chain_knows_a_natted_syn_by_its_trace_id() -> None:
    def event(tid: int, chain: str, src: str, port: int, kind: int, verdict: str = "") -> Any:
        policy = "accept" if kind == nftrace.POLICY else ""
        table = trace.TRACE_TABLE
        return nftrace.Event(tid, "inet", table, chain, kind, 2, verdict, policy, src, port)

    stream = trace.Stream(fence=9)
    pre, late = "pre", trace.LATE_CHAIN
    stream.add([event(1, pre, "104.16.0.0", 443, nftrace.RULE, "accept")])
    stream.add([event(1, late, "104.16.0.0", 8443, nftrace.POLICY)])  # after a REDIRECT
    # the same trace id again: a new SYN, which x_tables dropped (no late event)
    stream.add([event(1, pre, "198.51.100.7", 443, nftrace.RULE, "accept")])
    # a fence: traced and dropped in the trace table, which is no probe's drop
    assert stream.add([event(2, pre, "104.16.0.0", 7, nftrace.RULE, "drop")]) == []
    assert stream.entered == {("104.16.0.0", 443), ("198.51.100.7", 443), ("104.16.0.0", 7)}
    assert stream.passed == {("104.16.0.0", 443)}
    assert stream.seen(7) == 1 and stream.seen(8443) == 0 and not stream.drops
