"""Many regions and accounts in one aws-nacl run: each target's trouble stays its own.

moto_server on 127.0.0.1 holds three regions of one account and a second
account reached through sts:AssumeRole; botocore's Stubber stands in where
moto is not faithful (it grants every permission, and its Service Quotas
answers the default).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from support.aws.harness import MotoServer, aws_env, shared_server
from support.aws.nacl import NaclWorld, verdict
from support.cfdata import CURRENT

from cfallow.backend import Context, build
from cfallow.engine import run_backend

ROLE = "arn:aws:iam::222233334444:role/cfallow"
ACL = "acl-0aaaaaaaaaaaaaaa1"


@pytest.fixture
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> MotoServer:
    aws_env(monkeypatch)
    return shared_server(request, tmp_path_factory)


def nacl(targets: list[dict[str, Any]], server: MotoServer, **options: Any) -> Any:
    section = {"targets": targets, "endpoint_url": server.url, "rules_per_acl": 40, **options}
    return build("aws-nacl", {"ports": [443], **section}, options.pop("ctx", Context()))


def denied(client_region: str, operation: str, code: str) -> Any:
    """A client whose every ``operation`` is refused with ``code``."""
    client = boto3.client("ec2", region_name=client_region)
    stub = Stubber(client)
    stub.add_client_error(operation, service_error_code=code, http_status_code=403)
    stub.activate()
    return client


def test_three_regions_two_accounts_one_run_failures_stay_their_own(server: MotoServer) -> None:
    a_eu = NaclWorld(server, region="eu-west-1")
    a_us = NaclWorld(server, region="us-east-1")
    a_ap = NaclWorld(server, region="ap-southeast-2")
    b_eu = NaclWorld(server, region="eu-west-1", role_arn=ROLE)
    b_us = NaclWorld(server, region="us-east-1", role_arn=ROLE)
    # us-east-1 of account A: 17 admin entries + 2 default + 24 of cfallow's > 40
    for i in range(17):
        a_us.entry(a_us.acls[0], 1000 + i, "6", f"198.18.{i}.0/24", "allow", ports=(22, 22))
    worlds = [a_eu, a_us, a_ap, b_eu, b_us]
    backend = nacl([w.target() for w in worlds], server)
    make = backend.clients.factory

    def factory(target: Any, service: str, region: str) -> Any:
        if target.label == "us-east-1/222233334444":  # the role may not describe ACLs
            return denied("us-east-1", "describe_network_acls", "UnauthorizedOperation")
        return make(target, service, region)

    backend.clients.factory = factory
    result = run_backend(backend, CURRENT, dry_run=False)
    assert result.error is not None
    failed = sorted(result.error.split("; "))
    assert failed == [
        f"{a_us.acls[0]} (us-east-1): 43 inbound rules needed (24 cfallow + 17 other + 2 default"
        " deny), quota 40: request 'Rules per network ACL' (Service Quotas vpc L-2AEEBF1A) of"
        " 43 (AWS allows at most 40: fewer ports)",
        "us-east-1/222233334444: UnauthorizedOperation: ec2:DescribeNetworkAcls not allowed"
        " (describe)",
    ]
    for w in (a_eu, a_ap, b_eu):
        entries = w.entries(w.acls[0])
        assert all(verdict(entries, str(n[1]), 443) == "allow" for n in CURRENT), w.region
        assert verdict(entries, "198.51.100.7", 443) == "deny"
    assert a_us.owned(a_us.acls[0]) == [] and a_us.band(a_us.acls[0]) is None
    # calls per target, as the backend counted them and as the server received them
    assert (
        backend.clients.calls["eu-west-1/222233334444"] == 1 + 1 + 1 + 24
    )  # sts, read, tag, entries
    server.reset_recording()
    again = nacl([w.target() for w in worlds if w is not b_us], server)
    second = run_backend(again, CURRENT, dry_run=False)
    assert second.error is not None and second.error.startswith(f"{a_us.acls[0]} (us-east-1): 43")
    assert [c for c in server.cfallow_writes()] == []
    per_target = Counter((c.scope[1], c.action) for c in server.calls() if c.by_cfallow)
    assert per_target == Counter(
        {
            ("eu-west-1", "DescribeNetworkAcls"): 2,  # account A and account B
            ("eu-west-1", "AssumeRole"): 1,
            ("us-east-1", "DescribeNetworkAcls"): 1,
            ("ap-southeast-2", "DescribeNetworkAcls"): 1,
        }
    )
    assert dict(again.clients.calls) == {
        "eu-west-1": 1,
        "us-east-1": 1,
        "ap-southeast-2": 1,
        "eu-west-1/222233334444": 2,
    }


def test_a_scheduled_run_reads_aws_only_when_its_interval_is_due(
    server: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = NaclWorld(server)
    ctx = Context(state_dir=tmp_path, scheduled=True)

    def run() -> Any:
        section = {**world.target(), "endpoint_url": server.url, "rules_per_acl": 40}
        return run_backend(
            build("aws-nacl", {**section, "interval": "6h"}, ctx), CURRENT, dry_run=False
        )

    monkeypatch.setenv("CFALLOW_NOW", "1000000")
    assert run().error is None and world.allowed(world.acls[0]) == CURRENT
    server.reset_recording()
    monkeypatch.setenv("CFALLOW_NOW", str(1000000 + 5 * 3600))
    skipped = run()
    assert skipped.error is None and not skipped.changed and skipped.plan is not None
    assert skipped.plan.notes == (
        "not due: AWS last read 300 min ago, interval 6 h (sync without --scheduled reads now)",
    )
    assert [c for c in server.calls() if c.by_cfallow] == []
    monkeypatch.setenv("CFALLOW_NOW", str(1000000 + 6 * 3600))
    assert run().error is None
    assert [c.action for c in server.calls() if c.by_cfallow] == ["DescribeNetworkAcls"]
    # an unscheduled run always reads
    server.reset_recording()
    ctx = dataclasses.replace(ctx, scheduled=False)
    assert run().error is None and len(server.calls()) == 1


def acl_response(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"NetworkAcls": [{"NetworkAclId": ACL, "VpcId": "vpc-1", "Entries": entries}]}


DEFAULT = [
    {
        "RuleNumber": 32767,
        "Protocol": "-1",
        "RuleAction": "deny",
        "Egress": False,
        "CidrBlock": "0.0.0.0/0",
    }
]


def _stubbed_quota_run(
    quota: float | None, error: str | None, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """One dry run of an ACL with the default entries, the quota answered by a stub."""
    aws_env(monkeypatch)  # credentials in the chain for the preflight; calls stay stubbed
    ec2 = boto3.client(
        "ec2", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="y"
    )
    sq = boto3.client(
        "service-quotas", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="y"
    )
    with Stubber(ec2) as ec2_stub, Stubber(sq) as sq_stub:
        ec2_stub.add_response(
            "describe_network_acls", acl_response(DEFAULT), {"NetworkAclIds": [ACL]}
        )
        if quota is None:
            sq_stub.add_client_error(
                "get_service_quota", service_error_code=error or "", http_status_code=403
            )
        else:
            sq_stub.add_response(
                "get_service_quota",
                {"Quota": {"QuotaCode": "L-2AEEBF1A", "Value": quota}},
                {"ServiceCode": "vpc", "QuotaCode": "L-2AEEBF1A"},
            )
        backend: Any = build(
            "aws-nacl", {"region": "eu-west-1", "network_acl_ids": [ACL]}, Context()
        )
        backend.clients.factory = lambda t, service, r: ec2 if service == "ec2" else sq
        return run_backend(backend, CURRENT, dry_run=True)


@pytest.mark.parametrize(
    ("quota", "error"),
    [
        (None, "AccessDeniedException"),  # not readable: counted as 20
        (40.0, None),  # raised to 40: read from Service Quotas
        (25.0, None),  # exactly the 25 needed (22 + 2 + 1 default deny)
        (24.0, None),
    ],
)
def test_the_quota_comes_from_service_quotas_where_readable(
    quota: float | None, error: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _stubbed_quota_run(quota, error, monkeypatch)
    limit = int(quota) if quota else 20
    assert result.plan is not None
    if limit >= 25:
        assert result.error is None and not result.plan.failed
    else:  # a dry run says it as the real run would
        assert result.error == (
            f"{ACL} (eu-west-1): 25 inbound rules needed (24 cfallow + 0 other"
            f" + 1 default deny), quota {limit}: request 'Rules per network ACL'"
            " (Service Quotas vpc L-2AEEBF1A) of 25"
        )
    if quota is None:
        assert (
            "eu-west-1: ACL quota not readable (AccessDeniedException:"
            " servicequotas:GetServiceQuota not allowed): counted as 20" in result.plan.notes[0]
        )


def test_a_failed_plans_notes_are_in_the_text_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """The quota that could not be read is why the ACL "needs" more than it has: the text
    of ``status`` and ``sync`` says so beside the failure (not only ``--json``)."""
    import io

    from cfallow import report

    result = _stubbed_quota_run(None, "AccessDeniedException", monkeypatch)
    assert result.error is not None and result.plan is not None
    note = result.plan.notes[0]
    for verb in ("status", "sync"):
        out = io.StringIO()
        report.write_text(out, None, [result], dry_run=True, verb=verb, wrap=False)
        assert note in out.getvalue(), (verb, out.getvalue())
        lines = out.getvalue().splitlines()
        assert not [ln for ln in lines if ln.startswith("  + ")], "a failed plan's entries"
    row = report.table.status_rows([result])[1]
    assert "the error is on stderr; eu-west-1: ACL quota not readable" in " ".join(row.split())


def test_the_cli_exits_1_naming_the_failed_target_after_writing_the_others(
    server: MotoServer, tmp_path: Path
) -> None:
    """``cfallow sync`` (a process, bundled list): one ACL missing in one region, the other
    region written; ``status`` (a dry run) names the same target."""
    from support.cli_helpers import run_proc

    good = NaclWorld(server, region="eu-west-1")
    missing = "acl-0123456789abcdef0"
    config = tmp_path / "config.toml"
    config.write_text(
        "[backends.aws-nacl]\nports = [443]\nrules_per_acl = 40\n"
        f'endpoint_url = "{server.url}"\n'
        f'targets = [{{ region = "eu-west-1", network_acl_ids = ["{good.acls[0]}"] }},'
        f' {{ region = "us-west-2", network_acl_ids = ["{missing}"] }}]\n'
    )
    base = ["--config", str(config), "--state-dir", str(tmp_path / "state")]
    status = run_proc(*base, "status", "--source", "bundled")
    want = f"{missing} (us-west-2): InvalidNetworkAclID.NotFound"
    assert status.rc == 1 and want in status.err, status.err
    assert good.owned(good.acls[0]) == []
    sync = run_proc(*base, "sync", "--source", "bundled")
    assert sync.rc == 1, sync.err
    assert f"aws-nacl: {want}" in sync.err
    assert len([line for line in sync.err.splitlines() if "error" in line]) == 1, sync.err
    assert good.allowed(good.acls[0]) == CURRENT
