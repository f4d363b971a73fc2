"""``cfallow`` as a subprocess with the aws backend: a local Cloudflare source and moto server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from netaddr import IPNetwork
from pytest_httpserver import HTTPServer
from support.aws.harness import REGION, World, aws_env, shared_server
from support.cfdata import ADDED_2021, CURRENT, OLD, REMOVED_2021
from support.cli_helpers import Result, fixture_text, run_proc, write_config

from cfallow.model import as_strings

API = "/client/v4/ips"


class Cli:
    def __init__(self, tmp: Path, http: HTTPServer, world: World) -> None:
        self.tmp, self.http, self.world = tmp, http, world
        self.state = tmp / "state"
        self.base = http.url_for("").rstrip("/")

    def configure(self, **aws: object) -> None:
        section = {
            "region": REGION,
            "security_group_ids": self.world.groups,
            "ports": [80, 443],
            "endpoint_url": self.world.server.url,
            **aws,
        }
        lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in section.items())
        write_config(self.tmp / "config.toml", self.base, backends="[backends.aws]\n" + lines)

    def serve(self, fixture: str) -> None:
        self.http.clear()
        self.http.expect_request(API).respond_with_data(
            fixture_text(fixture), content_type="application/json"
        )

    def run(self, *args: str) -> Result:
        config = str(self.tmp / "config.toml")
        return run_proc("--config", config, "--state-dir", str(self.state), *args)

    def owned(self) -> set[IPNetwork]:
        return {IPNetwork(k[3]) for g in self.world.groups for k in self.world.owned(g)}


@pytest.fixture
def cli(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    httpserver: HTTPServer,
) -> Cli:
    aws_env(monkeypatch)
    c = Cli(tmp_path, httpserver, World(shared_server(request, tmp_path_factory)))
    c.configure()
    return c


def backend_json(r: Result) -> dict[str, object]:
    doc = r.json()
    assert [b["name"] for b in doc["backends"]] == ["aws"]
    result: dict[str, object] = doc["backends"][0]
    return result


def test_sync_2021_then_current_then_remove_restores_every_group(cli: Cli) -> None:
    cli.world.add_foreign()
    before = {g: cli.world.snapshot(g) for g in cli.world.groups}
    cli.serve("api-ips-2021-03.json")

    dry = cli.run("sync", "--dry-run", "--json")
    assert dry.rc == 0, dry.err
    assert backend_json(dry)["add"] == as_strings(OLD)
    assert cli.world.server.cfallow_writes() == []

    first = cli.run("sync", "--json")
    assert first.rc == 0, first.err
    assert cli.owned() == set(OLD)

    cli.serve("api-ips.json")
    status = cli.run("status", "--json")
    assert status.rc == 3, status.err
    aws = backend_json(status)
    assert (aws["add"], aws["remove"]) == (as_strings(ADDED_2021), as_strings(REMOVED_2021))

    second = cli.run("sync", "--json")
    assert second.rc == 0, second.err
    assert cli.owned() == set(CURRENT)

    cli.world.server.reset_recording()
    third = cli.run("sync", "--json")
    assert third.rc == 0, third.err
    assert backend_json(third)["changed"] is False
    assert cli.world.server.cfallow_writes() == []

    removed = cli.run("remove", "--backend", "aws", "--json")
    assert removed.rc == 0, removed.err
    assert backend_json(removed)["remove"] == as_strings(CURRENT)
    assert {g: cli.world.snapshot(g) for g in cli.world.groups} == before


def test_over_quota_is_exit_1_one_line_and_nothing_written(cli: Cli) -> None:
    cli.configure(rules_per_group=29)
    cli.serve("api-ips.json")
    r = cli.run("sync")
    assert r.rc == 1, r.err
    need = "; ".join(
        f"{g} needs 30 IPv4 rules (30 cfallow + 0 other), quota 29" for g in cli.world.groups
    )
    assert f"cfallow: error: aws: {need}; to fit: fewer ports" in r.err
    assert len([line for line in r.err.splitlines() if "error" in line]) == 1, r.err
    assert cli.world.server.cfallow_writes() == []
    assert cli.owned() == set()
