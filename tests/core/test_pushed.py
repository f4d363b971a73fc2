"""A list fetched once elsewhere and pushed (``sync --source-file``): checked and
guarded like a fetched one, recorded like one, and no request from the host."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from support.cli_helpers import Result, fixture_text, run_cli, write_config

API = "/client/v4/ips"


class Host:
    def __init__(self, tmp: Path, server: HTTPServer, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp, self.server, self.capsys = tmp, server, capsys
        self.config = write_config(
            tmp / "config.toml",
            server.url_for("").rstrip("/"),
            backends=f'[backends.fake]\npath = "{tmp / "target.json"}"\n',
        )
        server.expect_request(API).respond_with_data(fixture_text("api-ips.json"))

    def cli(self, *args: str) -> Result:
        base = ("--config", str(self.config), "--state-dir", str(self.tmp / "state"))
        return run_cli(self.capsys, *base, *args)

    def fetched(self) -> dict[str, object]:
        """What the controller hands every host: ``cfallow ranges --json``."""
        r = self.cli("ranges", "--json")
        assert r.rc == 0, r.err
        return r.json()  # type: ignore[no-any-return]

    def push(self, doc: object, *args: str) -> Result:
        path = self.tmp / "pushed.json"
        path.write_text(json.dumps(doc))
        return self.cli("sync", "--json", "--source-file", str(path), *args)


@pytest.fixture
def host(tmp_path: Path, httpserver: HTTPServer, capsys: pytest.CaptureFixture[str]) -> Host:
    return Host(tmp_path, httpserver, capsys)


def test_a_pushed_list_is_applied_and_kept_without_a_request(host: Host) -> None:
    doc = host.fetched()
    assert len(host.server.log) == 1
    r = host.push(doc, "--dry-run")
    assert r.rc == 0 and r.json()["changed"] is True, r.err
    assert not (host.tmp / "state" / "last-known-good.json").exists()  # a dry run writes nothing
    r = host.push(doc)
    assert r.rc == 0, r.err
    got = r.json()["source"]
    pushed = doc["source"]
    assert isinstance(pushed, dict)
    assert (got["etag"], got["fetched_at"], got["ipv4"]) == (
        pushed["etag"],
        pushed["fetched_at"],
        pushed["ipv4"],
    )
    known = json.loads((host.tmp / "state" / "last-known-good.json").read_text())
    assert known["etag"] == pushed["etag"] and known["fetched_at"] == pushed["fetched_at"]
    again = host.push(doc)
    assert again.rc == 0 and again.json()["changed"] is False
    assert len(host.server.log) == 1  # the host itself never asked


def test_a_pushed_list_goes_through_the_same_guards(host: Host) -> None:
    doc = host.fetched()
    assert host.push(doc).rc == 0
    source = doc["source"]
    assert isinstance(source, dict)
    shrunk = {**source, "ipv4": source["ipv4"][:2], "fetched_at": source["fetched_at"] + 60}
    r = host.push(shrunk)
    assert r.rc == 4 and "would disappear" in r.err, r.err
    r = host.push({**source, "ipv4": ["0.0.0.0/0"], "fetched_at": source["fetched_at"] + 60})
    assert r.rc == 4, r.err
    r = host.push({"source": {"ipv4": "nonsense"}})
    assert r.rc == 4 and "expected a list of CIDRs" in r.err, r.err
    older = {**source, "ipv4": source["ipv4"][:-1], "fetched_at": source["fetched_at"] - 60}
    r = host.push(older)
    assert r.rc == 4 and "older than this host's last-known-good list" in r.err, r.err
    target = json.loads((host.tmp / "target.json").read_text())
    assert len(host.server.log) == 1 and target  # still the first list


def test_a_pushed_list_is_a_source_of_its_own(host: Host) -> None:
    doc = host.fetched()
    for extra in ("--scheduled", "--offline"):
        r = host.push(doc, extra)
        assert r.rc == 2 and "--source-file is a list of its own" in r.err
