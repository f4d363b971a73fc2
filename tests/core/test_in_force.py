"""What is in force, and since when: ``ranges --source last-known-good``, and a host on the
bundled snapshot says so (with its age) on every run."""

from __future__ import annotations

import json
from pathlib import Path

from support.cli_helpers import run_proc


def _config(tmp: Path) -> Path:
    conf = tmp / "config.toml"
    # An unreachable source (nothing listens on port 9 of loopback): the fetch fails at once.
    conf.write_text(
        '[source]\napi_url = "http://127.0.0.1:9/ips"\n'
        'text_urls = ["http://127.0.0.1:9/v4", "http://127.0.0.1:9/v6"]\nattempts = 1\n\n'
        f'[backends.fake]\npath = "{tmp / "target.json"}"\n'
    )
    return conf


def test_a_host_on_the_snapshot_says_so_every_run_and_has_no_lkg_to_show(tmp_path: Path) -> None:
    common = ("--config", str(_config(tmp_path)), "--state-dir", str(tmp_path / "st"))
    for verb in ("sync", "status", "sync"):
        r = run_proc(*common, verb)
        assert r.rc == 0, r.err
        warned = [ln for ln in r.err.splitlines() if "bundled snapshot of" in ln]
        assert len(warned) == 1, r.err
        assert "Cloudflare never reached from this host" in warned[0]
        assert "days old)" in warned[0]
    r = run_proc(*common, "ranges", "--source", "last-known-good")
    assert r.rc == 4 and "has not fetched one" in r.err


def test_ranges_shows_the_last_known_good_list_with_its_date_and_etag(tmp_path: Path) -> None:
    common = ("--config", str(_config(tmp_path)), "--state-dir", str(tmp_path / "st"))
    (tmp_path / "st").mkdir(mode=0o700)
    lkg = {
        "ipv4": ["173.245.48.0/20"],
        "ipv6": ["2400:cb00::/32"],
        "url": "https://x/ips",
        "etag": "e1",
        "fetched_at": 1795305600,
    }
    (tmp_path / "st" / "last-known-good.json").write_text(json.dumps(lkg))
    r = run_proc(*common, "ranges", "--source", "last-known-good")
    assert r.rc == 0, r.err
    assert r.out.split() == ["173.245.48.0/20", "2400:cb00::/32"]
    assert "etag=e1" in r.err and "(of 2026-11-22)" in r.err
    doc = json.loads(run_proc(*common, "ranges", "--source", "last-known-good", "--json").out)
    assert doc["source"]["etag"] == "e1" and doc["source"]["date"] == "2026-11-22"
