"""``sync --offline``: no network, no HTTP library, the last-known-good list or the snapshot."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from support.cli_helpers import plant_lkg

PROBE = (
    "import sys; from cfallow.cli.commands import main; rc = main(sys.argv[1:]); "
    "print(sorted(m for m in ('requests', 'urllib3', 'tenacity', 'boto3', 'iptc') "
    "if m in sys.modules)); sys.exit(rc)"
)


def run(tmp: Path, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    conf = tmp / "config.toml"
    conf.write_text(config)
    argv = [sys.executable, "-c", PROBE, "--config", str(conf), "--state-dir", str(tmp / "state")]
    return subprocess.run(
        [*argv, "sync", "--offline", *args], capture_output=True, text=True, check=False
    )


def fake(tmp: Path) -> str:
    # An unreachable source: an offline run must not even try it.
    return (
        '[source]\napi_url = "https://192.0.2.1/client/v4/ips"\n\n'
        f'[backends.fake]\npath = "{tmp / "target.json"}"\n'
    )


def test_without_a_list_yet_the_snapshot_with_a_warning_and_no_http_import(tmp_path: Path) -> None:
    r = run(tmp_path, fake(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
    assert "warning: no last-known-good list yet; using the bundled snapshot of" in r.stderr
    assert len(json.loads((tmp_path / "target.json").read_text())["owned"]) == 22
    assert not (tmp_path / "state" / "last-known-good.json").exists()


def test_with_a_list_it_is_applied_silently(tmp_path: Path) -> None:
    plant_lkg(tmp_path / "state", "api-ips-2021-03.json")
    r = run(tmp_path, fake(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().rsplit("\n", 1)[0])
    assert out["source"]["kind"] == "last-known-good" and out["source"]["etag"] == "e1"
    assert "104.16.0.0/12" in json.loads((tmp_path / "target.json").read_text())["owned"]
    assert "warning" not in r.stderr


def test_backends_that_need_the_network_are_left_out(tmp_path: Path) -> None:
    config = (
        fake(tmp_path)
        + '\n[backends.aws]\nregion = "eu-west-1"\nsecurity_group_ids = ["sg-0123456789abcdef0"]\n'
    )
    r = run(tmp_path, config)
    assert r.returncode == 0, r.stderr
    assert "aws: skipped (needs the network; --offline)" in r.stderr
    imported = ast.literal_eval(r.stdout.strip().splitlines()[-1])
    assert not {"requests", "urllib3", "boto3"} & set(imported)  # not even boto3
