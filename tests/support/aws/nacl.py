"""Network ACLs on the moto server for the aws-nacl tests, read and judged independently.

moto lists no default deny entries for a new ACL (AWS lists rule 32767, and
32768 with IPv6): :class:`NaclWorld` adds them, so what the backend reads is
what AWS would list. :func:`verdict` evaluates an ACL's inbound entries the way
AWS documents it (lowest number first, the first match decides, the default
deny last): the tests assert what a packet meets, not entry text.
"""

from __future__ import annotations

from typing import Any

from netaddr import IPAddress, IPNetwork

from cfallow.backend import Backend, Context, build
from cfallow.testing import Harness

from .harness import REGION, MotoServer

TAG = "cfallow:rule-numbers"
Entry = tuple[int, bool, str, int, int, str, str]  # number, egress, proto, from, to, cidr, action


def entry_of(raw: dict[str, Any]) -> Entry:
    ports = raw.get("PortRange") or {}
    cidr = raw.get("CidrBlock") or raw.get("Ipv6CidrBlock") or ""
    return (
        int(raw["RuleNumber"]),
        bool(raw["Egress"]),
        str(raw["Protocol"]),
        int(ports.get("From", -1)),
        int(ports.get("To", -1)),
        str(IPNetwork(cidr).cidr),
        str(raw["RuleAction"]),
    )


def verdict(entries: list[Entry], address: str, port: int, *, egress: bool = False) -> str:
    """``allow`` or ``deny``: what AWS does with a TCP packet from (to) ``address``."""
    ip = IPAddress(address)
    for _number, out, proto, first, last, cidr, action in sorted(entries):
        if out != egress or IPNetwork(cidr).version != ip.version:
            continue
        if proto not in ("-1", "6") or (first >= 0 and not first <= port <= last):
            continue
        if ip in IPNetwork(cidr):
            return action
    return "deny"


class NaclWorld:
    """A VPC (with IPv6) and network ACLs on the moto server, read with a plain client."""

    def __init__(
        self, server: MotoServer, acls: int = 1, region: str = REGION, role_arn: str = ""
    ) -> None:
        import boto3

        self.server = server
        self.region = region
        self.role_arn = role_arn
        keys: dict[str, str] = {}
        if role_arn:  # another account: moto keeps each account's resources apart
            sts = boto3.client("sts", region_name=region, endpoint_url=server.url)
            creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="setup")["Credentials"]
            keys = {
                "aws_access_key_id": creds["AccessKeyId"],
                "aws_secret_access_key": creds["SecretAccessKey"],
                "aws_session_token": creds["SessionToken"],
            }
        self.ec2 = boto3.client("ec2", region_name=region, endpoint_url=server.url, **keys)
        vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16", AmazonProvidedIpv6CidrBlock=True)
        self.vpc = vpc["Vpc"]["VpcId"]
        self.acls = [self.new_acl() for _ in range(acls)]

    def new_acl(self) -> str:
        acl = self.ec2.create_network_acl(VpcId=self.vpc)["NetworkAcl"]["NetworkAclId"]
        for egress in (False, True):
            for number, family in ((32767, "CidrBlock"), (32768, "Ipv6CidrBlock")):
                world = "0.0.0.0/0" if family == "CidrBlock" else "::/0"
                self.entry(acl, number, "-1", world, "deny", egress=egress, family=family)
        return acl

    def entry(
        self,
        acl: str,
        number: int,
        protocol: str,
        cidr: str,
        action: str,
        *,
        egress: bool = False,
        ports: tuple[int, int] | None = None,
        family: str = "",
    ) -> None:
        """An entry of the admin's (or AWS's default deny)."""
        key = family or ("Ipv6CidrBlock" if ":" in cidr else "CidrBlock")
        extra: dict[str, Any] = {key: cidr}
        if ports:
            extra["PortRange"] = {"From": ports[0], "To": ports[1]}
        self.ec2.create_network_acl_entry(
            NetworkAclId=acl,
            RuleNumber=number,
            Protocol=protocol,
            RuleAction=action,
            Egress=egress,
            **extra,
        )

    def raw(self, acl: str) -> dict[str, Any]:
        found: dict[str, Any] = self.ec2.describe_network_acls(NetworkAclIds=[acl])["NetworkAcls"][
            0
        ]
        return found

    def entries(self, acl: str) -> list[Entry]:
        return sorted(entry_of(e) for e in self.raw(acl)["Entries"])

    def band(self, acl: str) -> tuple[int, int] | None:
        """The band cfallow's tag records on the ACL (read independently of the backend)."""
        tags = {t["Key"]: t["Value"] for t in self.raw(acl).get("Tags") or []}
        if TAG not in tags:
            return None
        first, _, last = tags[TAG].partition("-")
        return int(first), int(last)

    def owned(self, acl: str) -> list[Entry]:
        band = self.band(acl)
        if band is None:
            return []
        return [e for e in self.entries(acl) if not e[1] and band[0] <= e[0] <= band[1]]

    def allowed(self, acl: str) -> frozenset[IPNetwork]:
        """The CIDRs cfallow's own allow entries name."""
        return frozenset(IPNetwork(e[5]) for e in self.owned(acl) if e[6] == "allow")

    def snapshot(self, acl: str) -> tuple[Any, ...]:
        """Everything of the ACL that is not cfallow's: entries outside its band, other tags,
        subnet associations."""
        band = self.band(acl) or (0, -1)
        raw = self.raw(acl)
        return (
            tuple(e for e in self.entries(acl) if e[1] or not band[0] <= e[0] <= band[1]),
            tuple(sorted((t["Key"], t["Value"]) for t in raw.get("Tags") or [] if t["Key"] != TAG)),
            tuple(sorted(a.get("SubnetId", "") for a in raw.get("Associations") or [])),
        )

    def add_foreign(self) -> None:
        """The admin's ACL: allow everything at 100 (after cfallow's band), ssh from an
        office, return traffic out, a Name tag."""
        for acl in self.acls:
            self.entry(acl, 100, "-1", "0.0.0.0/0", "allow")
            self.entry(acl, 101, "-1", "::/0", "allow")
            self.entry(acl, 200, "6", "198.51.100.0/24", "allow", ports=(22, 22))
            self.entry(acl, 100, "6", "0.0.0.0/0", "allow", egress=True, ports=(1024, 65535))
            self.entry(acl, 101, "6", "::/0", "allow", egress=True, ports=(1024, 65535))
            self.ec2.create_tags(Resources=[acl], Tags=[{"Key": "Name", "Value": "web"}])

    def target(self) -> dict[str, Any]:
        """This world as one entry of ``targets``."""
        found: dict[str, Any] = {"region": self.region, "network_acl_ids": self.acls}
        if self.role_arn:
            found["role_arn"] = self.role_arn
        return found

    def backend(self, acls: list[str] | None = None, **options: Any) -> Backend:
        section = {
            "region": self.region,
            "network_acl_ids": acls or self.acls,
            "ports": [443],
            "endpoint_url": self.server.url,
            "rules_per_acl": 40,
            **options,
        }
        return build("aws-nacl", section, Context())


class NaclHarness(Harness):
    """The shared contract over one :class:`NaclWorld`."""

    def __init__(self, world: NaclWorld) -> None:
        self.world = world

    def backend(self) -> Backend:
        return self.world.backend()

    def owned(self) -> frozenset[IPNetwork]:
        return frozenset().union(*(self.world.allowed(a) for a in self.world.acls))

    def add_foreign(self) -> None:
        self.world.add_foreign()

    def foreign(self) -> object:
        return [self.world.snapshot(a) for a in self.world.acls]

    def writes(self) -> int:
        return len(self.world.server.cfallow_writes())
