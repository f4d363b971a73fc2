"""A real moto server on 127.0.0.1 for the aws backend's tests, and a reader for it.

One server per pytest process (started on first use, ended by its pid at the
end of the session); every test resets it and builds its own VPC and groups.
The server records every request it receives; :meth:`MotoServer.calls` reads
that record, so write counts come from the server, not from the backend.
cfallow's requests are told apart by their User-Agent (``cfallow/VERSION``).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from netaddr import IPNetwork

from cfallow.backend import Backend, Context, build
from cfallow.testing import Harness
from support import need

REGION = "eu-west-1"
#: Actions that change nothing (reads, and the role assumption that precedes them).
READS = ("Describe", "Get", "List", "AssumeRole")
LAUNCHER = Path(__file__).with_name("moto_server.py")
_servers: dict[str, MotoServer] = {}


@dataclass(frozen=True)
class Call:
    """One recorded request: its action and form parameters."""

    action: str
    params: dict[str, str]
    by_cfallow: bool
    #: ``(access key, region)`` from the request's signature: who asked, and where.
    scope: tuple[str, str] = ("", "")

    @property
    def mutating(self) -> bool:
        return not self.action.startswith(READS)


def _scope(headers: dict[str, str]) -> tuple[str, str]:
    """``(access key, region)`` of a SigV4 ``Authorization`` header."""
    auth = headers.get("Authorization", "")
    _, _, cred = auth.partition("Credential=")
    parts = cred.split(",")[0].split("/")
    return (parts[0], parts[2]) if len(parts) >= 3 else ("", "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MotoServer:
    """``moto_server`` (see moto_server.py) on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "moto.log"
        env = dict(os.environ)
        env.update(MOTO_ENABLE_RECORDING="True", MOTO_RECORDER_FILEPATH=str(workdir / "recording"))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(LAUNCHER), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=workdir,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                self._post("/moto-api/reset")
                return
            except OSError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    why = self.log.read_text()
                    raise RuntimeError(f"moto server did not start: {why}") from exc
                time.sleep(0.1)

    def _post(self, path: str) -> bytes:
        req = urllib.request.Request(self.url + path, data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            body: bytes = resp.read()
            return body

    def reset(self) -> None:
        """Forget every resource and every recorded request."""
        self._post("/moto-api/reset")
        self._post("/moto-api/recorder/reset-recording")

    def reset_recording(self) -> None:
        """Forget the recorded requests (resources stay)."""
        self._post("/moto-api/recorder/reset-recording")

    def calls(self) -> list[Call]:
        """Every request received since the last reset, in order."""
        with urllib.request.urlopen(
            self.url + "/moto-api/recorder/download-recording", timeout=10
        ) as resp:
            lines = resp.read().decode().splitlines()
        out = []
        for line in lines:
            entry = json.loads(line)
            body = entry.get("body") or ""
            if entry.get("body_encoded"):
                body = base64.b64decode(body).decode()
            headers = entry["headers"]
            # JSON protocols (WAFv2, Service Quotas) name the action in X-Amz-Target.
            try:
                form = {k: v[0] for k, v in parse_qs(body, strict_parsing=True).items()}
            except ValueError:
                form = {}
            action = form.get("Action") or headers.get("X-Amz-Target", "?").rpartition(".")[2]
            agent = headers.get("User-Agent", "")
            out.append(Call(action, form, "cfallow/" in agent, _scope(headers)))
        return out

    def cfallow_writes(self) -> list[Call]:
        """cfallow's mutating requests since the last reset, in order."""
        return [c for c in self.calls() if c.by_cfallow and c.mutating]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def shared_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> MotoServer:
    """The process-wide server (started on first use), reset for this test."""
    launcher_ok = LAUNCHER.exists()
    try:
        import moto.server  # noqa: F401
    except ImportError:
        launcher_ok = False
    need(launcher_ok, "moto[server] (moto_server)")
    if "moto" not in _servers:
        server = _servers["moto"] = MotoServer(tmp_path_factory.mktemp("moto"))
        request.config.add_cleanup(server.stop)
        request.config.add_cleanup(_servers.clear)
    _servers["moto"].reset()
    return _servers["moto"]


def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials in the environment (nothing else in boto3's chain is consulted);
    the backend's backoff and polling shortened."""
    from cfallow.backends.aws.backend import AwsBackend
    from cfallow.backends.aws.nacl import AwsNaclBackend
    from cfallow.backends.aws.wafv2 import AwsWafv2Backend

    monkeypatch.setattr(AwsBackend, "backoff", 0.001)
    monkeypatch.setattr(AwsNaclBackend, "backoff", 0.001)
    monkeypatch.setattr(AwsWafv2Backend, "backoff", 0.001)
    monkeypatch.setattr(AwsBackend, "poll_interval", 0.01)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def rule_key(raw: dict[str, Any]) -> tuple[str, int, int, str]:
    target = raw.get("CidrIpv4") or raw.get("CidrIpv6") or raw.get("PrefixListId") or "?"
    if "/" in target:
        target = str(IPNetwork(target).cidr)
    return (raw["IpProtocol"], int(raw["FromPort"]), int(raw["ToPort"]), target)


def owned_by_cfallow(raw: dict[str, Any]) -> bool:
    """The ownership test, written out here independently of the backend."""
    tags = {t["Key"]: t["Value"] for t in raw.get("Tags") or []}
    return tags.get("managed-by") == "cfallow" and (raw.get("Description") or "").startswith(
        "cfallow"
    )


class World:
    """A VPC with security groups on the moto server, read with a plain boto3 client."""

    def __init__(self, server: MotoServer, groups: int = 2) -> None:
        import boto3

        self.server = server
        self._client: Any = None
        # the backend's state (its mark of prefix lists it made) stays in the test's temp dir
        self.state_dir = Path(tempfile.mkdtemp(prefix="state-", dir=server.log.parent))
        self.ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=server.url)
        vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        self.groups = [
            self.ec2.create_security_group(GroupName=f"web{i}", Description="web", VpcId=vpc)[
                "GroupId"
            ]
            for i in range(groups)
        ]

    def rules(self, group: str) -> list[dict[str, Any]]:
        raw = self.ec2.describe_security_group_rules(
            Filters=[{"Name": "group-id", "Values": [group]}]
        )["SecurityGroupRules"]
        return [r for r in raw if not r["IsEgress"]]

    def owned(self, group: str) -> set[tuple[str, int, int, str]]:
        return {rule_key(r) for r in self.rules(group) if owned_by_cfallow(r)}

    def snapshot(self, group: str) -> list[tuple[Any, ...]]:
        """Every rule of the group (ingress and egress) with id, description and tags."""
        raw = self.ec2.describe_security_group_rules(
            Filters=[{"Name": "group-id", "Values": [group]}]
        )["SecurityGroupRules"]
        return sorted(
            (
                r["SecurityGroupRuleId"],
                r["IsEgress"],
                *rule_key(r),
                r.get("Description"),
                tuple(sorted((t["Key"], t["Value"]) for t in r.get("Tags") or [])),
            )
            for r in raw
        )

    def unowned(self) -> list[tuple[Any, ...]]:
        return [
            (g, r["SecurityGroupRuleId"], *rule_key(r), r.get("Description"), str(r.get("Tags")))
            for g in self.groups
            for r in sorted(self.rules(g), key=lambda r: r["SecurityGroupRuleId"])
            if not owned_by_cfallow(r)
        ]

    def authorize(
        self, group: str, port: int, cidr: str, description: str, tags: dict[str, str] | None = None
    ) -> None:
        """An admin's rule (not cfallow's unless tagged and described so)."""
        field = "Ipv6Ranges" if ":" in cidr else "IpRanges"
        cidr_key = "CidrIpv6" if ":" in cidr else "CidrIp"
        extra: dict[str, Any] = {}
        if tags:
            extra["TagSpecifications"] = [
                {
                    "ResourceType": "security-group-rule",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ]
        self.ec2.authorize_security_group_ingress(
            GroupId=group,
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": port,
                    "ToPort": port,
                    field: [{cidr_key: cidr, "Description": description}],
                }
            ],
            **extra,
        )

    def add_foreign(self) -> None:
        """Admin rules: same port other CIDR, a Cloudflare CIDR, other ports, near-misses."""
        for g in self.groups:
            self.authorize(g, 443, "203.0.113.0/24", "office")
            self.authorize(g, 443, "173.245.48.0/20", "admin: cloudflare by hand")
            self.authorize(g, 443, "2001:db8::/32", "office v6")
            self.authorize(g, 22, "198.51.100.7/32", "ssh from bastion")
            # Tagged like cfallow's but described otherwise: not cfallow's.
            self.authorize(g, 8443, "192.0.2.0/24", "vpn", {"managed-by": "cfallow"})
            # Described like cfallow's but untagged: not cfallow's.
            self.authorize(g, 80, "198.51.100.0/24", "cfallow-look-alike")

    def backend(self, groups: list[str] | None = None, **options: Any) -> Backend:
        section = {
            "region": REGION,
            "security_group_ids": groups or self.groups,
            "ports": [80, 443],
            "endpoint_url": self.server.url,
            **options,
        }
        backend = build("aws", section, Context(state_dir=self.state_dir))
        # One client per test, made by the backend's own factory (its User-Agent,
        # no botocore retries): building a client costs ~0.1 s of CPU per sync.
        if self._client is None:
            from cfallow.backends.aws.client import make_client

            self._client = make_client(REGION, self.server.url)
        backend.set_client(self._client)  # type: ignore[attr-defined]
        return backend


class WorldHarness(Harness):
    """Contract harness over a :class:`World`; subclasses say what the backend owns."""

    def __init__(self, world: World) -> None:
        self.world = world

    def add_foreign(self) -> None:
        self.world.add_foreign()

    def foreign(self) -> object:
        return self.world.unowned()

    def writes(self) -> int:
        return len(self.world.server.cfallow_writes())
