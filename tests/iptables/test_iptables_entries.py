"""Legacy x_tables raw entries read through ctypes (no python-iptables), against the kernel.

python-iptables is published only as a source distribution with a C extension
(no ``pip install`` without gcc), so the legacy mask check reads the kernel's
table blob itself (``IPT_SO_GET_ENTRIES``) and cuts it into chains. Checked
here in real legacy namespaces: the result is byte for byte what libiptc
(python-iptables, from the test extra) hands out, for built-in chains with
both policies, user chains (empty too), jumps and every match cfallow writes,
both families; and when the kernel refuses the read, a legacy lockdown sync
still succeeds and says in one line what went unchecked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfallow.backends.iptables.backend import IptablesBackend
from cfallow.backends.iptables.entries import entry_fields, iface_mask, read_entries
from support import namespace, need, need_tool, ns_exec
from support.cfdata import CURRENT
from support.cli_helpers import unwrapped
from support.iptables.helpers import Fw
from support.iptables.iptc import IptcWriter
from support.iptables.netns import in_netns

from cfallow.backend import Context, build
from cfallow.engine import run_backend

pytestmark = pytest.mark.root

TABLE = """*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:CFALLOW - [0:0]
:EMPTY - [0:0]
:ZED - [0:0]
-A INPUT -p tcp -m multiport --dports 80,443 -m comment --comment cfallow -j CFALLOW
-A INPUT -i eth+ -j ZED
-A INPUT -p tcp --dport 22 -j ACCEPT
-A CFALLOW -s {cf} -j ACCEPT
-A CFALLOW -i lo -j RETURN
-A CFALLOW -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
-A CFALLOW -j DROP
-A ZED -j EMPTY
-A ZED -o bond0 -j RETURN
COMMIT
"""
CF = {4: "104.16.0.0/13", 6: "2400:cb00::/32"}
TESTS = Path(__file__).resolve().parents[1]

#: python-iptables' view of the table, as cfallow read it before (the reference), compared
#: field by field (every byte but the counters; a name field's bytes after its NUL are
#: whatever the reader's buffer held, so both are zeroed there).
LIBIPTC = """
import ctypes, json, sys
sys.path.insert(0, sys.argv[2])  # tests/: the support package
from support.iptables.iptc import load_iptc
from cfallow.backends.iptables.backend import IptablesBackend
from cfallow.backends.iptables.entries import Entries, read_entries
from support.iptables.entries import differences
version = int(sys.argv[1])
iptc = load_iptc()
table = (iptc.Table6 if version == 6 else iptc.Table)("filter", autocommit=False)
table.refresh()
chains, policies = [], []
for chain in table.chains:
    name = chain.name
    if table.builtin_chain(name):
        policy = table.get_policy(name)[0]
        policies.append([name, str(getattr(policy, "name", policy))])
    raws = []
    entry = table.first_rule(name)
    while entry:
        raws.append(ctypes.string_at(ctypes.addressof(entry), entry.next_offset).hex())
        entry = table.next_rule(entry)
    chains.append([name, raws])
table.close()
mine = read_entries(version)
theirs = Entries(version, tuple(map(tuple, policies)),
                 tuple((n, tuple(bytes.fromhex(r) for r in rs)) for n, rs in chains))
print(json.dumps({
    "differences": differences(mine, theirs, ("ctypes", "libiptc")),
    "policies": [list(p) for p in mine.policies],
    "chains": [[n, [r.hex() for r in rs]] for n, rs in mine.chains],
}))
"""


def _legacy(ns: str) -> None:
    for version, tool in ((4, "iptables-legacy-restore"), (6, "ip6tables-legacy-restore")):
        subprocess.run(ns_exec(ns, tool), input=TABLE.format(cf=CF[version]), text=True, check=True)


def test_the_ctypes_read_is_byte_for_byte_libiptcs() -> None:
    need_tool("iptables-legacy-restore", "ip6tables-legacy-restore")
    try:
        import iptc  # noqa: F401  (the reference: python-iptables, from the test extra)
    except Exception as exc:
        need(False, f"python-iptables as the reference reader ({exc})")
    with namespace("ent") as ns:
        _legacy(ns)
        for version in (4, 6):
            out = subprocess.run(
                ns_exec(ns, sys.executable, "-c", LIBIPTC, str(version), str(TESTS)),
                capture_output=True,
                text=True,
                check=False,
            )
            assert out.returncode == 0, out.stderr
            doc = json.loads(out.stdout)
            assert doc["differences"] == [], version
            chains = dict(doc["chains"])
            assert list(chains) == ["INPUT", "FORWARD", "OUTPUT", "CFALLOW", "EMPTY", "ZED"]
            assert [len(chains[c]) for c in chains] == [3, 0, 0, 4, 0, 2]
            assert doc["policies"] == [
                ["INPUT", "DROP"],
                ["FORWARD", "ACCEPT"],
                ["OUTPUT", "ACCEPT"],
            ]


#: cfallow's CLI with the kernel's raw read refused (EPERM), the rest real.
REFUSED = """
import errno, sys
import cfallow.netfilter.xtables as xt
def refused(version, name):
    raise PermissionError(errno.EPERM, "Operation not permitted")
xt.read_table = refused
import cfallow.backends.iptables.entries as ent
ent.read_table = refused
from cfallow.cli.commands import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_refused_raw_read_is_one_warning_and_the_sync_goes_on(tmp_path: Path) -> None:
    need_tool("iptables-legacy-save", "iptables-legacy-restore")
    conf = tmp_path / "config.toml"
    conf.write_text('[backends.iptables]\nvariant = "legacy"\nmode = "lockdown"\nports = [443]\n')
    argv = [sys.executable, "-c", REFUSED, "--config", str(conf), "--state-dir", str(tmp_path)]
    locks = [f"CFALLOW_FIREWALL_LOCK={tmp_path}/fw.lock", f"XTABLES_LOCKFILE={tmp_path}/x.lock"]
    env = ["env", *locks]
    with namespace("ent") as ns:
        for _ in range(2):  # the second run reads cfallow's -i rules back: the check is due
            run = subprocess.run(
                ns_exec(ns, *env, *argv, "sync", "--source", "bundled"),
                capture_output=True,
                text=True,
                check=False,
            )
            assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr
        warned = [ln for ln in run.stderr.splitlines() if "raw filter entries" in ln]
        assert len(warned) == 2, run.stderr  # one per family
        assert warned[1] == (
            "cfallow: warning: iptables: IPv6: cannot read the kernel's raw filter entries "
            "(Operation not permitted; needs CAP_NET_RAW, as iptables-legacy-save does): the "
            "interface masks of CFALLOW's -i rules are not checked, so a rule whose mask matches "
            "more than its name (as the former python-iptables writer left them) would be kept"
        ), warned
        saved = subprocess.run(
            ns_exec(ns, "ip6tables-legacy-save"), capture_output=True, text=True, check=True
        ).stdout
        assert "-A CFALLOW -i lo -j RETURN" in saved


#: cfallow's CLI with python-iptables made unavailable (``import iptc`` fails).
NO_IPTC = """
import sys
sys.modules["iptc"] = None
from cfallow.cli.commands import main
sys.exit(main(sys.argv[1:]))
"""


def test_without_python_iptables_a_wrong_mask_is_still_found_and_rewritten(
    tmp_path: Path,
) -> None:
    """A legacy host upgraded from the former writer, and no python-iptables installed."""
    need_tool("iptables-legacy-save", "ip6tables-legacy-restore")
    with namespace("ent") as ns:
        fw = Fw(ns, "legacy", tmp_path)
        ctx = Context(runner=fw.runner, firewall_lock=tmp_path / "fw.lock", state_dir=tmp_path)
        inner = build("iptables", {"mode": "lockdown", "ports": [443]}, ctx)
        assert isinstance(inner, IptablesBackend)

        def old_writer() -> Any:
            inner.legacy_writer = IptcWriter()
            return run_backend(inner, CURRENT, dry_run=False).error

        assert in_netns(ns, old_writer, {"XTABLES_LOCKFILE": fw.lock}) is None
        conf = tmp_path / "config.toml"
        conf.write_text(
            '[backends.iptables]\nvariant = "legacy"\nmode = "lockdown"\nports = [443]\n'
        )
        argv = [sys.executable, "-c", NO_IPTC, "--config", str(conf), "--state-dir", str(tmp_path)]
        env = ["env", f"CFALLOW_FIREWALL_LOCK={tmp_path}/fw.lock", f"XTABLES_LOCKFILE={fw.lock}"]
        env.append(f"PATH={(fw.runner.env or {})['PATH']}")  # iptables is iptables-legacy here
        run = subprocess.run(
            ns_exec(ns, *env, *argv, "sync", "--source", "bundled"),
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        assert run.stderr == "", run.stderr  # no warning, no error
        wrong = "-i lo -j RETURN (kernel interface mask 01 01 01 " + " ".join(["00"] * 13)
        drift = f"~ IPv6: foreign rule: {wrong}: matches more than the name)"
        assert unwrapped(drift) in unwrapped(run.stdout)  # lines wrap at 100 columns

        def masks() -> list[bytes]:
            rules = dict(read_entries(6).chains)["CFALLOW"]
            return [dict(entry_fields(6, raw))["iniface_mask"] for raw in rules]

        assert iface_mask("lo") in in_netns(ns, masks)
        assert b"\x01\x01\x01" + bytes(13) not in in_netns(ns, masks)
