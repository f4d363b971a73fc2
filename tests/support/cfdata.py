"""The real Cloudflare lists from tests/fixtures/cloudflare, as the core sees them."""

from __future__ import annotations

import json
from pathlib import Path

from netaddr import IPNetwork

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cloudflare"


def _load(name: str) -> frozenset[IPNetwork]:
    result = json.loads((FIXTURES / name).read_text())["result"]
    return frozenset(IPNetwork(c).cidr for c in result["ipv4_cidrs"] + result["ipv6_cidrs"])


#: Since 2021-04-08: 15 IPv4 + 7 IPv6.
CURRENT = _load("api-ips.json")
#: Before 2021-04-08: 14 IPv4 (104.16.0.0/12) + 7 IPv6.
OLD = _load("api-ips-2021-03.json")
ADDED_2021 = frozenset({IPNetwork("104.16.0.0/13"), IPNetwork("104.24.0.0/14")})
REMOVED_2021 = frozenset({IPNetwork("104.16.0.0/12")})

assert CURRENT - OLD == ADDED_2021 and OLD - CURRENT == REMOVED_2021
