"""``[backends.aws]`` parsing, the credential/region preflight, and lazy boto3 import."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from cfallow.backend import Context, build
from cfallow.errors import BackendError, ConfigError, Unavailable

GROUP = "sg-0123456789abcdef0"


def aws(**section: Any) -> Any:
    return build("aws", {"security_group_ids": [GROUP], **section}, Context())


def test_defaults_and_every_key() -> None:
    b = aws()
    assert (b.region, b.groups, [str(p) for p in b.ports], b.protocol) == (
        "",
        (GROUP,),
        ["80", "443"],
        "tcp",
    )
    assert (b.endpoint_url, b.rules_per_group, b.prefix_lists, b.max_entries) == ("", 60, False, 30)
    b = aws(
        region="eu-west-1",
        security_group_ids=[GROUP, "sg-89abcdef", GROUP],
        ports=[443, "8000-8080"],
        protocol="udp",
        endpoint_url="https://vpce-1.ec2.eu-west-1.vpce.amazonaws.com",
        rules_per_group=120,
        prefix_lists=True,
        prefix_list_max_entries=40,
    )
    assert b.groups == (GROUP, "sg-89abcdef")
    assert [str(p) for p in b.ports] == ["443", "8000-8080"]
    assert (b.protocol, b.rules_per_group, b.prefix_lists, b.max_entries) == ("udp", 120, True, 40)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"security_group_ids": []}, "security_group_ids: name at least one security group"),
        ({"security_group_ids": ["web"]}, "security_group_ids: not a group id: 'web'"),
        ({"secret_access_key": "x"}, "unknown key: secret_access_key"),
        ({"protocol": "icmp"}, "protocol: must be one of tcp, udp"),
        ({"ports": ["http"]}, "ports: bad port 'http'"),
        ({"rules_per_group": 0}, "rules_per_group: must be at least 1"),
        ({"prefix_list_max_entries": 1001}, "prefix_list_max_entries: at most 1000"),
        ({"endpoint_url": "ec2.local"}, "endpoint_url: expected an http(s) URL"),
        ({"prefix_lists": "yes"}, "prefix_lists: expected true or false"),
    ],
)
def test_bad_config_is_refused_naming_the_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build("aws", {"security_group_ids": [GROUP], **section}, Context())
    assert str(err.value).startswith(f"[backends.aws] {message}"), str(err.value)


def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    # Keep boto3's chain off the network: no instance-metadata probe.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_check_names_a_missing_region_then_missing_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _isolated(monkeypatch)
    with pytest.raises(BackendError, match="no AWS region"):
        aws().check()
    with pytest.raises(BackendError, match="no AWS credentials in boto3's chain"):
        aws(region="eu-west-1").check()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example")
    aws(region="eu-west-1").check()  # credentials from the environment, no API call


def test_boto3_is_not_imported_until_the_backend_talks_to_aws() -> None:
    code = (
        "import sys\n"
        "from cfallow.backend import Context, build, load_class\n"
        "import cfallow.cli.commands\n"
        "cls = load_class('aws')\n"
        f"b = build('aws', {{'security_group_ids': ['{GROUP}']}}, Context())\n"
        "print(cls is type(b), sorted(m for m in ('boto3', 'botocore') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "True []"


def test_check_says_how_to_install_boto3(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "boto3" else real(name, *a)
    )
    backend = build("aws", {"security_group_ids": [GROUP]}, Context())
    with pytest.raises(Unavailable) as err:
        backend.check()
    import shlex
    import sys

    # this interpreter's own pip and the extra's real requirement: never "cfallow[aws]"
    # from an index, where cfallow is not published
    assert str(err.value) == (
        "boto3 is not installed (add the aws extra to this install: "
        f"{shlex.quote(sys.executable)} -m pip install 'boto3>=1.28' (or reinstall the "
        "cfallow wheel or checkout you installed from as 'PATH[aws]'))"
    )


@pytest.mark.parametrize(
    ("name", "section", "message"),
    [
        ("aws-nacl", {"network_acl_ids": ["acl-1"]}, "network_acl_ids: not a network ACL id"),
        ("aws-nacl", {"network_acl_ids": []}, "network_acl_ids: name at least one network ACL"),
        (
            "aws-nacl",
            {"network_acl_ids": ["acl-0123456789abcdef0"], "rule_numbers": "0-99"},
            'rule_numbers: expected "FIRST-LAST" within 1-32766',
        ),
        (
            "aws-nacl",
            {"network_acl_ids": ["acl-0123456789abcdef0"], "rules_per_acl": 41},
            "rules_per_acl: at most 40",
        ),
        (
            "aws-nacl",
            {"network_acl_ids": ["acl-0123456789abcdef0"], "interval": "5s"},
            "interval: expected seconds (at least 60)",
        ),
        (
            "aws-nacl",
            {"network_acl_ids": ["acl-0123456789abcdef0"], "role_arn": "admin"},
            "role_arn: not an IAM role ARN: 'admin'",
        ),
        (
            "aws-nacl",
            {"network_acl_ids": ["acl-0123456789abcdef0"], "targets": []},
            "targets: give either targets or region/role_arn/network_acl_ids, not both",
        ),
        (
            "aws-nacl",
            {"targets": [{"network_acl_ids": ["acl-0123456789abcdef0"]}]},
            "region: required in a target",
        ),
        (
            "aws-wafv2",
            {"scope": "CLOUDFRONT", "region": "eu-west-1"},
            'scope = "CLOUDFRONT" lives in region us-east-1 only',
        ),
        (
            "aws",
            {"security_group_ids": [GROUP], "targets": [{"region": "eu-west-1"}]},
            "targets: give either targets or region/role_arn/security_group_ids, not both",
        ),
    ],
)
def test_aws_modes_refuse_bad_config_naming_the_key(
    name: str, section: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        build(name, section, Context())
    assert message in str(err.value), str(err.value)


def test_targets_parse_into_regions_and_accounts() -> None:
    role = "arn:aws:iam::222233334444:role/cfallow"
    b = build(
        "aws-nacl",
        {
            "targets": [
                {"region": "eu-west-1", "network_acl_ids": ["acl-0123456789abcdef0"]},
                {"region": "eu-west-1", "role_arn": role, "network_acl_ids": ["acl-01234567"]},
            ],
            "interval": "30m",
        },
        Context(),
    )
    assert [t.label for t in b.targets] == ["eu-west-1", "eu-west-1/222233334444"]
    assert (b.interval, str(b.band), b.layout, b.quota) == (1800.0, "1-99", "per-port", 0)


@pytest.mark.parametrize("name", ["aws-nacl", "aws-wafv2"])
def test_the_new_modes_check_region_and_credentials_before_any_call(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _isolated(monkeypatch)
    ids = {"network_acl_ids": ["acl-0123456789abcdef0"]} if name == "aws-nacl" else {}
    with pytest.raises(BackendError, match="no AWS region"):
        build(name, ids, Context()).check()
    with pytest.raises(BackendError, match="no AWS credentials in boto3's chain"):
        build(name, {**ids, "region": "eu-west-1"}, Context()).check()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example")
    build(name, {**ids, "region": "eu-west-1"}, Context()).check()
