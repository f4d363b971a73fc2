"""The IAM policies docs/aws.md ships, enforced by a moto server.

Each policy is taken from the docs' own text (the JSON block under its heading),
its placeholders replaced by this test's region, account and ids as the docs tell
the operator, and put on an IAM user; the cfallow CLI runs with that user's access
key against a moto server that checks every request against the user's policies
(``/moto-api/reset-auth``: the setup and the reads of the cloud are made with
checks off, cfallow's runs with checks on).

What moto 5.2 checks (moto/core/responses.py ``call_action``,
moto/iam/access_control.py ``IAMRequestBase.check_action_permitted`` and
``IAMPolicyStatement.is_action_permitted``), so what these tests prove:

* the action of each request (``ec2:AuthorizeSecurityGroupIngress``), matched
  case-sensitively against ``Action`` (``*`` as a wildcard), and an explicit
  ``Deny`` of it;

and what they cannot:

* resources: EC2, WAFv2 and Service Quotas requests are checked against the
  resource ``"*"`` (only SQS, IAM and ``sts:AssumeRole`` pass a real ARN), so a
  statement scoped to an ARN never matches; the tests run each policy with every
  ``Resource`` widened to ``"*"`` (:func:`as_moto_checks`);
* conditions: an identity policy's ``Condition`` is evaluated with no request
  values, so every condition counts as met;
* actions a call implies: tags given at creation (``ec2:CreateTags`` for
  ``AuthorizeSecurityGroupIngress`` and ``CreateManagedPrefixList``,
  ``wafv2:TagResource`` for ``CreateIPSet``) are not checked.

:func:`test_moto_checks_actions_not_resources_or_conditions` pins those facts: if
a moto release starts checking resources or conditions it fails, and the
widening (and docs/aws.md's note next to the policies) must be revisited.
"""

from __future__ import annotations

import copy
import json
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from netaddr import IPNetwork
from pytest_httpserver import HTTPServer
from support import need
from support.aws.harness import LAUNCHER, REGION, MotoServer, World, aws_env
from support.aws.nacl import NaclWorld
from support.aws.waf import WafWorld
from support.cfdata import CURRENT, OLD
from support.cli_helpers import Result, fixture_text, run_proc, write_config

DOCS = Path(__file__).resolve().parents[2] / "docs" / "aws.md"
ACCOUNT = "123456789012"  # moto's account
PORTS = (80, 443)
#: Each shipped policy: the docs' text its JSON block follows.
HEADINGS = {
    "aws-in-short": "**IAM policy (least privilege).**",
    "aws": "## IAM policy (least privilege)",
    "aws-nacl": "**IAM policy** (replace region, account and ACL ids",
    "aws-wafv2": "**IAM policy:**",
}
#: Actions the policy needs for tags given at creation: moto does not check them.
IMPLIED = {
    "aws-in-short": {"ec2:CreateTags"},
    "aws": {"ec2:CreateTags"},
    "aws-nacl": set(),
    "aws-wafv2": {"wafv2:TagResource"},
}
#: The operator's runs: the timer's first run, a no-change run, the 2021 change,
#: a status, the removal. ``(fixture served, argv, the list the cloud then holds)``.
STEPS: list[tuple[str, tuple[str, ...], frozenset[IPNetwork]]] = [
    ("api-ips-2021-03.json", ("sync", "--scheduled"), frozenset(OLD)),
    ("api-ips-2021-03.json", ("sync",), frozenset(OLD)),
    ("api-ips.json", ("sync",), frozenset(CURRENT)),
    ("api-ips.json", ("status",), frozenset(CURRENT)),
    ("api-ips.json", ("remove", "--backend", "{backend}"), frozenset()),
]
REFUSED = ("AccessDenied", "UnauthorizedOperation", "not authorized")

#: A refusal of these is a note and the run goes on (documented in docs/aws.md).
NOTED = {"ec2:DescribeNetworkInterfaces"}
#: The prefix-list actions: only with prefix_lists = true.
PREFIX_LISTS = {
    "ec2:DescribeManagedPrefixLists",
    "ec2:GetManagedPrefixListEntries",
    "ec2:CreateManagedPrefixList",
    "ec2:ModifyManagedPrefixList",
    "ec2:DeleteManagedPrefixList",
}


def doc_policy(name: str, subs: dict[str, str]) -> dict[str, Any]:
    """The JSON block under the policy's heading in docs/aws.md, placeholders replaced."""
    text = DOCS.read_text()
    marker = HEADINGS[name]
    assert text.count(marker) == 1, f"docs/aws.md: {marker!r} not found once"
    after = text[text.index(marker) :]
    head, _, rest = after.partition("```json\n")
    assert "\n## " not in head[len(marker) :], f"no JSON block under {marker!r}"
    block = rest.partition("```")[0]
    for placeholder, value in subs.items():
        assert placeholder in block, f"{name}: {placeholder} is not in the policy"
        block = block.replace(placeholder, value)
    policy: dict[str, Any] = json.loads(block)
    return policy


def statements(policy: dict[str, Any]) -> list[dict[str, Any]]:
    found = policy["Statement"]
    return list(found) if isinstance(found, list) else [found]


def listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def actions(policy: dict[str, Any]) -> list[str]:
    """Every action the policy allows, once each, in order."""
    return list(dict.fromkeys(a for s in statements(policy) for a in listed(s["Action"])))


def as_moto_checks(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy with every ``Resource`` widened to ``"*"`` (moto checks EC2, WAFv2 and
    Service Quotas requests against ``"*"``: an ARN-scoped statement never matches)."""
    wide = copy.deepcopy(policy)
    for s in statements(wide):
        s["Resource"] = "*"
    return wide


def without(policy: dict[str, Any], action: str) -> dict[str, Any]:
    """The policy less one action (a statement left with none is dropped)."""
    less = copy.deepcopy(policy)
    kept = []
    for s in statements(less):
        s["Action"] = [a for a in listed(s["Action"]) if a != action]
        if s["Action"]:
            kept.append(s)
    less["Statement"] = kept
    return less


class Iam:
    """IAM users on a moto server that checks every request once :meth:`enforce` is on."""

    def __init__(self, server: MotoServer) -> None:
        import boto3

        self.server = server
        self.iam = boto3.client("iam", region_name=REGION, endpoint_url=server.url)

    def enforce(self, on: bool) -> None:
        """From the next request on, every request is (not) checked."""
        req = urllib.request.Request(
            self.server.url + "/moto-api/reset-auth",
            data=b"0" if on else b"inf",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    @contextmanager
    def unchecked(self) -> Iterator[None]:
        """Setup and reads of the cloud (the test's own, not cfallow's)."""
        self.enforce(False)
        try:
            yield
        finally:
            self.enforce(True)

    def user(self, name: str, policy: dict[str, Any]) -> dict[str, str]:
        """A user with ``policy`` (inline) and its access key, as environment variables."""
        self.iam.create_user(UserName=name)
        self.grant(name, policy)
        key = self.iam.create_access_key(UserName=name)["AccessKey"]
        return {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        }

    def grant(self, name: str, policy: dict[str, Any]) -> None:
        """Replace the user's policy."""
        self.iam.put_user_policy(
            UserName=name, PolicyName="cfallow", PolicyDocument=json.dumps(policy)
        )


@pytest.fixture(scope="module")
def iam_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MotoServer]:
    """A moto server of this module's own (its checks switched on and off by the tests)."""
    ok = LAUNCHER.exists()
    try:
        import moto.server  # noqa: F401
    except ImportError:
        ok = False
    need(ok, "moto[server] (moto_server)")
    server = MotoServer(tmp_path_factory.mktemp("moto-iam"))
    yield server
    server.stop()


@pytest.fixture
def iam(iam_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Iam]:
    aws_env(monkeypatch)
    checks = Iam(iam_server)
    checks.enforce(False)
    iam_server.reset()
    yield checks
    checks.enforce(False)


# -- what the cloud holds, read with checks off ----------------------------------------------


def sg_admitted(world: World) -> set[tuple[int, IPNetwork]]:
    """``(port, network)`` admitted by cfallow's rules of the group (a referenced prefix
    list contributes its entries)."""
    out: set[tuple[int, IPNetwork]] = set()
    for key in world.owned(world.groups[0]):
        _, port, _, target = key
        if target.startswith("pl-"):
            raw = world.ec2.get_managed_prefix_list_entries(PrefixListId=target)["Entries"]
            out |= {(port, IPNetwork(e["Cidr"])) for e in raw}
        else:
            out.add((port, IPNetwork(target)))
    return out


def cfallow_lists(world: World) -> list[str]:
    raw = world.ec2.describe_managed_prefix_lists(
        Filters=[{"Name": "tag:managed-by", "Values": ["cfallow"]}]
    )["PrefixLists"]
    return [
        pl["PrefixListId"]
        for pl in raw
        if pl["State"] not in ("delete-in-progress", "delete-complete")
    ]


class Scenario:
    """One backend's section, its resources, and what the cloud holds."""

    backend = ""
    policy = ""
    foreign: object = None

    def __init__(self, server: MotoServer) -> None:
        self.server = server

    def subs(self) -> dict[str, str]:
        return {"111122223333": ACCOUNT, "eu-west-1": REGION}

    def section(self) -> dict[str, Any]:
        raise NotImplementedError

    def holds(self) -> tuple[Any, ...]:
        """What cfallow's resources admit now (compared with :meth:`expect`)."""
        raise NotImplementedError

    def expect(self, nets: frozenset[IPNetwork]) -> tuple[Any, ...]:
        raise NotImplementedError

    def snapshot_foreign(self) -> None:
        """Remember what is not cfallow's (:meth:`holds` reports it again)."""
        raise NotImplementedError


class Groups(Scenario):
    backend = "aws"

    def __init__(self, server: MotoServer, policy: str, prefix_lists: bool) -> None:
        super().__init__(server)
        self.policy = policy
        self.prefix_lists = prefix_lists
        self.world = World(server, groups=1)
        self.world.authorize(self.world.groups[0], 443, "203.0.113.0/24", "office")
        self.world.authorize(self.world.groups[0], 22, "198.51.100.7/32", "ssh from bastion")

    def subs(self) -> dict[str, str]:
        return {**super().subs(), "sg-0123456789abcdef0": self.world.groups[0]}

    def section(self) -> dict[str, Any]:
        extra = {"prefix_lists": True, "prefix_list_max_entries": 20} if self.prefix_lists else {}
        return {"region": REGION, "security_group_ids": self.world.groups, **extra}

    def holds(self) -> tuple[Any, ...]:
        return (sg_admitted(self.world), len(cfallow_lists(self.world)), self.world.unowned())

    def expect(self, nets: frozenset[IPNetwork]) -> tuple[Any, ...]:
        lists = 2 if self.prefix_lists and nets else 0
        return ({(p, n) for p in PORTS for n in nets}, lists, self.foreign)

    def snapshot_foreign(self) -> None:
        self.foreign = self.world.unowned()


class Nacls(Scenario):
    backend = "aws-nacl"
    policy = "aws-nacl"

    def __init__(self, server: MotoServer, quota: int = 40) -> None:
        super().__init__(server)
        self.quota = quota
        self.world = NaclWorld(server)
        self.world.add_foreign()

    def subs(self) -> dict[str, str]:
        return {**super().subs(), "acl-0123456789abcdef0": self.world.acls[0]}

    def section(self) -> dict[str, Any]:
        return {
            "region": REGION,
            "network_acl_ids": self.world.acls,
            "ports": [443],
            "rules_per_acl": self.quota,
        }

    def holds(self) -> tuple[Any, ...]:
        acl = self.world.acls[0]
        return (self.world.allowed(acl), self.world.snapshot(acl))

    def expect(self, nets: frozenset[IPNetwork]) -> tuple[Any, ...]:
        return (nets, self.foreign)

    def snapshot_foreign(self) -> None:
        self.foreign = self.world.snapshot(self.world.acls[0])


class Sets(Scenario):
    backend = "aws-wafv2"
    policy = "aws-wafv2"

    def __init__(self, server: MotoServer) -> None:
        super().__init__(server)
        self.world = WafWorld(server)
        # the admin's web ACL (so cfallow reads one): it references the admin's own set
        # (moto's reset keeps web ACLs: a name of this test's own)
        self.world.web_acl(f"site-{uuid.uuid4().hex[:8]}", self.world.admin_set("office"))

    def section(self) -> dict[str, Any]:
        return {"region": REGION}

    def holds(self) -> tuple[Any, ...]:
        return (self.world.owned(), self.world.foreign())

    def expect(self, nets: frozenset[IPNetwork]) -> tuple[Any, ...]:
        return (nets, self.foreign)

    def snapshot_foreign(self) -> None:
        self.foreign = self.world.foreign()


def scenario(name: str, server: MotoServer) -> Scenario:
    if name.startswith("aws-in-short") or name.startswith("aws/"):
        policy, _, mode = name.partition("/")
        return Groups(server, policy, mode == "prefix-lists")
    if name.startswith("aws-nacl"):  # aws-nacl/quota: rules_per_acl = 0 (AWS is asked)
        return Nacls(server, 0 if name.endswith("/quota") else 40)
    return Sets(server)


class Operator:
    """The operator's config and the cfallow CLI, run with one IAM user's key."""

    def __init__(
        self, tmp: Path, http: HTTPServer, iam: Iam, scene: Scenario, env: dict[str, str]
    ) -> None:
        self.tmp, self.http, self.iam, self.scene, self.env = tmp, http, iam, scene, env
        section = {**scene.section(), "endpoint_url": iam.server.url}
        lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in section.items())
        base = http.url_for("").rstrip("/")
        write_config(tmp / "config.toml", base, backends=f"[backends.{scene.backend}]\n{lines}")

    def run(self, fixture: str, argv: tuple[str, ...]) -> Result:
        self.http.clear()
        self.http.expect_request("/client/v4/ips").respond_with_data(
            fixture_text(fixture), content_type="application/json"
        )
        args = [a.format(backend=self.scene.backend) for a in argv]
        config, state = str(self.tmp / "config.toml"), str(self.tmp / "state")
        return run_proc("--config", config, "--state-dir", state, *args, env=self.env)

    def holds(self) -> tuple[Any, ...]:
        with self.iam.unchecked():
            return self.scene.holds()

    def called(self) -> set[str]:
        """The actions of cfallow's requests since the last call (recording reset)."""
        with self.iam.unchecked():
            names = {c.action for c in self.iam.server.calls() if c.by_cfallow}
            self.iam.server.reset_recording()
        return names


def setup(iam: Iam, name: str, policy: dict[str, Any] | None = None) -> tuple[Scenario, Any]:
    """The scenario's resources and its user (checks off), then checks on."""
    with iam.unchecked():
        scene = scenario(name, iam.server)
        scene.snapshot_foreign()
        shipped = doc_policy(scene.policy, scene.subs())
        env = iam.user("cfallow", as_moto_checks(policy if policy is not None else shipped))
        iam.server.reset_recording()
    return scene, (shipped, env)


SCENARIOS = ["aws/rules", "aws/prefix-lists", "aws-in-short/rules", "aws-nacl", "aws-wafv2"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_shipped_policy_runs_every_command(
    name: str, iam: Iam, tmp_path: Path, httpserver: HTTPServer
) -> None:
    """With exactly the docs' policy: every run succeeds, says nothing refused, and the
    cloud holds the list; the policy names every action cfallow calls and no other
    (but those moto cannot check)."""
    scene, (shipped, env) = setup(iam, name)
    op = Operator(tmp_path, httpserver, iam, scene, env)
    called: set[str] = set()
    for i, (fixture, argv, nets) in enumerate(STEPS):
        r = op.run(fixture, argv)
        assert r.rc == 0, (argv, r.err)
        assert not any(word in r.out + r.err for word in REFUSED), (argv, r.out, r.err)
        step = op.called()
        if i == 1:  # the no-change run writes nothing
            assert all(a.startswith(("Describe", "Get", "List")) for a in step), step
        called |= step
        held, wanted = op.holds(), scene.expect(nets)
        for part, (got, want) in enumerate(zip(held, wanted)):
            assert got == want, (argv, part, got ^ want if isinstance(got, set) else got)
    names = {a.partition(":")[2]: a for a in actions(shipped)}
    assert called <= set(names), f"called but not in the policy: {called - set(names)}"
    unused = set(names.values()) - {names[a] for a in called}
    if name.endswith("/rules"):  # the prefix-list statements are for prefix_lists = true
        unused -= PREFIX_LISTS
    if name == "aws-nacl":  # GetServiceQuota only with rules_per_acl = 0
        unused -= {"servicequotas:GetServiceQuota"}
    assert unused == IMPLIED[scene.policy]


def test_the_two_security_group_policies_are_one() -> None:
    """docs/aws.md shows the aws policy twice (in short, and under its own heading)."""
    subs = {"111122223333": ACCOUNT}
    assert doc_policy("aws-in-short", subs) == doc_policy("aws", subs)


def _removals() -> list[tuple[str, str]]:
    out = []
    for name in ("aws/rules", "aws/prefix-lists", "aws-nacl", "aws-wafv2"):
        policy = name.partition("/")[0]
        skip = IMPLIED[policy] | (PREFIX_LISTS if name == "aws/rules" else set())
        if name == "aws-nacl":
            skip = skip | {"servicequotas:GetServiceQuota"}  # its own test
        out += [(name, a) for a in actions(doc_policy(policy, {})) if a not in skip]
    return out


@pytest.mark.parametrize(("name", "action"), _removals())
def test_each_action_removed_is_named_and_a_full_policy_repairs(
    name: str, action: str, iam: Iam, tmp_path: Path, httpserver: HTTPServer
) -> None:
    """The docs' policy less one action: the runs before cfallow first needs it succeed;
    that run fails with one line naming the action (or, for a check that is only a note,
    says so), leaves what is not cfallow's alone; the same run with the full policy then
    succeeds and the cloud holds the list."""
    with iam.unchecked():
        shipped = doc_policy(scenario(name, iam.server).policy, {"111122223333": ACCOUNT})
    scene, (_, env) = setup(iam, name, without(shipped, action))
    op = Operator(tmp_path, httpserver, iam, scene, env)
    for fixture, argv, nets in STEPS:
        r = op.run(fixture, argv)
        said = r.out + r.err
        if f"{action} not allowed" not in said:
            assert r.rc == 0 and not any(w in said for w in REFUSED), (argv, said)
            assert op.holds() == scene.expect(nets), (argv, said)
            continue
        if action in NOTED:
            assert r.rc == 0, (argv, said)
        else:
            assert r.rc != 0, (argv, said)
            errors = [line for line in r.err.splitlines() if line.startswith("cfallow: error:")]
            assert len(errors) == 1 and action in " ".join(r.err.split()), r.err
        held = op.holds()
        assert held[-1] == scene.foreign, (argv, "what is not cfallow's was touched")
        with iam.unchecked():
            iam.grant("cfallow", as_moto_checks(shipped))
        again = op.run(fixture, argv)
        assert again.rc == 0, (argv, again.out + again.err)
        assert not any(w in again.out + again.err for w in REFUSED), again.out + again.err
        assert op.holds() == scene.expect(nets), (argv, said, again.out + again.err)
        return
    pytest.fail(f"no run needed {action}: the policy allows more than cfallow calls")


def _refused(call: Any) -> bool:
    from botocore.exceptions import ClientError

    try:
        call()
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "AccessDenied", exc.response
        return True
    return False


def test_moto_checks_actions_not_resources_or_conditions(iam: Iam) -> None:
    """What the tests above can prove, pinned: if moto starts checking resources or
    conditions, this fails, and :func:`as_moto_checks` and docs/aws.md's note next to the
    policies must follow."""
    import boto3

    with iam.unchecked():
        world = World(iam.server, groups=1)
        group = world.groups[0]
        arn = f"arn:aws:ec2:{REGION}:{ACCOUNT}:security-group/{group}"
        authorize = "ec2:AuthorizeSecurityGroupIngress"
        policies = {
            "scoped": [{"Effect": "Allow", "Action": authorize, "Resource": arn}],
            "condition never met": [
                {
                    "Effect": "Allow",
                    "Action": authorize,
                    "Resource": "*",
                    "Condition": {"StringEquals": {"aws:ResourceTag/managed-by": "nobody"}},
                }
            ],
            "no ec2:CreateTags": [{"Effect": "Allow", "Action": authorize, "Resource": "*"}],
            "denied": [
                {"Effect": "Allow", "Action": "ec2:*", "Resource": "*"},
                {"Effect": "Deny", "Action": authorize, "Resource": "*"},
            ],
            "lower case": [{"Effect": "Allow", "Action": authorize.lower(), "Resource": "*"}],
            "shipped": statements(
                doc_policy("aws", {"111122223333": ACCOUNT, "sg-0123456789abcdef0": group})
            ),
        }
        clients = {}
        for i, (name, stmts) in enumerate(policies.items()):
            env = iam.user(f"u{i}", {"Version": "2012-10-17", "Statement": stmts})
            clients[name] = boto3.client(
                "ec2",
                region_name=REGION,
                endpoint_url=iam.server.url,
                aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            )
    tags = [
        {"ResourceType": "security-group-rule", "Tags": [{"Key": "managed-by", "Value": "cfallow"}]}
    ]
    outcome = {}
    for i, (name, client) in enumerate(clients.items()):
        rule = {
            "IpProtocol": "tcp",
            "FromPort": 443,
            "ToPort": 443,
            "IpRanges": [{"CidrIp": f"10.{i}.0.0/16"}],
        }
        outcome[name] = _refused(
            lambda c=client, r=rule: c.authorize_security_group_ingress(
                GroupId=group, IpPermissions=[r], TagSpecifications=tags
            )
        )
    assert outcome == {
        # the resource is "*", not the group's ARN: an ARN-scoped Allow never matches
        "scoped": True,
        # a condition is evaluated without the request's values: always met
        "condition never met": False,
        # tags at creation need ec2:CreateTags in AWS, not in moto
        "no ec2:CreateTags": False,
        # an explicit Deny wins
        "denied": True,
        # actions match case-sensitively (AWS: case-insensitively)
        "lower case": True,
        # so the docs' policy as written is refused its first write
        "shipped": True,
    }


def test_the_nacl_quota_is_read_with_get_service_quota(
    iam: Iam, tmp_path: Path, httpserver: HTTPServer
) -> None:
    """``rules_per_acl = 0``: the docs' policy reads the quota (moto's is AWS's default,
    20: the list needs 24, so the plan is refused either way); without
    ``servicequotas:GetServiceQuota`` the run says so and counts 20."""
    scene, (shipped, env) = setup(iam, "aws-nacl/quota")
    op = Operator(tmp_path, httpserver, iam, scene, env)
    read = op.run("api-ips.json", ("status", "--json"))
    assert "quota 20" in read.err and "not readable" not in read.out + read.err, read
    assert op.called() == {"DescribeNetworkAcls", "GetServiceQuota"}
    with iam.unchecked():
        iam.grant("cfallow", as_moto_checks(without(shipped, "servicequotas:GetServiceQuota")))
    refused = op.run("api-ips.json", ("status", "--json"))
    said = " ".join((refused.out + refused.err).split())
    assert "ACL quota not readable (AccessDeniedException: servicequotas:GetServiceQuota" in said
    assert refused.rc == read.rc and "quota 20" in refused.err, refused


ROLE = "arn:aws:iam::222233334444:role/cfallow"
#: ``(the role the caller may assume, the role's policy less this action, whom the role
#: trusts, the action refused or "")``
ROLE_CASES = {
    "as documented": (ROLE, "", "cfallow", ""),
    "caller may assume another role": (ROLE + "-other", "", "cfallow", "sts:AssumeRole"),
    "role lacks an action": (
        ROLE,
        "ec2:CreateNetworkAclEntry",
        "cfallow",
        "ec2:CreateNetworkAclEntry",
    ),
    # moto checks a role's trust policy only for a role of the caller's own account
    "role trusts someone else (not checked)": (ROLE, "", "someone", ""),
}


@pytest.mark.parametrize("case", ROLE_CASES)
def test_another_account_through_a_role(
    case: str, iam: Iam, tmp_path: Path, httpserver: HTTPServer
) -> None:
    """docs/aws.md: "that account's role carries this policy and trusts the calling
    identity; the caller needs sts:AssumeRole on the role's ARN". moto checks
    ``sts:AssumeRole`` against the role's real ARN, so the caller's policy is used as
    written; the role carries the docs' aws-nacl policy (resources widened)."""
    import boto3

    may, lacks, trusted, refused = ROLE_CASES[case]
    with iam.unchecked():
        creds = boto3.client("sts", region_name=REGION, endpoint_url=iam.server.url).assume_role(
            RoleArn=ROLE, RoleSessionName="setup"
        )["Credentials"]
        other = boto3.client(
            "iam",
            region_name=REGION,
            endpoint_url=iam.server.url,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )
        world = NaclWorld(iam.server, role_arn=ROLE)
        world.add_foreign()
        foreign = world.snapshot(world.acls[0])
        policy = doc_policy(
            "aws-nacl", {"111122223333": "222233334444", "acl-0123456789abcdef0": world.acls[0]}
        )
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/{trusted}"},
                    "Action": "sts:AssumeRole",
                }
            ],
        }
        other.create_role(RoleName="cfallow", AssumeRolePolicyDocument=json.dumps(trust))
        other.put_role_policy(
            RoleName="cfallow",
            PolicyName="cfallow",
            PolicyDocument=json.dumps(as_moto_checks(without(policy, lacks))),
        )
        caller = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": may}],
        }
        env = iam.user("cfallow", caller)
    section = {"ports": [443], "rules_per_acl": 40, "endpoint_url": iam.server.url}
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in section.items())
    target = ", ".join(f"{k} = {json.dumps(v)}" for k, v in world.target().items())
    lines += f"targets = [{{ {target} }}]\n"
    base = httpserver.url_for("").rstrip("/")
    write_config(tmp_path / "config.toml", base, backends="[backends.aws-nacl]\n" + lines)
    httpserver.expect_request("/client/v4/ips").respond_with_data(
        fixture_text("api-ips.json"), content_type="application/json"
    )
    config, state = str(tmp_path / "config.toml"), str(tmp_path / "state")
    r = run_proc("--config", config, "--state-dir", state, "sync", env=env)
    with iam.unchecked():
        held = world.allowed(world.acls[0])
        assert world.snapshot(world.acls[0]) == foreign
    if not refused:
        assert r.rc == 0, r.err
        assert held == frozenset(CURRENT)
        return
    assert r.rc == 1, r.err
    said = " ".join(r.err.split())
    assert "eu-west-1/222233334444" in said and f"{refused} not allowed" in said, r.err
    assert held == frozenset()  # refused before its first entry
