"""``cfallow remove`` never leaves the admin's nftables.conf including a missing file.

nft refuses a ruleset that includes a missing file by its exact name: after a
remove that deleted the file, ``systemctl reload nftables`` failed and the next
boot loaded none of the admin's ``policy drop`` ruleset. With the real nft in a
namespace and a private copy of the admin's conf (the backend's ``conf`` and
``file`` pointed into a temp dir): remove refuses while the conf includes the
file by name (nothing removed, one line naming the include); with a glob
include it removes everything and the conf still loads, the admin's ruleset
intact.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import namespace, need_root, need_tool
from support.nftables.helpers import SET_RULES, Nft, admin_ruleset, cli

INCLUDE = 'include "{}"\n'


def _setup(tmp: Path, mode: str) -> tuple[str, Path, Path]:
    file = tmp / "nftables.d" / "cfallow.nft"
    conf = tmp / "nftables.conf"
    config = (
        f'[backends.nftables]\nmode = "{mode}"\nports = [80, 443]\n'
        f'file = "{file}"\nconf = "{conf}"\n'
    )
    return config, file, conf


def _admin(conf: Path, mode: str, include: str | None) -> str:
    if mode == "lockdown":
        text = "flush ruleset\n" + admin_ruleset()
        return text + (INCLUDE.format(include) if include else "")
    inside = Path(include) if include else None
    return "flush ruleset\n" + admin_ruleset(SET_RULES if include else "", inside)


@pytest.mark.root
@pytest.mark.parametrize("mode", ["lockdown", "sets"])
def test_remove_refuses_while_included_by_name_and_leaves_a_loadable_conf(
    tmp_path: Path, mode: str
) -> None:
    need_root()
    need_tool("nft")
    config, file, conf = _setup(tmp_path, mode)
    with namespace("nftrm") as ns:
        nft = Nft(ns)
        conf.write_text(_admin(conf, mode, None))
        nft("-f", str(conf))
        first = cli(ns, tmp_path, config, "sync", "--source", "bundled")
        assert first.returncode == 0, first.stderr
        conf.write_text(_admin(conf, mode, str(file)))  # as docs/nftables.md says, by name
        nft("-f", str(conf))
        before = nft.ruleset()

        refused = cli(ns, tmp_path, config, "remove")
        assert refused.returncode == 1, refused.stdout
        (line,) = [ln for ln in refused.stderr.splitlines() if ln.startswith("cfallow: error:")]
        assert line.startswith(f"cfallow: error: nftables: {conf} would not load without {file}")
        assert f'include "{file}"' in line and "nothing removed" in line
        assert file.is_file() and nft.ruleset() == before, "a refused remove changed something"

        glob = file.parent / "*.nft"
        conf.write_text(conf.read_text().replace(f'"{file}"', f'"{glob}"'))
        if mode == "sets":  # the admin's rules go with the sets they use
            conf.write_text("flush ruleset\n" + admin_ruleset("", glob))
        nft("-f", str(conf))
        removed = cli(ns, tmp_path, config, "remove")
        assert removed.returncode == 0, removed.stderr
        assert not file.exists()
        nft("-c", "-f", str(conf))  # what `systemctl reload nftables` and the next boot load
        nft("-f", str(conf))
        after = nft.ruleset()
        assert "cfallow" not in after and "cloudflare_v4" not in after
        assert "policy drop" in after and "tcp dport 22 accept" in after, after


@pytest.mark.root
def test_remove_without_the_conf_or_the_include_just_removes(tmp_path: Path) -> None:
    need_root()
    need_tool("nft")
    config, file, conf = _setup(tmp_path, "lockdown")
    with namespace("nftrm") as ns:
        nft = Nft(ns)
        assert cli(ns, tmp_path, config, "sync", "--source", "bundled").returncode == 0
        removed = cli(ns, tmp_path, config, "remove")  # no conf at all
        assert removed.returncode == 0, removed.stderr
        assert not file.exists() and "cfallow" not in nft.ruleset()
        conf.write_text("flush ruleset\n" + admin_ruleset())  # a conf that never included it
        assert cli(ns, tmp_path, config, "sync", "--source", "bundled").returncode == 0
        assert cli(ns, tmp_path, config, "remove").returncode == 0
        assert not file.exists()
