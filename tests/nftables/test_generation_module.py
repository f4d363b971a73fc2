"""nf_tables unloaded and loaded again starts every namespace's generation from 1: an id
of the last load could come back naming another ruleset, and a memo kept under it
(iptables' kept tables: a CFALLOW chain the reload took away) would be believed. The
generation therefore names the load too: the inode number of the module's sysfs
directory, made anew at each load.

This kernel has nf_tables built in (no ``/sys/module/nf_tables``: it cannot be
unloaded), and a test must not unload the host's modules anyway. So the load is stood
for by a directory of a test's own (a new directory is a new inode, as a new load's is)
in a child process; everything else is the real kernel's. What the design relies on in
the real sysfs is checked on a module directory that exists: its inode number is the
same in the fresh sysfs ``ip netns exec`` mounts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import namespace, ns_exec

from cfallow.netfilter import generation

pytestmark = pytest.mark.root

CHILD = """
import os, shutil, sys
from pathlib import Path
from cfallow.netfilter import generation

where = Path(sys.argv[1])
generation.MODULE = where
generation.module.__defaults__ = (where,)

def reload():  # made before the old goes: kernfs does not hand a number out again
    new = where.with_name("next")
    new.mkdir()
    shutil.rmtree(where)
    new.rename(where)

def key():
    try:
        return generation.current()
    except OSError as exc:
        return "none: " + str(exc)

where.mkdir()
first = key()
again = key()
reload()
after = key()
ask = generation._ask
def reloading(sock):
    reload()
    return ask(sock)
generation._ask = reloading
during = key()
generation._ask = ask
shutil.rmtree(where)
builtin = key()
print(first, again, after, during, builtin, sep="\\n")
"""


def _keys(ns: str, tmp: Path) -> list[str]:
    argv = ns_exec(ns, sys.executable, "-c", CHILD, str(tmp / "nf_tables"))
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip().split("\n")


def test_a_reload_of_nf_tables_is_another_key_for_the_same_generation(tmp_path: Path) -> None:
    with namespace("nftload") as ns:
        first, again, after, during, builtin = _keys(ns, tmp_path)
    assert first == again and "~nft" in first, (first, again)
    assert first.rsplit("/", 1)[1] == after.rsplit("/", 1)[1], "no commit between"
    assert after != first, "a new load kept the key of the last: its memo would be believed"
    assert during.startswith("none: nf_tables was loaded while asked"), during
    assert "~nft" not in builtin and not builtin.startswith("none"), builtin


def test_the_module_directory_is_the_same_inode_in_a_namespaces_sysfs() -> None:
    """``ip netns exec`` mounts a fresh sysfs: the key must not change with the mount."""
    some = next(p for p in sorted(Path("/sys/module").iterdir()) if p.is_dir())
    here = generation.module(some)
    code = (
        "from pathlib import Path; from cfallow.netfilter import generation as g; "
        f"print(g.module(Path({str(some)!r})))"
    )
    with namespace("nftsys") as ns:
        there = [
            subprocess.run(
                ns_exec(ns, sys.executable, "-c", code),
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout.strip()
            for _ in range(2)
        ]
    assert here == f"~nft{os.stat(some).st_ino}"
    assert there == [here, here]


def test_this_hosts_key_names_the_load_only_where_nf_tables_is_a_module() -> None:
    key = generation.current()
    loaded = Path(generation.MODULE).exists()
    assert ("~nft" in key) == loaded, (key, loaded)


def test_without_sysfs_the_load_is_unknown(tmp_path: Path) -> None:
    """No ``/sys/module`` (sysfs not mounted, as in some containers): a missing module
    directory does not mean built in, so there is no key (no memo), not a key that a
    reload could repeat."""
    with pytest.raises(OSError, match="which load of nf_tables answers is unknown"):
        generation.module(tmp_path / "no-sysfs" / "nf_tables")
    assert generation.module(tmp_path / "nf_tables") == ""  # sysfs there, no directory
