"""Golden output: what ``sync``, ``status``, ``remove --dry-run``, ``backends`` and ``verify``
print, in text, with ``-q`` and with ``--json``, exactly (the local server's URL, the temp
dir and times written as placeholders; JSON compared as data), every text line within 100
columns.
The real CLI runs as a subprocess, against a local HTTP server and the test-only fake
backend (``verify``: the iptables backend in a namespace)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from support import namespace, need, need_root, need_tool, ns_exec
from support.cfdata import CURRENT
from support.cli_helpers import fixture_text, run_proc, unwrapped, write_config

from cfallow.backend import load_class
from cfallow.model import as_strings

WIDTH = 100


def _normal(text: str, tmp: Path, base: str) -> str:
    text = text.replace(base, "URL").replace(str(tmp), "TMP")
    return re.sub(r'"fetched_at": [0-9.]+', '"fetched_at": TIME', text)


class Cli:
    def __init__(self, tmp: Path, server: HTTPServer) -> None:
        try:
            load_class("fake")
        except Exception as exc:
            need(False, f"the test-only fake backend plugin ({exc})")
        self.tmp = tmp
        self.base = server.url_for("").rstrip("/")
        server.expect_request("/client/v4/ips").respond_with_data(
            fixture_text("api-ips.json"), content_type="application/json"
        )
        self.config = write_config(
            tmp / "config.toml",
            self.base,
            backends=f'[backends.fake]\npath = "{tmp / "target.json"}"\n',
        )

    def __call__(self, *args: str, rc: int = 0) -> tuple[str, str]:
        r = run_proc("--config", str(self.config), "--state-dir", str(self.tmp / "st"), *args)
        assert r.rc == rc, r.err
        for line in (r.err if "--json" in args else r.out + r.err).splitlines():
            assert len(line) <= WIDTH, line
        return _normal(r.out, self.tmp, self.base), _normal(r.err, self.tmp, self.base)


CURRENT_V4 = [n for n in as_strings(CURRENT) if ":" not in n]
CURRENT_V6 = [n for n in as_strings(CURRENT) if ":" in n]
ALL = [*CURRENT_V4, *CURRENT_V6]
SOURCE = "source: live URL/client/v4/ips etag=38f79d05... ipv4=15 ipv6=7\n"


def _lines(mark: str) -> str:
    return "".join(f"  {mark} {net}\n" for net in ALL)


def _backend(*, current: list[str], add: list[str], remove: list[str], changed: bool) -> Any:
    return {
        "name": "fake",
        "changed": changed,
        "current": current,
        "add": add,
        "remove": remove,
        "drift": [],
        "notes": [],
        "error": None,
    }


def _source() -> dict[str, Any]:
    return {
        "kind": "live",
        "url": "URL/client/v4/ips",
        "etag": "38f79d050aa027e3be3865e495dcc9bc",
        "ipv4": CURRENT_V4,
        "ipv6": CURRENT_V6,
        "fetched_at": "TIME",
        "date": "DATE",
    }


def _doc(out: str) -> Any:
    doc = json.loads(out.replace('"fetched_at": TIME', '"fetched_at": "TIME"'))
    if doc.get("source"):
        doc["source"]["date"] = "DATE"
    return doc


FETCHED = {"attempted": True, "ok": True, "error": None, "last_change": None}


def test_sync_status_and_remove_golden(tmp_path: Path, httpserver: HTTPServer) -> None:
    cli = Cli(tmp_path, httpserver)
    # before the first sync
    assert cli("sync", "--dry-run") == (
        SOURCE + "fake: +22 -0 =0 would change (dry run)\n" + _lines("+"),
        "",
    )
    assert cli("-q", "sync", "--dry-run") == ("fake: +22 -0 =0 would change (dry run)\n", "")
    out, err = cli("sync", "--dry-run", "--json")
    assert _doc(out) == {
        "changed": True,
        "dry_run": True,
        "source": _source(),
        "backends": [_backend(current=[], add=ALL, remove=[], changed=True)],
        "fetch": FETCHED,
    }
    assert err == "cfallow: " + SOURCE + "cfallow: fake: +22 -0 =0 would change (dry run)\n"
    assert cli("status", rc=3) == (
        SOURCE + "backend  state     +  -  =  note\nfake     differs  22  0  0\n",
        "",
    )
    assert cli("-q", "status", rc=3) == ("fake: +22 -0 =0 differs\n", "")
    out, err = cli("status", "--json", rc=3)
    assert _doc(out) == {
        "changed": True,
        "dry_run": True,
        "source": _source(),
        "backends": [_backend(current=[], add=ALL, remove=[], changed=True)],
        "fetch": FETCHED,
    }
    assert err == "cfallow: " + SOURCE + "cfallow: fake: +22 -0 =0 differs\n"

    # the first sync, then the ones that find everything in sync
    assert cli("sync") == (SOURCE + "fake: +22 -0 =0 changed\n" + _lines("+"), "")
    assert cli("sync") == (SOURCE + "fake: +0 -0 =22 in sync\n", "")
    assert cli("-q", "sync") == ("fake: +0 -0 =22 in sync\n", "")
    out, err = cli("sync", "--json")
    assert _doc(out) == {
        "changed": False,
        "dry_run": False,
        "source": _source(),
        "backends": [_backend(current=ALL, add=[], remove=[], changed=False)],
        "fetch": FETCHED,
    }
    assert err == "cfallow: " + SOURCE + "cfallow: fake: +0 -0 =22 in sync\n"
    assert cli("status") == (
        SOURCE + "backend  state    +  -   =  note\nfake     in sync  0  0  22\n",
        "",
    )
    assert cli("-q", "status") == ("fake: +0 -0 =22 in sync\n", "")

    # remove --dry-run says it is one, in every form
    assert cli("remove", "--dry-run") == (
        "fake: +0 -22 =0 would remove (dry run)\n" + _lines("-"),
        "",
    )
    assert cli("-q", "remove", "--dry-run") == ("fake: +0 -22 =0 would remove (dry run)\n", "")
    out, err = cli("remove", "--dry-run", "--json")
    assert json.loads(out) == {
        "changed": True,
        "dry_run": True,
        "source": None,
        "backends": [_backend(current=ALL, add=[], remove=ALL, changed=True)],
    }
    assert err == "cfallow: fake: +0 -22 =0 would remove (dry run)\n"


def test_a_failed_backend_is_reported_once_as_failed(
    tmp_path: Path, httpserver: HTTPServer
) -> None:
    cli = Cli(tmp_path, httpserver)
    cli.config.write_text(
        cli.config.read_text()
        + f'[backends.fake2]\npath = "{tmp_path / "t2.json"}"\nfail = "apply"\n'
    )
    failed = "cfallow: error: fake2: fake: apply failed on purpose\n"
    assert cli("sync", rc=1) == (
        SOURCE + "fake: +22 -0 =0 changed\n" + _lines("+") + "fake2: failed\n",
        failed,
    )
    assert cli("-q", "sync", rc=1) == ("fake: +0 -0 =22 in sync\nfake2: failed\n", failed)
    assert cli("status", rc=3) == (
        SOURCE + "backend  state     +  -   =  note\n"
        "fake     in sync   0  0  22\n"
        "fake2    differs  22  0   0\n",
        "",
    )


BACKENDS_HEADER = "backend    enabled  state        note"
HOST_FIREWALL = """host firewall:
  iptables: nf_tables variant
  nftables: no native base chain on input or forward
  iptables: ip filter INPUT policy accept, 0 rules
  iptables: ip6 filter INPUT policy accept, 0 rules
  firewalld: not running
  ufw: not active
  docker: not present
  enforces the allowlist here: iptables mode = "lockdown" or nftables (lockdown): nothing on this
      host drops tcp/80,443, so allow mode restricts nothing
"""


@pytest.mark.root
def test_backends_golden(tmp_path: Path) -> None:
    """In a fresh namespace (its firewall is empty). Other plugins may be installed: the
    rows checked are the header, an enabled backend, an unconfigured one, the fakes."""
    try:
        load_class("fake")
    except Exception as exc:
        need(False, f"the test-only fake backend plugin ({exc})")
    need_tool("iptables-nft", "nft")
    config = tmp_path / "config.toml"
    config.write_text(f'[backends.fake]\npath = "{tmp_path / "t.json"}"\n')
    with namespace("gold") as ns:

        def run(*extra: str) -> str:
            argv = [sys.executable, "-m", "cfallow", "--config", str(config), "backends", *extra]
            r = subprocess.run(ns_exec(ns, *argv), capture_output=True, text=True, check=False)
            assert r.returncode == 0 and r.stderr == "", r.stderr
            return r.stdout

        text, quiet, doc = run(), run("-q"), json.loads(run("--json"))
    for out in (text, quiet):
        lines = out.splitlines()
        assert all(len(line) <= WIDTH for line in lines), out
        # the columns are as wide as the longest installed backend's name: words compared
        assert lines[0].split() == BACKENDS_HEADER.split()
        rows = {line.split()[0]: line.split() for line in lines[1:] if not line.startswith(" ")}
        assert rows["fake"] == ["fake", "yes", "ok"]
        assert rows["fake2"] == ["fake2", "no", "ok"]
        assert rows["aws"] == ["aws", "no", "not", "enabled"]  # not a configuration error
        assert rows["broken"][:3] == ["broken", "no", "unavailable"]  # its note wraps
        broken = "plugin cannot be loaded: ModuleNotFoundError: No module named"
        assert f"unavailable {broken} 'cfallow_fake_not_installed'" in unwrapped(out)
    assert text.endswith(HOST_FIREWALL) and "host firewall:" not in quiet
    by_name = {b["name"]: b for b in doc["backends"]}
    assert by_name["fake"] == {"name": "fake", "enabled": True, "state": "ok", "note": ""}
    assert by_name["aws"] == {"name": "aws", "enabled": False, "state": "not enabled", "note": ""}
    assert doc["host_firewall"][0] == "iptables: nf_tables variant"


VERIFY_OK = """iptables: lockdown on TCP 80,443 (IPv4+IPv6)
family  range             TCP 80  TCP 443
IPv4    103.21.244.0/22   accept  accept
IPv4    103.22.200.0/22   accept  accept
IPv4    103.31.4.0/22     accept  accept
IPv4    104.16.0.0/13     accept  accept
IPv4    104.24.0.0/14     accept  accept
IPv4    108.162.192.0/18  accept  accept
IPv4    131.0.72.0/22     accept  accept
IPv4    141.101.64.0/18   accept  accept
IPv4    162.158.0.0/15    accept  accept
IPv4    172.64.0.0/13     accept  accept
IPv4    173.245.48.0/20   accept  accept
IPv4    188.114.96.0/20   accept  accept
IPv4    190.93.240.0/20   accept  accept
IPv4    197.234.240.0/22  accept  accept
IPv4    198.41.128.0/17   accept  accept
IPv4    outsiders (31)    drop    drop
IPv6    2400:cb00::/32    accept  accept
IPv6    2405:8100::/32    accept  accept
IPv6    2405:b500::/32    accept  accept
IPv6    2606:4700::/32    accept  accept
IPv6    2803:f800::/32    accept  accept
IPv6    2a06:98c0::/29    accept  accept
IPv6    2c0f:f248::/32    accept  accept
IPv6    outsiders (17)    drop    drop
verify: ok (184 probes)
"""


def _grid_failed() -> str:
    rows = VERIFY_OK.splitlines()[2:-1]
    failed = [r.replace("accept  accept", "drop *  drop *") for r in rows]
    return (
        "\n".join(
            [
                *VERIFY_OK.splitlines()[:2],
                *failed,
                "* drop, should be accepted; decided by inet filter input: policy drop",
                *(f"  IPv{v} TCP {p}: every Cloudflare range" for v in (4, 6) for p in (80, 443)),
                "verify: FAILED (88 of 184 probes)",
            ]
        )
        + "\n"
    )


@pytest.mark.root
@pytest.mark.xdist_group("verify")
def test_verify_golden(tmp_path: Path) -> None:
    need_root()
    need_tool("nft", "iptables-nft")
    from support.verify_host import NFT_DROP, host

    lockdown = '[backends.iptables]\nports = [80, 443]\nmode = "lockdown"\nvariant = "nft"\n'
    probing = "cfallow: verify: sending 184 probes (up to 0.5 s each)\n"
    with host(tmp_path) as h:
        assert h.cfallow(lockdown, "sync", "--source", "bundled").returncode == 0

        def run(*args: str, rc: int) -> tuple[str, str]:
            r = h.cfallow(lockdown, "verify", *args)
            assert r.returncode == rc, r.stderr
            if "--json" not in args:  # a JSON string is as long as it is
                assert all(len(line) <= WIDTH for line in r.stdout.splitlines()), r.stdout
            return r.stdout, r.stderr

        assert run(rc=0) == (VERIFY_OK, probing)
        assert run("-q", rc=0) == ("verify: ok (184 probes)\n", "")
        out, err = run("--json", rc=0)
        doc = json.loads(out)["verify"]
        assert doc["ok"] is True and doc["failures"] == [] and len(doc["probes"]) == 184
        assert set(doc["probes"][0]) == {
            "family",
            "port",
            "source",
            "kind",
            "range",
            "expected",
            "verdict",
            "decided_by",
            "ok",
        }
        assert err == probing + "cfallow: verify: ok (184 probes)\n"

        h.nft(NFT_DROP)  # the admin's inet policy drop: Cloudflare no longer gets in
        out, err = run(rc=5)
        assert out == _grid_failed()
        # stderr: one line per failed probe, naming the deciding rule (the journal's record)
        assert err.count("cfallow: error: verify: ") == 88
        out, _ = run("-q", rc=5)
        assert out == "verify: FAILED (88 of 184 probes)\n"
        out, _ = run("--json", rc=5)
        doc = json.loads(out)["verify"]
        assert doc["ok"] is False and len(doc["failures"]) == 88
