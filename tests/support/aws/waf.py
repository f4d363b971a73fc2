"""WAFv2 IP sets and web ACLs on the moto server for the aws-wafv2 tests, read independently."""

from __future__ import annotations

from typing import Any

from netaddr import IPNetwork

from cfallow.backend import Backend, Context, build
from cfallow.testing import Harness

from .harness import REGION, MotoServer

SCOPE = "REGIONAL"
_VIS = {"SampledRequestsEnabled": False, "CloudWatchMetricsEnabled": False, "MetricName": "m"}


class WafWorld:
    """The admin's WAF in one region: read with a plain client (no cfallow User-Agent)."""

    def __init__(self, server: MotoServer, region: str = REGION) -> None:
        import boto3

        self.server = server
        self.region = region
        self.waf = boto3.client("wafv2", region_name=region, endpoint_url=server.url)

    def sets(self) -> dict[str, dict[str, Any]]:
        """Every IP set by name: addresses, tags, id, ARN."""
        out = {}
        for s in self.waf.list_ip_sets(Scope=SCOPE, Limit=100)["IPSets"]:
            raw = self.waf.get_ip_set(Name=s["Name"], Scope=SCOPE, Id=s["Id"])["IPSet"]
            tags = self.waf.list_tags_for_resource(ResourceARN=s["ARN"])["TagInfoForResource"]
            out[s["Name"]] = {
                "addresses": sorted(raw["Addresses"]),
                "description": s.get("Description"),
                "tags": {t["Key"]: t["Value"] for t in tags.get("TagList") or []},
                "id": s["Id"],
                "arn": s["ARN"],
            }
        return out

    def owned(self) -> frozenset[IPNetwork]:
        """The addresses of the sets cfallow owns: named, described and tagged so."""
        return frozenset(
            IPNetwork(a)
            for name, s in self.sets().items()
            if name.startswith("cfallow-cloudflare-ipv")
            and (s["description"] or "").startswith("cfallow")
            and s["tags"].get("managed-by") == "cfallow"
            for a in s["addresses"]
        )

    def admin_set(
        self, name: str = "office", addresses: tuple[str, ...] = ("203.0.113.0/24",)
    ) -> str:
        got = self.waf.create_ip_set(
            Name=name, Scope=SCOPE, IPAddressVersion="IPV4", Addresses=list(addresses)
        )
        arn: str = got["Summary"]["ARN"]
        return arn

    def web_acl(self, name: str, *arns: str) -> str:
        """A web ACL whose rules reference ``arns`` (one nested in an OR, as admins write)."""
        rules = []
        for i, arn in enumerate(arns):
            statement: dict[str, Any] = {"IPSetReferenceStatement": {"ARN": arn}}
            if i:
                statement = {"NotStatement": {"Statement": statement}}
            rules.append(
                {
                    "Name": f"r{i}",
                    "Priority": i,
                    "Action": {"Allow": {}},
                    "Statement": statement,
                    "VisibilityConfig": _VIS,
                }
            )
        got = self.waf.create_web_acl(
            Name=name, Scope=SCOPE, DefaultAction={"Block": {}}, VisibilityConfig=_VIS, Rules=rules
        )
        acl_id: str = got["Summary"]["Id"]
        return acl_id

    def drop_web_acl(self, name: str, acl_id: str) -> None:
        token = self.waf.get_web_acl(Name=name, Scope=SCOPE, Id=acl_id)["LockToken"]
        self.waf.delete_web_acl(Name=name, Scope=SCOPE, Id=acl_id, LockToken=token)

    def foreign(self) -> object:
        return {n: s for n, s in self.sets().items() if not n.startswith("cfallow-")}

    def backend(self, **options: Any) -> Backend:
        section = {"region": self.region, "endpoint_url": self.server.url, **options}
        return build("aws-wafv2", section, Context())


class WafHarness(Harness):
    """The shared contract over one :class:`WafWorld`."""

    def __init__(self, world: WafWorld) -> None:
        self.world = world

    def backend(self) -> Backend:
        return self.world.backend()

    def owned(self) -> frozenset[IPNetwork]:
        return self.world.owned()

    def add_foreign(self) -> None:
        arn = self.world.admin_set("office", ("203.0.113.0/24", "173.245.48.0/20"))
        self.world.web_acl("site", arn)

    def foreign(self) -> object:
        return self.world.foreign()

    def writes(self) -> int:
        return len(self.world.server.cfallow_writes())
