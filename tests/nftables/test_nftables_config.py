"""Config errors of [backends.nftables]: exit 2 naming the key, before anything is read."""

from __future__ import annotations

import pytest

from cfallow.backend import Context, build
from cfallow.errors import ConfigError


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"mode": "allow"}, "[backends.nftables] mode: must be one of lockdown, sets"),
        ({"table": "inet filter"}, '[backends.nftables] table: only for mode = "sets"'),
        ({"mode": "sets", "table": "filter"}, '[backends.nftables] table: expected "FAMILY NAME"'),
        ({"mode": "sets", "also_allow": ["192.0.2.0/24"]}, "[backends.nftables] also_allow: only"),
        (
            {"mode": "sets", "docker": True},
            '[backends.nftables] docker: only for mode = "lockdown"',
        ),
        ({"also_allow": ["192.0.2.1/24"]}, "[backends.nftables] also_allow: host bits set"),
        ({"set_v4": "bad name"}, "[backends.nftables] set name 'bad name'"),
        ({"port": 443}, "[backends.nftables] unknown key: port"),
    ],
)
def test_config_errors(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        build("nftables", section, Context())
    assert str(exc.value).startswith(message), str(exc.value)


def test_ip6_table_manages_ipv6_only() -> None:
    backend = build("nftables", {"mode": "sets", "table": "ip6 filter"}, Context())
    assert backend.settings.families == (6,)  # type: ignore[attr-defined]
