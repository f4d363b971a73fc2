"""Sets mode takes only sets that carry cfallow's mark: the admin's set of the same name is theirs.

Real ``nft`` in a namespace: the admin's unmarked ``cloudflare_v4`` (with their own
elements and a rule on it) survives every command untouched unless ``adopt_set = true``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from netaddr import IPNetwork
from support import namespace
from support.cfdata import CURRENT
from support.nftables.helpers import Nft, cli

pytestmark = pytest.mark.root

#: The admin's own table: their set happens to carry cfallow's default name.
ADMIN = """table inet filter {
	set cloudflare_v4 {
		type ipv4_addr
		flags interval
		elements = { 192.0.2.0/24, 198.51.100.7 }
	}
	chain input {
		type filter hook input priority filter; policy accept;
		ip saddr @cloudflare_v4 tcp dport 22 accept
	}
}
"""
THEIRS = frozenset({IPNetwork("192.0.2.0/24"), IPNetwork("198.51.100.7/32")})
REFUSED = (
    "cfallow: error: nftables: set inet filter cloudflare_v4 exists and is not cfallow's (no "
    'comment "cfallow"; 2 element(s)): name another with set_v4/set_v6, or set adopt_set = true '
    "to let cfallow take it over"
)


def conf(tmp: Path, extra: str = "") -> str:
    return f'[backends.nftables]\nmode = "sets"\nfile = "{tmp}/s.nft"\n{extra}'


@pytest.mark.parametrize("host_check", ["true", "false"])
def test_the_admins_unmarked_set_is_refused_and_kept(tmp_path: Path, host_check: str) -> None:
    with namespace("nfo") as ns:
        nft = Nft(ns)
        nft.load(ADMIN)
        before = nft.ruleset()
        c = conf(tmp_path, f"host_check = {host_check}\n")
        for args in (
            ("sync", "--source", "bundled"),
            ("sync", "--dry-run", "--source", "bundled"),
            ("status", "--source", "bundled"),
            ("remove",),
        ):
            result = cli(ns, tmp_path, c, *args)
            assert result.returncode == 1, (args, result.stdout)
            assert result.stderr.splitlines() == [REFUSED], args
            assert nft.ruleset() == before, args
        assert nft.elements("inet", "filter", "cloudflare_v4") == THEIRS
        assert not (tmp_path / "s.nft").exists()


def test_adopt_set_takes_it_and_the_mark_follows(tmp_path: Path) -> None:
    with namespace("nfa") as ns:
        nft = Nft(ns)
        nft.load(ADMIN)
        taken = cli(
            ns, tmp_path, conf(tmp_path, "adopt_set = true\n"), "sync", "--source", "bundled"
        )
        assert taken.returncode == 0, taken.stderr
        v4 = frozenset(n for n in CURRENT if n.version == 4)
        assert nft.elements("inet", "filter", "cloudflare_v4") == v4
        # the set cfallow created itself carries the mark; so does the include file
        assert 'comment "cfallow"' in nft("list", "set", "inet", "filter", "cloudflare_v6")
        assert (tmp_path / "s.nft").read_text().count('comment "cfallow"') == 2
        again = cli(ns, tmp_path, conf(tmp_path), "sync", "--source", "bundled")
        # without adopt_set, the set cfallow's own file declares is still recognised as its
        assert again.returncode == 0, again.stderr


def test_a_set_cfallow_created_is_its_own(tmp_path: Path) -> None:
    with namespace("nfm") as ns:
        nft = Nft(ns)
        nft.load(
            "table inet filter {\n\tchain input {\n\t\ttype filter hook input priority 0; "
            "policy accept;\n\t}\n}\n"
        )
        assert cli(ns, tmp_path, conf(tmp_path), "sync", "--source", "bundled").returncode == 0
        (tmp_path / "s.nft").unlink()  # even without its file: the mark on the set is enough
        again = cli(ns, tmp_path, conf(tmp_path), "sync", "--source", "bundled")
        assert again.returncode == 0, again.stderr
        assert cli(ns, tmp_path, conf(tmp_path), "remove").returncode == 0
        assert "cloudflare_v4" not in nft.ruleset()
